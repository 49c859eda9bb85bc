"""Control connections: the client-facing protocol, the session, logins, the backend client."""

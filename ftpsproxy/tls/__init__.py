"""TLS: the server context, the backend client TLS with session reuse, bulk TLS for data."""

"""Data connections: passive ports, the listeners, the relay of one transfer, splice."""

"""Running it: twistd wiring, the service, the workers' supervisor and entry, signals, demo."""

"""Settings: the configuration values every layer reads, and their errors."""

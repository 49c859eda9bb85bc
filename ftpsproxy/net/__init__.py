"""Connection plumbing shared by control and data connections: socket tuning, bounded closes."""

"""Reporting: metrics, their exposition and HTTP endpoints, logs, the transfer log."""

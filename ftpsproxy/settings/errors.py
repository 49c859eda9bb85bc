"""Errors that stop the proxy from starting, each naming what is wrong."""


class ConfigError(Exception):
    """A setting, a file named by a setting, or a combination of settings is unusable."""

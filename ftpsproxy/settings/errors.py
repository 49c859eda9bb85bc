"""Errors that stop the proxy from starting, each naming what is wrong."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(Exception):
    """A setting, a file named by a setting, or a combination of settings is unusable."""


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``" (did you mean 'idle-timeout'?)"`` for the known name closest to a misspelt one.

    Empty when nothing is close: a wild guess would mislead more than it helps.
    """
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""

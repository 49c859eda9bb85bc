"""The user name a backend gets: a small template over the name the client sent.

``{user}`` is the whole name, ``{local}`` the part before the last ``@`` (the whole
name when there is none) and ``{domain}`` the part after it (empty when none);
``{{`` and ``}}`` are literal braces; anything else is literal text.  Not
``str.format``: its ``{user.attr}`` and ``{user[0]}`` would let a config file reach
into Python objects, and a typo should be an error that names the template.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftpsproxy.pool.user_route import split_user

PLACEHOLDERS = ("user", "local", "domain")


class RewriteError(ValueError):
    """A template that cannot be read; the message says where."""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """A parsed template: literal text and placeholders, in order."""

    template: str
    parts: tuple[tuple[str, bool], ...]  # (text, is a placeholder name)

    def apply(self, user: str) -> str:
        local, domain = split_user(user)
        values = {"user": user, "local": local, "domain": domain}
        return "".join(values[text] if placeholder else text for text, placeholder in self.parts)


def parse_rewrite(template: str) -> Rewrite:
    """Read *template*; :class:`RewriteError` for unknown names, stray braces, control
    characters (a CR or LF would start a second command at the backend)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in template):
        raise RewriteError(f"{template!r}: control characters are not allowed")
    parts: list[tuple[str, bool]] = []
    literal: list[str] = []
    index = 0
    while index < len(template):
        ch = template[index]
        pair = template[index : index + 2]
        if pair in ("{{", "}}"):
            literal.append(ch)
            index += 2
        elif ch == "{":
            end = template.find("}", index)
            name = template[index + 1 : end] if end != -1 else ""
            if end == -1 or name not in PLACEHOLDERS:
                known = ", ".join("{" + each + "}" for each in PLACEHOLDERS)
                raise RewriteError(
                    f"{template!r}: unknown placeholder at {index} (use {known}, or {{{{ }}}} "
                    "for a literal brace)"
                )
            if literal:
                parts.append(("".join(literal), False))
                literal = []
            parts.append((name, True))
            index = end + 1
        elif ch == "}":
            raise RewriteError(f"{template!r}: unmatched '}}' at {index} (a literal one is '}}}}')")
        else:
            literal.append(ch)
            index += 1
    if literal:
        parts.append(("".join(literal), False))
    if not parts:
        raise RewriteError("the user name template is empty")
    return Rewrite(template, tuple(parts))

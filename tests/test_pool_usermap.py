"""The user map, name templates, user@backend, the lookup's answers and cache: pure, no I/O."""

from __future__ import annotations

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftpsproxy.pool.lookup_cache import LookupCache
from ftpsproxy.pool.lookup_reply import (
    Found,
    LookupReplyError,
    NotFound,
    lookup_url,
    parse_answer,
)
from ftpsproxy.pool.rewrite import RewriteError, parse_rewrite
from ftpsproxy.pool.user_route import UserRoute, selected_by_user, split_user
from ftpsproxy.pool.usermap import UserMapError, parse_user_map

KNOWN = ("acme", "beta", "gamma")
REPO = Path(__file__).resolve().parent.parent

MAP = """
[users]
bob = "beta"
carol = ["beta", "gamma"]
"alice@acme" = { backend = "gamma", user = "special" }

[[patterns]]
match = "*@acme"
backend = "acme"
user = "{local}"

[[patterns]]
match = "team-?"
backends = ["beta", "gamma"]

[[patterns]]
match = "*"
backend = "gamma"
"""

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=20)


# -- the map ---------------------------------------------------------------------------


def test_exact_names_route_to_their_backends() -> None:
    usermap = parse_user_map(MAP, KNOWN)
    assert usermap.route("bob") == UserRoute(("beta",), "bob", "user map entry 'bob'")
    assert usermap.route("carol") == UserRoute(("beta", "gamma"), "carol", "user map entry 'carol'")


def test_an_exact_name_wins_over_a_pattern_that_comes_first() -> None:
    route = parse_user_map(MAP, KNOWN).route("alice@acme")
    assert route == UserRoute(("gamma",), "special", "user map entry 'alice@acme'")


def test_patterns_rewrite_and_the_first_match_wins() -> None:
    usermap = parse_user_map(MAP, KNOWN)
    assert usermap.route("dave@acme") == UserRoute(("acme",), "dave", "user map pattern '*@acme'")
    assert usermap.route("team-1") == UserRoute(
        ("beta", "gamma"), "team-1", "user map pattern 'team-?'"
    )
    assert usermap.route("team-12") == UserRoute(("gamma",), "team-12", "user map pattern '*'")


def test_a_name_nothing_matches_has_no_route() -> None:
    usermap = parse_user_map(
        '[users]\nbob = "beta"\n[[patterns]]\nmatch = "*@acme"\nbackend = "acme"', KNOWN
    )
    assert usermap.route("mallory") is None
    assert usermap.route("BOB") is None  # case-sensitive, as FTP servers compare names
    assert usermap.route("x@ACME") is None
    assert len(usermap) == 2 and usermap.backends == {"beta", "acme"}


def test_an_empty_file_maps_nobody() -> None:
    assert parse_user_map("", KNOWN).route("anyone") is None


@given(pattern=st.text("ab*?[]!-@", max_size=8), user=st.text("ab@-", max_size=8))
def test_patterns_match_as_fnmatchcase_does(pattern: str, user: str) -> None:
    text = f"[[patterns]]\nmatch = {pattern!r}\nbackend = 'acme'\n"
    if not pattern:
        return
    route = parse_user_map(text, KNOWN).route(user)
    assert (route is not None) == fnmatch.fnmatchcase(user, pattern)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[users]\nbob = "nope"',
            r"users\.bob\.backend: unknown backend 'nope' \(the pool has acme",
        ),
        (
            '[[patterns]]\nmatch = "*"\nbackends = ["acme", "zeta"]',
            r"patterns\[0\]\.backends: unknown backend 'zeta'",
        ),
        ('[[patterns]]\nbackend = "acme"', r"patterns\[0\]\.match: required"),
        ('[[patterns]]\nmatch = "*"', "give either backend or backends"),
        ('[users]\nbob = { backend = "acme", backends = ["beta"] }', "either backend or backends"),
        ('[users]\nbob = { backend = "acme", usr = "x" }', r"users\.bob\.usr: unknown key"),
        ("[users]\nbob = []", "non-empty list"),
        ('[users]\nbob = ["acme", "acme"]', "named twice"),
        ("[users]\nbob = 3", "expected a backend name"),
        (
            '[users]\nbob = { backend = "acme", user = "{name}" }',
            r"users\.bob\.user: .*unknown placeholder",
        ),
        ('[user]\nbob = "acme"', "unknown key 'user'"),
        ("users = 1", "users: expected a table"),
        ('[users\nbob = "acme"', "user map: "),
    ],
)
def test_a_broken_map_is_an_error_naming_the_key(text: str, error: str) -> None:
    with pytest.raises(UserMapError, match=error):
        parse_user_map(text, KNOWN)


def test_the_example_map_in_deploy_loads_with_its_pool() -> None:
    usermap = parse_user_map((REPO / "deploy" / "usermap.toml").read_text(), ("ftp1", "ftp2"))
    route = usermap.route("alice@acme")
    assert route is not None and (route.among, route.user) == (("ftp2",), "alice")


# -- name templates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "user", "sent"),
    [
        ("{local}", "alice@acme", "alice"),
        ("{local}", "a@b@acme", "a@b"),
        ("{local}", "alice", "alice"),
        ("{domain}-{local}", "alice@acme", "acme-alice"),
        ("{domain}", "alice", ""),
        ("fixed", "anyone", "fixed"),
        ("{{{user}}}", "x", "{x}"),
        ("u_{user}", "bob", "u_bob"),
    ],
)
def test_templates_rewrite_names(template: str, user: str, sent: str) -> None:
    assert parse_rewrite(template).apply(user) == sent


@pytest.mark.parametrize(
    "template", ["{name}", "{local", "local}", "{user.__class__}", "", "a\r\nPASS x", "{0}"]
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(RewriteError):
        parse_rewrite(template)


@given(names)
def test_user_is_identity_and_local_domain_put_back_together(user: str) -> None:
    assert parse_rewrite("{user}").apply(user) == user
    local, domain = split_user(user)
    if "@" in user:
        assert parse_rewrite("{local}@{domain}").apply(user) == user
        assert "@" not in domain
    else:
        assert (local, domain) == (user, "")


# -- user@backend ------------------------------------------------------------------------


def test_a_client_may_choose_an_allowed_backend_and_the_suffix_goes() -> None:
    route = selected_by_user("alice@beta", ("beta", "gamma"))
    assert route is not None and (route.among, route.user) == (("beta",), "alice")
    assert selected_by_user("alice@acme", ("beta",)) is None  # not allowed
    assert selected_by_user("alice", ("beta",)) is None
    assert selected_by_user("@beta", ("beta",)) is None  # no name left
    assert selected_by_user("alice@beta", ()) is None  # off


# -- the lookup's answers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "url"),
    [
        ("http://h/route/{user}", "http://h/route/al%20ice%40acme%2F%3F%26"),
        ("http://h/route", "http://h/route?user=al%20ice%40acme%2F%3F%26"),
        ("http://h/route?site=1", "http://h/route?site=1&user=al%20ice%40acme%2F%3F%26"),
    ],
)
def test_the_user_name_goes_into_the_url_encoded(template: str, url: str) -> None:
    assert lookup_url(template, "al ice@acme/?&") == url


@given(names)
def test_no_name_escapes_its_url_parameter(user: str) -> None:
    url = lookup_url("http://h/r?user=", user)  # the appended form
    assert not set(url.split("?", 1)[1]) & set(" /?#\r\n")


def test_answers_name_backends_and_optionally_a_user() -> None:
    assert parse_answer(200, b'{"backend": "acme"}', KNOWN) == Found(("acme",))
    assert parse_answer(200, b'{"backends": ["beta", "gamma"], "user": "al"}', KNOWN) == Found(
        ("beta", "gamma"), "al"
    )
    assert parse_answer(404, b"whatever", KNOWN) == NotFound()
    found = parse_answer(200, b'{"backend": "acme", "user": "al"}', KNOWN)
    assert isinstance(found, Found)
    assert found.route("al@acme") == UserRoute(("acme",), "al", "user lookup: acme, user 'al'")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (500, b"", "HTTP status 500"),
        (200, b"not json", "not JSON"),
        (200, b"[]", "not a JSON object"),
        (200, b"{}", "backend"),
        (200, b'{"backend": "zeta"}', "unknown backend 'zeta'"),
        (200, b'{"backends": []}', "non-empty"),
        (200, b'{"backend": 1}', "non-empty list of names"),
        (200, b'{"backend": "acme", "user": "a\\r\\nDELE x"}', "control characters"),
        (200, b'{"backend": "acme", "user": ""}', "non-empty"),
        (200, b'{"backend": "acme"}' + b" " * 70000, "body over"),
    ],
)
def test_what_is_not_an_answer_is_an_error(status: int, body: bytes, error: str) -> None:
    with pytest.raises(LookupReplyError, match=error):
        parse_answer(status, body, KNOWN)


# -- the cache ---------------------------------------------------------------------------


def test_answers_and_404s_expire_after_their_own_ttl() -> None:
    cache = LookupCache()
    cache.put("a", Found(("acme",)), 100.0, ttl=60, negative_ttl=10)
    cache.put("n", NotFound(), 100.0, ttl=60, negative_ttl=10)
    assert cache.get("a", 109.0) == Found(("acme",)) and cache.get("n", 109.0) == NotFound()
    assert cache.get("n", 110.0) is None
    assert cache.get("a", 159.9) == Found(("acme",))
    assert cache.get("a", 160.0) is None
    assert len(cache) == 0


@given(st.lists(st.text("abcdef", min_size=1, max_size=3), max_size=60))
def test_the_cache_is_bounded_and_keeps_the_recently_used(users: list[str]) -> None:
    cache = LookupCache(max_entries=5)
    for user in users:
        cache.put(user, NotFound(), 0.0, ttl=60, negative_ttl=60)
        assert len(cache) <= 5
        assert cache.get(user, 1.0) == NotFound()
    assert len(cache) == min(5, len(set(users)))


def test_the_user_routing_modules_import_no_reactor() -> None:
    code = (
        "import sys, ftpsproxy.pool.usermap, ftpsproxy.pool.lookup_reply, "
        "ftpsproxy.pool.lookup_cache; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted' "
        "or m.startswith(('ftpsproxy.control', 'ftpsproxy.observe', 'ftpsproxy.ops'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"

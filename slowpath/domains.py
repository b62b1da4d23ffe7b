"""Domain rules: name patterns, their index, and the host of an HTTP request.

Names are compared case-insensitively with one trailing dot ignored.
``evil.example`` matches that name only; ``*.malware.test`` matches every
name *under* malware.test (``a.malware.test``, ``a.b.malware.test``) but
not ``malware.test`` itself: list both to cover both. Fields: the HTTP
request's host (the authority of an absolute-form or CONNECT target, else
the Host field; port dropped), the TLS ClientHello's SNI, the question
names of DNS queries (responses are not checked).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from protocols.http import HttpRequest

# Where a domain rule looks (its ``fields``) and the field its hit names.
DOMAIN_FIELDS = {"http_host": "http.host", "tls_sni": "tls.sni", "dns_query": "dns.rrname"}
# Default id of a domain rule without one: this + its position in the list.
DOMAIN_DEFAULT_ID = 300000


_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def domain_key(name: str) -> str:
    """A name as the domain rules compare it: lower case, one trailing dot dropped."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def check_domain_pattern(text: str) -> str | None:
    """Why ``text`` is not a usable name or ``*.suffix`` pattern (None: it is)."""
    name = domain_key(text)
    if not name:
        return "empty name"
    if not name.isascii():
        return f"{text!r}: not ASCII; write internationalised names in their xn-- (punycode) form"
    if "*" in name:
        if name == "*":
            return f"{text!r}: a bare '*' would match every name; write *.suffix"
        if not name.startswith("*.") or "*" in name[2:]:
            return (f"bad wildcard {text!r}: '*' is only allowed as the whole first label, "
                    f"as in *.example.com (it matches names under example.com, not example.com)")
        name = name[2:]
    if len(name) > 253:
        return f"{text!r}: longer than 253 characters"
    for label in name.split("."):
        if not _LABEL.match(label):
            return (f"{text!r}: bad label {label!r} (1-63 letters, digits, '-' or '_', "
                    f"not starting or ending with '-')")
    return None


class DomainIndex:
    """Exact names in one dict, wildcard suffixes in another: a lookup walks
    the name's parent domains (one dict probe per label), whatever the
    number of patterns."""

    def __init__(self) -> None:
        self.exact: dict[str, list[int]] = {}
        self.suffix: dict[str, list[int]] = {}

    def add(self, pattern: str, rule: int) -> None:
        key = domain_key(pattern)
        table, key = (self.suffix, key[2:]) if key.startswith("*.") else (self.exact, key)
        rules = table.setdefault(key, [])
        if rule not in rules:
            rules.append(rule)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffix)

    def match(self, name: str) -> list[int]:
        """Rules (by index) that ``name`` matches, each once, in rule order."""
        key = domain_key(name)
        out = list(self.exact.get(key, ()))
        if self.suffix:
            dot = key.find(".")
            while dot != -1:
                out += self.suffix.get(key[dot + 1:], ())
                dot = key.find(".", dot + 1)
        return sorted(set(out)) if len(out) > 1 else out


_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# Hosts of authorities already read (request_host), by authority text: a
# connection's requests, and a client's connections, name the same Host over
# and over. Bounded like the inspector's scan caches; full, it starts over.
MAX_CACHED_HOSTS = 4096
# Longer authorities are read each time (a DNS name has at most 253
# characters; with a port and userinfo a real one stays under this), so
# the cache holds at most about 1 MiB.
MAX_CACHED_AUTHORITY_CHARS = 256
_hosts: dict[str, str | None] = {}


def request_host(ev: HttpRequest) -> str | None:
    """The host an HTTP request is for: the authority of a CONNECT or an
    absolute-form target (RFC 9112 3.2.2: then the Host field is ignored),
    else the Host field. Port and userinfo dropped; IPv6 brackets kept off."""
    target = ev.uri
    auth = None
    if ev.method.upper() == "CONNECT":
        auth = target
    elif target[:1] != "/" and _ABSOLUTE_FORM.match(target):   # origin-form ("/...") is the common case
        auth = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if auth is None:
        auth = ev.host
    if not auth:
        return None
    host = _hosts.get(auth, _hosts)
    if host is _hosts:
        host = _authority_host(auth)
        if len(auth) <= MAX_CACHED_AUTHORITY_CHARS:
            if len(_hosts) >= MAX_CACHED_HOSTS:
                _hosts.clear()
            _hosts[auth] = host
    return host


def _authority_host(auth: str) -> str | None:
    """The host of a non-empty authority (request_host)."""
    auth = auth.rsplit("@", 1)[-1].strip()
    if auth.startswith("["):
        return auth[1:].split("]", 1)[0]
    return auth.split(":", 1)[0] if auth.count(":") == 1 else auth


@dataclass(frozen=True)
class DomainRule:
    """A domain rule of the rule file: patterns, where they apply, what a hit does."""
    id: int
    name: str
    patterns: tuple[str, ...]
    fields: frozenset[str]
    action: str
    severity: int

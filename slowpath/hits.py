"""What a slow-path rule reports: :class:`Hit`, and how matched text is shown.

Shared by the WAF (slowpath/waf.py), the DLP detectors (dlp.py), the domain
rules (domains.py) and the per-flow inspector (inspector.py) that makes them.
"""
from __future__ import annotations

from dataclasses import dataclass

from protocols.api import Direction

# Characters of matched text a hit carries. Enough to recognise an attack
# ("' union select password from users") in a log line without copying
# whole bodies into it; the log is not the place for evidence collection.
MAX_MATCHED_CHARS = 64
# Ids the built-ins use (WAF 1000xx-1003xx, DLP detectors 2000xx) and the
# default ids of domain rules (300000 + position): custom ids stay out.
RESERVED_IDS = range(100000, 400000)


@dataclass(frozen=True)
class Hit:
    """One rule that matched. ``matched`` is printable, at most MAX_MATCHED_CHARS
    characters; card numbers and SSNs show only their last 4 digits."""
    rule_id: int            # the signature id (SIEMs key on it)
    rule_name: str
    category: str           # "sqli", "xss", "traversal", "cmdi", "custom", a detector name, "domain"
    action: str             # "block" or "alert"
    severity: int           # 1 (high) .. 3
    field: str              # "http.uri", "http.header.cookie", "http.response_body", "tls.sni", ...
    matched: str
    direction: Direction

    def describe(self) -> str:
        """One log line's worth: rule, field and matched text."""
        return (f"{self.action} rule {self.rule_id} {self.rule_name!r} ({self.category}, severity "
                f"{self.severity}): {self.field} matched {self.matched!r}")

    def as_dict(self) -> dict:
        return {"signature_id": self.rule_id, "signature": self.rule_name, "category": self.category,
                "action": self.action, "severity": self.severity, "field": self.field,
                "matched": self.matched, "direction": "to_server" if self.direction == 0 else "to_client"}


def shown(data: bytes | str, limit: int = MAX_MATCHED_CHARS) -> str:
    """Text fit for a log line: control and non-UTF-8 bytes escaped, at most
    ``limit`` characters ("..." marks a cut)."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."

"""SMTP (RFC 5321) with ESMTP: greeting, EHLO/HELO, MAIL/RCPT, DATA, BDAT,
AUTH, STARTTLS and the replies to each command.

The server speaks first (a 220 greeting). The client sends command lines
and, with PIPELINING (RFC 2920), may send several before reading a reply;
the server answers each in order, so replies are matched to commands by a
queue. A reply may span lines ("250-..." continued, "250 ..." final); the
EHLO reply's extra lines are the server's extensions (STARTTLS, AUTH PLAIN
LOGIN, SIZE 52428800, ...).

After DATA is answered 354 the client sends the message, ending with a line
holding only ".": it is counted, never held, except its first
MAX_HEADER_BYTES, whose Subject/From/To/Message-Id/Date headers are read.
BDAT chunks (RFC 3030) are skipped by their length. AUTH reports only the
mechanism: its initial response and the client lines of the exchange
(credentials) are skipped unread until the server's final reply. A 220
answer to STARTTLS ends the cleartext: SmtpStartTls carries what follows
(the TLS handshake) so the analyzer detects it again, as after MySQL's
SSLRequest.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

from protocols.api import (CERTAIN, LIKELY, NO_MATCH, POSSIBLE, Direction, Event, Malformed,
                           ProtocolPlugin, Signature, StreamParser, StreamSide, event_kinds)

# Longest command or reply line accepted (CR LF included). RFC 5321 4.5.3.1
# sets 512 for both, but real MTAs accept more: MAIL FROM with several ESMTP
# parameters and a long SMTPUTF8 address, XCLIENT, long banners. Postfix's
# line_length_limit is 2048; twice that leaves room, and anything longer
# is not SMTP as any server would accept it.
MAX_LINE_BYTES = 4096
# A message text line is not held (the message is scanned, not buffered), so
# RFC 5321's 1000-byte text line limit is not enforced: a longer line is
# counted like any other (servers differ on it, and the size is still right).
# What a direction holds between calls: a command/reply line without its LF,
# or client bytes that wait for the server's answer to DATA or STARTTLS
# (a pipelining client may send the next commands; a broken one the message
# itself). Past this while waiting the client is taken to be sending the
# message (DATA) or the direction fails (STARTTLS).
MAX_BUFFERED_BYTES = MAX_LINE_BYTES
# The start of each message kept for its headers: a usual header block
# (Received chains aside) fits; the rest of the message is only counted.
MAX_HEADER_BYTES = 16 * 1024
# Header values and parameters reported, each cut to this: a log wants the
# subject and the addresses, not a 4 KB Received line.
MAX_VALUE_BYTES = 512
# Extensions kept from one EHLO reply (Postfix announces ~12, Exchange ~15);
# further lines are counted in SmtpReply.lines only.
MAX_EXTENSIONS = 64
# Addresses kept: per transaction (RFC 5321 4.5.3.1.8: a server must take
# at least 100 recipients) and in the session's lists; more are counted in
# events only, so a flood of RCPT commands does not grow memory.
MAX_ADDRESSES = 100
# Lines of one reply. A multi-line reply longer than this is not a server.
MAX_REPLY_LINES = 1000
# A BDAT chunk's declared size. Chunks are skipped, not held, so this only
# rejects numbers no server would take (Postfix's message_size_limit
# default is 10 MB; 2^40 is far past any).
MAX_BDAT_BYTES = 1 << 40

_REPLY = re.compile(rb"([2-5][0-9][0-9])([ -]?)")
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,19}")
_DIGITS = re.compile(r"[0-9]{1,13}")
_ADDRESS = re.compile(r"^\s*(?:FROM|TO)\s*:\s*<([^>]*)>", re.IGNORECASE)
_HEADERS = {"subject": "subject", "from": "from_", "to": "to", "message-id": "message_id",
            "date": "date"}


@dataclass(frozen=True)
class SmtpReply(Event):
    """One server reply (all its lines). ``command`` is the command it
    answers (upper-cased verb), None for the greeting or an unsolicited
    reply (421 timeout); "." for the answer to a message's end."""
    kind: ClassVar[str] = "smtp_reply"
    code: int
    text: str                           # the first line after the code
    command: str | None
    lines: int = 1
    extensions: tuple[str, ...] = ()    # an EHLO reply's further lines
    greeting: bool = False


@dataclass(frozen=True)
class SmtpCommand(Event):
    """A command line. AUTH's parameter is its mechanism only, never the
    initial response; for MAIL and RCPT ``address`` is the path between
    < and > (may be "" for the null sender)."""
    kind: ClassVar[str] = "smtp_command"
    command: str                        # upper-cased verb
    parameter: str | None               # the rest of the line as sent, cut
    address: str | None = None


@dataclass(frozen=True)
class SmtpMessage(Event):
    """A message ended (DATA's "." or BDAT ... LAST), with its envelope
    (the session's HELO, this transaction's MAIL FROM and RCPT TO addresses)."""
    kind: ClassVar[str] = "smtp_message"
    size: int                           # bytes of the message as sent (dot-stuffing kept)
    helo: str | None = None
    mail_from: str | None = None
    rcpt_to: tuple[str, ...] = ()
    subject: str | None = None
    from_: str | None = None
    to: str | None = None
    message_id: str | None = None
    date: str | None = None
    headers_truncated: bool = False     # the header block was longer than MAX_HEADER_BYTES


@dataclass(frozen=True)
class SmtpStartTls(Event):
    """STARTTLS answered 220: the rest of the connection is TLS. ``rest``:
    bytes already received past that point, as (direction, bytes)."""
    kind: ClassVar[str] = "smtp_starttls"
    rest: tuple[tuple[Direction, bytes], ...] = ()


def _text(raw: bytes) -> str:
    return bytes(raw[:MAX_VALUE_BYTES]).decode("utf-8", "backslashreplace")


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def parse_headers(head: bytes) -> dict[str, str]:
    """The first Subject/From/To/Message-Id/Date of a header block (folded
    lines unfolded), keyed by SmtpMessage field name."""
    out: dict[str, str] = {}
    current: list | None = None
    for raw in head.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current[1] += b" " + line.strip()
            continue
        name, sep, value = line.partition(b":")
        current = None
        if not sep:
            continue
        key = _HEADERS.get(name.strip().decode("latin-1").lower())
        if key and key not in out:
            current = [key, value.strip()]
            out[key] = current      # filled below
    return {k: _text(v[1]) for k, v in out.items()}


class _Client(StreamSide):
    __slots__ = ("state", "wait_for", "data_size", "data_head", "bol", "head_done", "skip", "bdat_last",
                 "head_over")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        # command | wait (DATA/STARTTLS sent: bytes held until the answer) |
        # data (the message) | bdat (a chunk) | auth (credentials, skipped) | done
        self.state = "command"
        self.wait_for = ""
        self.data_size = 0
        self.data_head = bytearray()
        self.head_over = False
        self.bol = True
        self.head_done = False
        self.skip = 0
        self.bdat_last = False

    @property
    def done(self) -> bool:
        return self.state == "done"


class _Server(StreamSide):
    __slots__ = ("state", "code", "first", "lines", "ext", "at")
    max_buffered = MAX_BUFFERED_BYTES

    def __init__(self, direction: Direction) -> None:
        super().__init__(direction)
        self.state = "reply"
        self.code: bytes | None = None      # of a reply whose last line has not come
        self.first = b""
        self.lines = 0
        self.ext: list[str] = []
        self.at = 0

    @property
    def done(self) -> bool:
        return self.state == "done"


class SmtpParser(StreamParser):
    def __init__(self) -> None:
        self._client = _Client(Direction.TO_SERVER)
        self._server = _Server(Direction.TO_CLIENT)
        self._sides = {Direction.TO_SERVER: self._client, Direction.TO_CLIENT: self._server}
        self._pending: deque[str] = deque()     # commands sent, not answered yet (in order)
        self._greeted = False
        # What the session said so far (for EVE and logs).
        self.banner: str | None = None
        self.helo: str | None = None
        self.mail_from: list[str] = []
        self.rcpt_to: list[str] = []
        self.extensions: tuple[str, ...] = ()
        self.auth_mechanism: str | None = None
        self.starttls = False
        self._tx_from: str | None = None        # this mail transaction's envelope
        self._tx_rcpt: list[str] = []

    # --- input ---------------------------------------------------------------
    def receive_data(self, data: bytes, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        if not side.accept(data):
            return []
        events: list[Event] = []
        if direction == Direction.TO_SERVER:
            self._run_client(events)
        else:
            self._run_server(events)
        return events

    def receive_eof(self, direction: Direction) -> list[Event]:
        side = self._sides[direction]
        side.eof = True
        if side.done:
            return []
        events: list[Event] = []
        held = bool(side.buf)
        if direction == Direction.TO_SERVER and side.state in ("data", "bdat"):
            held = True
        if direction == Direction.TO_CLIENT and side.code is not None:
            held = True
        side.state = "done"
        side.discard()
        if held:
            events.append(Malformed(direction, "stream ended inside a line or message", side.offset))
        return events

    def receive_gap(self, direction: Direction, size: int) -> list[Event]:
        side = self._sides[direction]
        if side.done:
            return []
        side.state = "done"
        side.discard()
        return [Malformed(direction, f"gap of {size} bytes in the stream", -1)]

    def _fail(self, side: StreamSide, events: list[Event], reason: str, at: int) -> None:
        events.append(Malformed(side.direction, reason, at))
        side.state = "done"

    # --- client --------------------------------------------------------------
    def _run_client(self, events: list[Event]) -> None:
        side = self._client
        buf = side.buf
        pos = 0
        while True:
            state = side.state
            if state == "done":
                break
            if state == "wait":
                if len(buf) - pos > MAX_BUFFERED_BYTES:
                    if side.wait_for == "DATA":
                        # The client did not wait for 354 (or the answer is
                        # lost): what it sends is the message.
                        self._start_data(side)
                        continue
                    self._fail(side, events, "client sent past STARTTLS without waiting for the answer",
                               side.offset + pos)
                break
            if state == "data":
                pos = self._scan_data(side, buf, pos, events)
                if side.state == "data":
                    break
                continue
            if state == "bdat":
                n = min(side.skip, len(buf) - pos)
                self._keep_head(side, buf, pos, n)
                side.data_size += n
                side.skip -= n
                pos += n
                if side.skip:
                    break
                side.state = "command"
                if side.bdat_last:
                    self._message_end(side, events)
                continue
            nl = buf.find(b"\n", pos, pos + MAX_LINE_BYTES)
            if nl < 0:
                if len(buf) - pos >= MAX_LINE_BYTES:
                    self._fail(side, events, f"no line end within {MAX_LINE_BYTES} bytes",
                               side.offset + pos)
                break
            at = side.offset + pos
            line = _strip_eol(bytes(buf[pos:nl + 1]))
            pos = nl + 1
            if state == "auth":
                continue            # a response of the AUTH exchange: credentials, not read
            self._command(side, line, at, events)
        side.consume(len(buf) if side.done else pos)

    def _command(self, side: _Client, line: bytes, at: int, events: list[Event]) -> None:
        verb_end = line.find(b" ")
        verb = line if verb_end < 0 else line[:verb_end]
        if line and not _VERB.fullmatch(verb):
            return self._fail(side, events, f"not an SMTP command line: {_text(line[:40])!r}", at)
        command = verb.decode("ascii").upper()
        parameter = None if verb_end < 0 else _text(line[verb_end + 1:])
        address = None
        self._pending.append(command)
        if command == "AUTH":
            mech = (parameter or "").split(" ", 1)[0].upper() or None
            parameter = mech                        # never the initial response
            self.auth_mechanism = mech
            side.state = "auth"
        elif command in ("EHLO", "HELO", "LHLO"):
            if self.helo is None:
                self.helo = parameter or ""
        elif command in ("MAIL", "RCPT"):
            m = _ADDRESS.match(parameter or "")
            address = m.group(1) if m else None
            if command == "MAIL":
                self._tx_from, self._tx_rcpt = address, []
            if address is not None:
                kept = self.mail_from if command == "MAIL" else self.rcpt_to
                if len(kept) < MAX_ADDRESSES:
                    kept.append(address)
                if command == "RCPT" and len(self._tx_rcpt) < MAX_ADDRESSES:
                    self._tx_rcpt.append(address)
        elif command in ("DATA", "STARTTLS"):
            side.state = "wait"
            side.wait_for = command
        elif command == "BDAT":
            args = (parameter or "").split()
            # ASCII digits only: str.isdigit() takes "²", which int() refuses.
            if not args or not _DIGITS.fullmatch(args[0]) or int(args[0]) > MAX_BDAT_BYTES:
                return self._fail(side, events, f"BDAT size {parameter!r} not a number", at)
            if side.data_size == 0 and not side.data_head:
                side.bol, side.head_done, side.head_over = True, False, False
            side.skip = int(args[0])
            side.bdat_last = len(args) > 1 and args[1].upper() == "LAST"
            side.state = "bdat"
        events.append(SmtpCommand(command, parameter, address))

    def _start_data(self, side: _Client) -> None:
        side.state = "data"
        side.data_size = 0
        side.data_head = bytearray()
        side.head_over = False
        side.head_done = False
        side.bol = True

    def _keep_head(self, side: _Client, buf: bytearray, pos: int, n: int) -> None:
        if side.head_done:
            return
        room = MAX_HEADER_BYTES - len(side.data_head)
        if room <= 0:
            side.head_done = side.head_over = True
            return
        side.data_head += buf[pos:pos + min(n, room)]
        if b"\r\n\r\n" in side.data_head or b"\n\n" in side.data_head:
            side.head_done = True
        elif n > room:
            side.head_done = side.head_over = True

    def _scan_data(self, side: _Client, buf: bytearray, pos: int, events: list[Event]) -> int:
        """Read the message: line ends found, nothing held but a possible
        start of the final "." line."""
        end = len(buf)
        while pos < end:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                if side.bol and end - pos <= 2 and b".\r\n".startswith(buf[pos:]):
                    return pos              # maybe the final ".", wait for its end
                self._keep_head(side, buf, pos, end - pos)
                side.data_size += end - pos
                side.bol = False
                return end
            line_end = nl + 1
            if side.bol and buf[pos:line_end] in (b".\r\n", b".\n"):
                self._message_end(side, events)
                self._pending.append(".")
                side.state = "command"
                return line_end
            self._keep_head(side, buf, pos, line_end - pos)
            side.data_size += line_end - pos
            side.bol = True
            pos = line_end
        return pos

    def _message_end(self, side: _Client, events: list[Event]) -> None:
        head = bytes(side.data_head)
        fields = parse_headers(head)
        events.append(SmtpMessage(side.data_size, self.helo, self._tx_from, tuple(self._tx_rcpt),
                                  headers_truncated=side.head_over, **fields))
        side.data_size = 0
        side.data_head = bytearray()
        side.head_done = side.head_over = False
        side.bol = True

    # --- server --------------------------------------------------------------
    def _run_server(self, events: list[Event]) -> None:
        side = self._server
        buf = side.buf
        pos = 0
        while side.state != "done":
            nl = buf.find(b"\n", pos, pos + MAX_LINE_BYTES)
            if nl < 0:
                if len(buf) - pos >= MAX_LINE_BYTES:
                    self._fail(side, events, f"no line end within {MAX_LINE_BYTES} bytes",
                               side.offset + pos)
                break
            at = side.offset + pos
            line = _strip_eol(bytes(buf[pos:nl + 1]))
            pos = nl + 1
            if self._reply_line(side, line, at, events):
                # STARTTLS accepted: everything after this line is TLS.
                rest = []
                client = self._client
                if client.buf:
                    rest.append((Direction.TO_SERVER, bytes(client.buf)))
                if pos < len(buf):
                    rest.append((Direction.TO_CLIENT, bytes(buf[pos:])))
                events.append(SmtpStartTls(tuple(rest)))
                for s in (client, side):
                    s.state = "done"
                client.discard()
                pos = len(buf)
                break
        side.consume(len(buf) if side.done else pos)

    def _reply_line(self, side: _Server, line: bytes, at: int, events: list[Event]) -> bool:
        m = _REPLY.match(line)
        sep = m.group(2) if m else b""
        if m is None or (not sep and len(line) > 3):
            self._fail(side, events, f"not an SMTP reply line: {_text(line[:40])!r}", at)
            return False
        code = m.group(1)
        if side.code is None:
            side.code, side.first, side.lines, side.ext, side.at = code, line[4:], 0, [], at
        elif code != side.code:
            self._fail(side, events, f"reply code {code.decode()} inside a {side.code.decode()} reply", at)
            return False
        side.lines += 1
        if side.lines > 1 and len(side.ext) < MAX_EXTENSIONS:
            side.ext.append(_text(line[4:]))
        if side.lines > MAX_REPLY_LINES:
            self._fail(side, events, f"reply of more than {MAX_REPLY_LINES} lines", at)
            return False
        if sep == b"-":
            return False
        return self._reply(side, events)

    def _reply(self, side: _Server, events: list[Event]) -> bool:
        code = int(side.code)
        text = _text(side.first)
        side.code = None
        # The first reply is the greeting, also when the client's first
        # command was fed before it (both directions held during detection).
        greeting = not self._greeted and (not self._pending or code in (220, 554))
        self._greeted = True
        if greeting:
            self.banner = text
            events.append(SmtpReply(code, text, None, side.lines, greeting=True))
            return False
        command = None
        if self._pending and not (code == 334 and self._pending[0] == "AUTH"):
            command = self._pending.popleft()
        elif self._pending:
            command = "AUTH"            # a challenge: the exchange goes on
        extensions = ()
        if command in ("EHLO", "LHLO") and code == 250:
            extensions = self.extensions = tuple(side.ext)
        events.append(SmtpReply(code, text, command, side.lines, extensions))
        client = self._client
        if command == "AUTH" and code != 334 and client.state == "auth":
            client.state = "command"
            self._run_client(events)
        elif client.state == "wait" and command == client.wait_for:
            if command == "STARTTLS" and code == 220:
                self.starttls = True
                return True
            if command == "DATA" and code == 354:
                self._start_data(client)
            else:
                client.state = "command"
            self._run_client(events)        # what the client sent meanwhile
        return False


def probe(data: bytes, direction: Direction) -> float:
    """Rate the first bytes of one direction as SMTP."""
    line = data[:MAX_LINE_BYTES].split(b"\n", 1)[0]
    if direction == Direction.TO_CLIENT:
        if data[:4] not in (b"220 ", b"220-") and data[:4] not in (b"554 ", b"554-"):
            return NO_MATCH
        if b"SMTP" in line.upper() or b"MAIL" in line.upper():
            return CERTAIN
        # FTP and others greet with 220 too: only a hint on its own.
        return POSSIBLE
    head = data[:5].upper()
    if head in (b"EHLO ", b"HELO ", b"LHLO "):
        return CERTAIN if b"\n" in data else LIKELY
    return NO_MATCH


_CASE = b"\xdf\xdf\xdf\xdf\xff"       # letters either case (bit 5 cleared), the space exact

PLUGIN = ProtocolPlugin(
    name="smtp",
    event_kinds=event_kinds(SmtpReply, SmtpCommand, SmtpMessage, SmtpStartTls),
    # STARTTLS turns the connection into TLS (smtp_starttls).
    switches=True,
    probe=probe,
    parser_factory=lambda transport: SmtpParser(),
    signatures=(
        # The client's hello, any case (servers take "ehlo"): SMTP's only
        # kernel signatures. The server's "220 " / "220-" greeting is not one:
        # FTP greets the same way, and a flow the kernel names on its first
        # payload keeps the name, so an `app: smtp` rule would let an FTP
        # session through. Without a server-side signature the kernel does not
        # judge the greeting and decides on the client's first line (EHLO or
        # HELO passes, an FTP USER is dropped); the slow path's probe still
        # reads the greeting (POSSIBLE alone, CERTAIN with "SMTP"/"MAIL").
        Signature(0, b"EHLO ", _CASE),
        Signature(0, b"HELO ", _CASE),
    ),
    transports=frozenset({"tcp"}),
    description="SMTP/ESMTP: greeting, EHLO extensions, MAIL/RCPT, message size and headers, "
                "AUTH mechanism, replies; STARTTLS hands over to TLS",
)

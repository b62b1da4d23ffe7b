"""gRPC over HTTP/2: one call per HTTP/2 stream whose content-type is
``application/grpc`` (or ``application/grpc+proto``, ``+json``...).

Sans-IO helpers used by the HTTP/2 parser (protocols/http2.py), which sees
the streams: :func:`is_grpc` tells a gRPC stream by its content-type,
:func:`split_path` gives service and method from ``:path``
(``/package.Service/Method``), :class:`MessageFramer` counts the
length-prefixed messages of one direction of a call across DATA frames
(a 1-byte compressed flag and a 4-byte big-endian length before each
message, gRPC's PROTOCOL-HTTP2.md), and :class:`GrpcCall` is the event the
parser emits once per call when it ends, with the status from the server's
trailers (or a trailers-only response). The messages themselves are not
decoded (protobuf needs the service's schema): only counted and sized.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from protocols.api import Direction, Event

# Bytes before each gRPC message: compressed flag (1) + message length (4).
PREFIX_BYTES = 5
# A message length over this is named (GRPC_MESSAGE_TOO_LARGE) but still
# skipped: grpc-go and grpc-java refuse received messages over 4 MiB by
# default (MaxRecvMsgSize / maxInboundMessageSize), so a longer one is either
# a server configured for it or a framing error worth a look.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def is_grpc(content_type: str | None) -> bool:
    """``content-type`` names gRPC (application/grpc, application/grpc+proto, ...)."""
    if not content_type:
        return False
    ct = content_type.strip().lower()
    return ct == "application/grpc" or ct.startswith(("application/grpc+", "application/grpc;"))


def split_path(path: str | None) -> tuple[str | None, str | None]:
    """(service, method) of a gRPC ``:path`` "/package.Service/Method";
    (None, None) when the path does not have that shape."""
    if not path or not path.startswith("/"):
        return None, None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None, None
    return service, method


class MessageFramer:
    """Counts the length-prefixed messages of one direction of a call as its
    DATA payload arrives in any cut. Holds at most PREFIX_BYTES - 1 bytes."""
    __slots__ = ("messages", "compressed", "bad_flag", "too_large", "_head", "_skip", "_lost")

    def __init__(self) -> None:
        self.messages = 0          # prefixes read (messages started)
        self.compressed = 0        # of them with the compressed flag set
        self.bad_flag = False      # a flag byte other than 0 or 1: not gRPC framing
        self.too_large = False     # a length over MAX_MESSAGE_BYTES
        self._head = b""           # an incomplete prefix
        self._skip = 0             # message bytes still to come
        self._lost = False         # bytes were lost: wait for the next DATA frame

    @property
    def partial(self) -> bool:
        """The data ended inside a prefix or a message."""
        return bool(self._head) or self._skip > 0

    def feed(self, data: bytes) -> None:
        if self._lost:
            return
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            need = PREFIX_BYTES - len(self._head)
            self._head += data[i:i + need]
            i += min(need, n - i)
            if len(self._head) < PREFIX_BYTES:
                return
            flag, length = self._head[0], int.from_bytes(self._head[1:5], "big")
            self._head = b""
            self.messages += 1
            if flag == 1:
                self.compressed += 1
            elif flag != 0:
                self.bad_flag = True
            if length > MAX_MESSAGE_BYTES:
                self.too_large = True
            self._skip = length

    def gap(self, size: int) -> None:
        """``size`` payload bytes were lost: framing is unknown until the next
        DATA frame (:meth:`frame_start`)."""
        self._head, self._skip, self._lost = b"", 0, True

    def frame_start(self) -> None:
        """A DATA frame begins. After a loss, read it as starting a message:
        gRPC implementations write each message from a frame's start (grpc-go
        and grpc-java flush a message per DATA frame unless it exceeds the
        frame size), the only boundary left to go by."""
        if self._lost:
            self._head, self._skip, self._lost = b"", 0, False


@dataclass(frozen=True)
class GrpcCall(Event):
    """One gRPC call (an HTTP/2 stream), emitted when the stream ends (both
    directions ended, a reset, or the connection's end). Fields not seen in
    the capture are None. ``grpc_status``/``grpc_message`` come from the
    server's trailers, or its headers in a trailers-only response."""
    kind: ClassVar[str] = "grpc_call"
    direction: Direction          # of the event that completed the call
    stream_id: int
    path: str | None
    service: str | None
    method: str | None
    authority: str | None
    user_agent: str | None
    request_content_type: str | None
    response_content_type: str | None
    grpc_encoding: str | None      # request's grpc-encoding (else the response's)
    grpc_timeout: str | None
    http_status: int | None
    grpc_status: int | None
    grpc_message: str | None
    request_messages: int
    response_messages: int
    compressed_messages: int
    request_data_frames: int
    response_data_frames: int
    reset: bool = False            # the stream ended by RST_STREAM

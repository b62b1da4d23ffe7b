"""An HTTP/1.1 server for the lab tests whose responses are compressed:
``GET /<page>.<coding>`` answers the page with ``Content-Encoding: <coding>``.

    compressed_server.py HOST PORT LOG [hold]

pages:   clean  a small HTML page, no secret in it
         card   a card number in its first line, then FILLER_BYTES of
                incompressible text, so the compressed body is large and a
                reset partway through it shows as a short download
codings: gzip, deflate (zlib-wrapped), br, identity (none)
``?chunked=1`` sends the body with chunked transfer coding instead of a
Content-Length. Every request is appended to LOG; prints ``ready`` once it
listens. The bodies are compressed once, at start.

``hold`` (for a port whose responses are inspected): a body larger than
HOLD_AFTER is sent in two parts, the rest only once the connection was
reset or HOLD_MAX_S passed. An async inspection lets a response pass while
it is read, so without the pause a busy machine's late verdict would find
the 12 MiB already through (a test's failure saying nothing about the
DLP); with it, the cut is judged by whether it comes, not by a race.
"""
from __future__ import annotations

import base64
import gzip
import random
import select
import sys
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import brotli

CARD_LINE = b"customer card 4111 1111 1111 1111 exp 12/30\n"
CLEAN_PAGE = b"<html><body>" + b"<p>nothing secret in this compressed page</p>\n" * 64 + b"</body></html>\n"
# Far more than the inspection budget and than a socket buffer: a reset
# after the card number is seen cuts the transfer well before its end.
FILLER_BYTES = 12 * 1024 * 1024
CHUNK = 16 * 1024          # chunk size of the chunked responses
FILLER_SEED = 16           # the same bytes every run
FAST_GZIP_LEVEL = 1        # compression speed matters here, not ratio
# hold: the first part of a large body. More than the slow path's default
# inspection budget a side (16 KiB, datapath/config.py inspect_budget):
# all it may read of the body is sent before the pause.
HOLD_AFTER = 64 * 1024
# hold: the longest pause for the reset (a verdict on a busy machine takes
# milliseconds; seconds only when something is wrong). Then the rest goes,
# well inside the tests' client timeout (test_compressed_lab.py: curl
# --max-time 10), so a response nothing cut arrives whole and fails the
# test, not a client timeout that looks like a cut.
HOLD_MAX_S = 3.0
FAST_BROTLI_QUALITY = 1


def filler() -> bytes:
    raw = random.Random(FILLER_SEED).randbytes(FILLER_BYTES * 3 // 4)
    return base64.encodebytes(raw)


def encode(body: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(body, FAST_GZIP_LEVEL, mtime=0)
    if coding == "deflate":
        return zlib.compress(body, FAST_GZIP_LEVEL)
    if coding == "br":
        return brotli.compress(body, quality=FAST_BROTLI_QUALITY)
    return body


PAGES = {"clean": CLEAN_PAGE, "card": CARD_LINE + filler()}
CODINGS = ("gzip", "deflate", "br", "identity")
BODIES = {(page, coding): encode(body, coding) for page, body in PAGES.items() for coding in CODINGS}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_file = None
    hold = False

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        page, _, coding = url.path.lstrip("/").partition(".")
        body = BODIES.get((page, coding))
        if body is None:
            self.send_error(404)
            return
        chunked = parse_qs(url.query).get("chunked") == ["1"]
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if page == "clean" else "text/plain")
        if coding != "identity":
            self.send_header("Content-Encoding", coding)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if chunked:
            body = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + CHUNK]), body[i:i + CHUNK])
                            for i in range(0, len(body), CHUNK)) + b"0\r\n\r\n"
        if not self.hold or len(body) <= HOLD_AFTER:
            self.wfile.write(body)
            return
        self.wfile.write(body[:HOLD_AFTER])
        self.wfile.flush()
        # Readable: the reset (or the client's FIN) came; otherwise the time is up.
        select.select([self.connection], [], [], HOLD_MAX_S)
        try:
            self.wfile.write(body[HOLD_AFTER:])
        except (ConnectionResetError, BrokenPipeError):
            self.close_connection = True      # cut, as the inspection meant

    def log_message(self, format: str, *args) -> None:
        self.log_file.write(f"{self.command} {self.path}\n")
        self.log_file.flush()


def main() -> None:
    host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.hold = sys.argv[4:] == ["hold"]
    Handler.log_file = open(log, "a", buffering=1)
    server = ThreadingHTTPServer((host, port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""An HTTP/1.1 server for the lab tests whose responses are compressed:
``GET /<page>.<coding>`` answers the page with ``Content-Encoding: <coding>``.

    compressed_server.py HOST PORT LOG

pages:   clean  a small HTML page, no secret in it
         card   a card number in its first line, then FILLER_BYTES of
                incompressible text, so the compressed body is large and a
                reset partway through it shows as a short download
codings: gzip, deflate (zlib-wrapped), br, identity (none)
``?chunked=1`` sends the body with chunked transfer coding instead of a
Content-Length. Every request is appended to LOG; prints ``ready`` once it
listens. The bodies are compressed once, at start.
"""
from __future__ import annotations

import base64
import gzip
import random
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
        if not chunked:
            self.wfile.write(body)
            return
        for i in range(0, len(body), CHUNK):
            piece = body[i:i + CHUNK]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args) -> None:
        self.log_file.write(f"{self.command} {self.path}\n")
        self.log_file.flush()


def main() -> None:
    host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    Handler.log_file = open(log, "a", buffering=1)
    server = ThreadingHTTPServer((host, port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""A TLS-over-TCP echo server and client for the lab tests (Python's ssl).

    tls_echo.py serve HOST PORT CERT KEY LOG   echoes one line per connection;
                                               prints ``ready``
    tls_echo.py call HOST PORT SNI TEXT        connects naming SNI, sends TEXT
                                               and a newline; prints ``OK
                                               <echo>`` (exit 0) or ``ERROR
                                               <why>`` (exit 1)

The server appends ``hello <sni>`` to LOG for every ClientHello it reads
(before its handshake answer) and ``data <text>`` for every line, so a test
can tell that a ClientHello never reached it. The client does not verify
the server's throwaway certificate.
"""
from __future__ import annotations

import socket
import socketserver
import ssl
import sys
import threading

# A held and dropped ClientHello is answered by a reset, or by nothing: the
# client gives up on its own, well inside the test's bound.
CALL_TIMEOUT_S = 10
MAX_LINE = 1 << 20          # the longest line the server echoes


def serve(host: str, port: int, cert: str, key: str, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()

    def note(text: str) -> None:
        with lock:
            log.write(text + "\n")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, c: note(f"hello {name}")

    class Echo(socketserver.StreamRequestHandler):
        def setup(self):
            self.request.settimeout(CALL_TIMEOUT_S)
            self.request = ctx.wrap_socket(self.request, server_side=True)
            super().setup()

        def handle(self):
            line = self.rfile.readline(MAX_LINE)
            note(f"data {line.decode('utf-8', 'replace').strip()[:80]}")
            self.wfile.write(line)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

        def handle_error(self, request, client_address):
            pass                  # a reset client (a blocked hello): nothing to say

    srv = Server((host, port), Echo)
    print("ready", flush=True)
    srv.serve_forever()


def call(host: str, port: int, sni: str, text: str) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=CALL_TIMEOUT_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(text.encode() + b"\n")
            got = b""
            while not got.endswith(b"\n"):
                piece = s.recv(65536)
                if not piece:
                    break
                got += piece
            return f"OK {got.decode('utf-8', 'replace').strip()}"
    except (OSError, ssl.SSLError) as e:
        return f"ERROR {type(e).__name__}"


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "serve":
        serve(argv[1], int(argv[2]), argv[3], argv[4], argv[5])
        return 0
    if len(argv) == 5 and argv[0] == "call":
        out = call(argv[1], int(argv[2]), argv[3], argv[4])
        print(out, flush=True)
        return 0 if out.startswith("OK ") else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

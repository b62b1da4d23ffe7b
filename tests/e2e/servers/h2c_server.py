"""A cleartext HTTP/2 (h2c) file server for the lab tests, on python-hyper's
``h2``: HTTP/2 by prior knowledge (the client preface first) and by an
HTTP/1.1 ``Upgrade: h2c`` request, answered on stream 1 as RFC 7540 3.2 says.
Debian's nghttpd speaks prior knowledge only, and the lab needs both.

    h2c_server.py HOST PORT ROOT LOG

Serves GET/HEAD of the files under ROOT (the query string ignored), 404
otherwise. Every request the server receives is appended to LOG as
``<proto> <method> <path>`` the moment its headers arrive, so a test can tell
that a request never reached it. Prints ``ready`` once it listens. One thread
per connection; it runs until killed.
"""
from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 64 * 1024     # an HTTP/1.1 request head larger than this is refused: a lab server, not a proxy
RECV = 65536
LISTEN_BACKLOG = 64


class Server:
    def __init__(self, root: Path, log_path: Path) -> None:
        self.root = root.resolve()
        self.log = open(log_path, "a", buffering=1)
        self.lock = threading.Lock()

    def note(self, proto: str, method: str, path: str) -> None:
        with self.lock:
            self.log.write(f"{proto} {method} {path}\n")
            self.log.flush()

    def body_for(self, method: str, path: str) -> tuple[int, bytes]:
        rel = unquote(urlsplit(path).path).lstrip("/")
        f = (self.root / rel).resolve()
        if method not in ("GET", "HEAD") or not f.is_file() or self.root not in f.parents:
            return 404, b"not found\n"
        return 200, f.read_bytes()

    # -- one connection ------------------------------------------------
    def serve(self, sock: socket.socket) -> None:
        try:
            first = b""
            while len(first) < len(PREFACE) and PREFACE.startswith(first):
                got = sock.recv(RECV)
                if not got:
                    return
                first += got
            if first.startswith(PREFACE):
                conn = self.h2_conn()
                conn.initiate_connection()
                sock.sendall(conn.data_to_send())
                self.h2_loop(sock, conn, first)
            else:
                self.http1(sock, first)
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            sock.close()

    @staticmethod
    def h2_conn() -> h2.connection.H2Connection:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.waiting = {}     # stream -> the part of its body flow control has held back
        return conn

    def http1(self, sock: socket.socket, data: bytes) -> None:
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEAD:
                return
            got = sock.recv(RECV)
            if not got:
                return
            data += got
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = (lines[0].split(" ") + ["", ""])[:3]
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        upgrade = "h2c" in fields.get("upgrade", "").lower().split(",") and "http2-settings" in fields
        self.note("h2c-upgrade" if upgrade else "http/1.1", method, path)
        if not upgrade:
            status, body = self.body_for(method, path)
            sock.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                         .encode() + (body if method != "HEAD" else b""))
            return
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        conn = self.h2_conn()
        conn.initiate_upgrade_connection(fields["http2-settings"].encode())
        self.respond(conn, 1, method, path)      # the upgrade request is stream 1, half-closed by the client
        self.pump(conn)
        sock.sendall(conn.data_to_send())
        self.h2_loop(sock, conn, rest)

    def h2_loop(self, sock: socket.socket, conn: h2.connection.H2Connection, data: bytes) -> None:
        pending: dict[int, tuple[str, str]] = {}
        while True:
            if data:
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        h = dict(ev.headers)
                        pending[ev.stream_id] = (h.get(":method", ""), h.get(":path", ""))
                        self.note("h2", *pending[ev.stream_id])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id in pending:
                        self.respond(conn, ev.stream_id, *pending.pop(ev.stream_id))
                    elif isinstance(ev, h2.events.StreamReset):
                        conn.waiting.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        sock.sendall(conn.data_to_send())
                        return
                self.pump(conn)
                sock.sendall(conn.data_to_send())
            data = sock.recv(RECV)
            if not data:
                return

    def respond(self, conn: h2.connection.H2Connection, stream: int, method: str, path: str) -> None:
        status, body = self.body_for(method, path)
        conn.send_headers(stream, [(":status", str(status)), ("content-length", str(len(body)))],
                          end_stream=method == "HEAD" or not body)
        if method != "HEAD" and body:
            conn.waiting[stream] = memoryview(body)

    def pump(self, conn: h2.connection.H2Connection) -> None:
        """Send what the peer's flow-control windows allow of the bodies
        waiting; the rest goes when its WINDOW_UPDATE arrives."""
        waiting = conn.waiting
        for stream, view in list(waiting.items()):
            while view:
                room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size, len(view))
                if room <= 0:
                    break
                conn.send_data(stream, bytes(view[:room]), end_stream=room == len(view))
                view = view[room:]
            if view:
                waiting[stream] = view
            else:
                del waiting[stream]


def main() -> None:
    host, port, root, log = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    server = Server(root, log)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(LISTEN_BACKLOG)
    print("ready", flush=True)
    while True:
        sock, _ = lsock.accept()
        threading.Thread(target=server.serve, args=(sock,), daemon=True).start()


if __name__ == "__main__":
    main()

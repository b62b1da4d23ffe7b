"""A raw-QUIC echo server and client for the lab tests, on aioquic (QUIC v1,
TLS 1.3 in the Initial packets: what protocols/quic.py reads).

    quic_server.py serve HOST PORT CERT KEY LOG   echoes each stream's data
                                                  back (ALPN ``lab-echo``);
                                                  prints ``ready``
    quic_server.py call HOST PORT SNI TEXT        connects naming SNI in its
                                                  ClientHello, sends TEXT on
                                                  one stream; prints ``OK
                                                  <echo>`` (exit 0) or
                                                  ``ERROR <why>`` (exit 1)

The server appends ``handshake`` for every completed handshake and ``data
<text>`` for every stream it reads to LOG, so a test can tell that a
connection never reached it. The client does not verify the server's
certificate (a throwaway self-signed one): the SNI is only what the
appliance reads.
"""
from __future__ import annotations

import asyncio
import os
import ssl
import sys

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived

ALPN = ["lab-echo"]
# A blocked Initial is dropped: the handshake never completes, and the
# client must give up on its own, well inside the test's bound.
CONNECT_TIMEOUT_S = 8
# The whole call (handshake, one echo) once connected.
CALL_TIMEOUT_S = 15
# Idle timeout of both ends: a client that gave up leaves no connection
# state at the server for long.
IDLE_TIMEOUT_S = 10.0


def serve_forever(host: str, port: int, cert: str, key: str, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)

    class Echo(QuicConnectionProtocol):
        def quic_event_received(self, event) -> None:
            if isinstance(event, HandshakeCompleted):
                log.write("handshake\n")
            elif isinstance(event, StreamDataReceived):
                if event.data:
                    log.write(f"data {event.data.decode('utf-8', 'replace')}\n")
                self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)
                self.transmit()

    config = QuicConfiguration(is_client=False, alpn_protocols=ALPN, idle_timeout=IDLE_TIMEOUT_S)
    config.load_cert_chain(cert, key)

    async def main() -> None:
        await serve(host, port, configuration=config, create_protocol=Echo)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def _call(host: str, port: int, sni: str, text: str) -> str:
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, server_name=sni,
                               verify_mode=ssl.CERT_NONE, idle_timeout=IDLE_TIMEOUT_S)
    connected = asyncio.Event()

    async def talk() -> str:
        async with connect(host, port, configuration=config) as proto:
            connected.set()
            reader, writer = await proto.create_stream()
            writer.write(text.encode())
            writer.write_eof()
            return f"OK {(await reader.read()).decode('utf-8', 'replace')}"

    task = asyncio.ensure_future(talk())
    # Bounded waits that do not cancel the task (a cancelled aioquic
    # connection waits out its close): the process exits on its own.
    await asyncio.wait([task, asyncio.ensure_future(connected.wait())], timeout=CONNECT_TIMEOUT_S,
                       return_when=asyncio.FIRST_COMPLETED)
    if not connected.is_set() and not task.done():
        return "ERROR handshake: no answer"
    await asyncio.wait([task], timeout=CALL_TIMEOUT_S)
    if not task.done():
        return "ERROR stream: no answer"
    try:
        return task.result()
    except (ConnectionError, OSError) as e:
        return f"ERROR {type(e).__name__}: {e}"


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "serve":
        serve_forever(argv[1], int(argv[2]), argv[3], argv[4], argv[5])
        return 0
    if len(argv) == 5 and argv[0] == "call":
        loop = asyncio.new_event_loop()
        out = loop.run_until_complete(_call(argv[1], int(argv[2]), argv[3], argv[4]))
        print(out, flush=True)
        os._exit(0 if out.startswith("OK ") else 1)    # not waiting out a connection that never was
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

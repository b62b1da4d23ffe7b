"""A gRPC server and client for the lab tests, on grpcio with generic
handlers and raw-bytes messages (no .proto, no generated code: the lab only
needs real gRPC framing over real HTTP/2, not a schema).

    grpc_lab.py serve HOST PORT LOG      serves lab.Shop/{GetItem,DeleteItem}
                                          (unary) and lab.Shop/ListItems
                                          (server streaming); prints ``ready``
    grpc_lab.py call TARGET METHOD TEXT  calls /lab.Shop/METHOD with TEXT;
                                          prints ``OK <reply>`` (exit 0) or
                                          ``ERROR <status code name>`` (exit 1);
                                          METHOD,METHOD...: one call after the
                                          other on one channel (connection), a
                                          line each, exit 1 if one failed

The server appends ``<method> <request text>`` to LOG for every call it
receives, so a test can tell that a call never reached it.
"""
from __future__ import annotations

import sys
import threading
from concurrent import futures

import grpc

SERVICE = "lab.Shop"
CALL_TIMEOUT_S = 10        # a blocked call must fail (reset), not hang the test
SERVER_THREADS = 4
STREAM_REPLIES = 3
# The lab has no proxy; never let an inherited http_proxy send the call elsewhere.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def serve(host: str, port: int, log_path: str) -> None:
    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()

    def note(method: str, request: bytes) -> None:
        with lock:
            log.write(f"{method} {request.decode('utf-8', 'replace')}\n")
            log.flush()

    def get_item(request: bytes, context) -> bytes:
        note("GetItem", request)
        return b"item:" + request

    def delete_item(request: bytes, context) -> bytes:
        note("DeleteItem", request)
        return b"deleted:" + request

    def list_items(request: bytes, context):
        note("ListItems", request)
        for i in range(STREAM_REPLIES):
            yield f"item{i}:".encode() + request

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "GetItem": grpc.unary_unary_rpc_method_handler(get_item),
        "DeleteItem": grpc.unary_unary_rpc_method_handler(delete_item),
        "ListItems": grpc.unary_stream_rpc_method_handler(list_items),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
    server.add_generic_rpc_handlers((handler,))
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not server.add_insecure_port(target):
        sys.exit(f"grpc_lab: cannot listen on {target}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target: str, methods: str, text: str) -> int:
    failed = 0
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        for method in methods.split(","):
            path = f"/{SERVICE}/{method}"
            try:
                if method == "ListItems":
                    replies = list(channel.unary_stream(path)(text.encode(), timeout=CALL_TIMEOUT_S))
                    reply = b"|".join(replies)
                else:
                    reply = channel.unary_unary(path)(text.encode(), timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as e:
                print(f"ERROR {e.code().name} {e.details()}", flush=True)
                failed = 1
                continue
            print(f"OK {reply.decode('utf-8', 'replace')}", flush=True)
    return failed


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "call":
        sys.exit(call(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit("usage: grpc_lab.py serve HOST PORT LOG | call TARGET METHOD TEXT")


if __name__ == "__main__":
    main()

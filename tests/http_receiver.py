"""A real HTTP receiver for tests: http.server in a thread on 127.0.0.1 that records every request
and answers with scripted statuses (e.g. 500, 500, then 200s), optionally after a delay. Given a
server-side TLS context it speaks HTTPS, and records the server name (SNI) each client asked for."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)  # answered in order; then `then`
    then: int = 200
    delay: float = 0.0
    requests: list[Request] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # TLS only
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, count: int, timeout: float = 10) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.requests)


@contextmanager
def http_receiver(
    *statuses: int, then: int = 200, delay: float = 0.0, tls: ssl.SSLContext | None = None
) -> Iterator[Receiver]:
    receiver = Receiver(url="", statuses=list(statuses), then=then, delay=delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.lock:
                receiver.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.then
            if receiver.delay:
                time.sleep(receiver.delay)
            reply = b"ok" if status < 400 else b"receiver says no"
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and went away: what a slow receiver is for

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    if tls is not None:

        def sni(sock, server_name, context):
            receiver.server_names.append(server_name)

        tls.sni_callback = sni
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    receiver.url = f"{'https' if tls else 'http'}://127.0.0.1:{receiver.port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()

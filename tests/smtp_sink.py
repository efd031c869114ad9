"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1, keeping every message it receives.

Needs aiosmtpd (requirements-dev.txt). Worker processes reach it as EMAIL_URL=smtp://127.0.0.1:<port>.
"""

from __future__ import annotations

import email
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, content_type: str) -> str:
        """The decoded body of the first part with this content type ("" when there is none)."""
        for part in self.message.walk():
            if part.get_content_type() == content_type and not part.is_multipart():
                return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
        return ""


class _Handler:
    def __init__(self):
        self.messages: list[Received] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        received = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            message=email.message_from_bytes(envelope.original_content or envelope.content),
        )
        with self.lock:
            self.messages.append(received)
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, handler: _Handler, port: int):
        self._handler = handler
        self.host = "127.0.0.1"
        self.port = port

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def messages(self) -> list[Received]:
        with self._handler.lock:
            return list(self._handler.messages)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """Wait (bounded) until at least `count` messages arrived; return all of them."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.messages


@contextmanager
def smtp_sink():
    from aiosmtpd.controller import Controller

    handler = _Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpSink(handler, port)
    finally:
        controller.stop()

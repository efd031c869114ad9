"""The exceptions this package raises: in strict mode, from reads, and for a misconfigured client."""

from __future__ import annotations

from collections.abc import Iterable


class MetricsClientError(Exception):
    """A call to the llmcost API failed, or events were lost (rejected, dropped, not sent in time).

    `status_code` is the server's HTTP status (None when no answer arrived), `errors` maps each
    offending field to the server's (or the client's) messages, `request_ids` names the events
    concerned.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        errors: dict[str, list[str]] | None = None,
        request_ids: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.errors: dict[str, list[str]] = dict(errors or {})
        self.request_ids = tuple(request_ids)

    def __str__(self) -> str:
        if not self.errors:
            return self.message
        details = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in self.errors.items())
        return f"{self.message} ({details})"


class MetricsValidationError(MetricsClientError):
    """An event, cache report or batch run had a field the client or the server refused."""

"""Transport errors: part of the agent's one error hierarchy (seafbackup_agent.errors)."""

from __future__ import annotations

from seafbackup_agent.errors import ExitCode, SeafBackupError


class TransportError(SeafBackupError):
    """Talking to the other agent failed."""

    exit_code = ExitCode.PEER_UNREACHABLE


class AuthenticationError(TransportError):
    """The other agent refused our signature (401): different sync_token, or clocks too far apart."""


class ResponseAuthenticationError(TransportError):
    """An answer failed its signature check: tampered with on the way, or not from an agent with our token."""


class UnreachableError(TransportError):
    """No answer from the other agent (connection refused, timeouts), after the retries."""


class TLSError(TransportError):
    """The HTTPS connection could not be established or its certificate is not trusted."""


class RemoteError(TransportError):
    """The other agent answered with an error status (5xx after the retries, or an unexpected 4xx)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ProtocolError(TransportError):
    """The answer does not follow the API (truncated list, bad framing, unexpected ids)."""


def failure_kind(exc: BaseException) -> str:
    """A short label of why talking to the other agent failed, for metrics and alerts."""
    for cls, kind in ((AuthenticationError, "authentication"), (TLSError, "tls"), (UnreachableError, "unreachable"),
                      (RemoteError, "remote"), (ProtocolError, "protocol")):
        if isinstance(exc, cls):
            return kind
    return "other"

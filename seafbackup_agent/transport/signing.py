"""Request authentication with the shared `sync_token`.

Every request carries an HMAC-SHA256 over its method, path and query, the SHA-256 of its body, a
timestamp and a random nonce. The token itself never crosses the wire: both sides derive the HMAC key
from it, and neither the token nor the key is kept in a form that a repr or a log line could show.

Canonical request (UTF-8, lines joined with "\\n"):

    seafbackup-v1
    <METHOD>
    <raw path and query, exactly as sent>
    <timestamp: unix seconds, decimal>
    <nonce: 32 lowercase hex>
    <sha256 of the body, lowercase hex>

Headers: `X-Seafbackup-Timestamp`, `X-Seafbackup-Nonce`, `X-Seafbackup-Signature` (lowercase hex).
The verifier accepts a timestamp within +-window seconds of its clock and each nonce once while it
could still be inside the window.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping

SCHEME = "seafbackup-v1"
TIMESTAMP_HEADER = "X-Seafbackup-Timestamp"
NONCE_HEADER = "X-Seafbackup-Nonce"
SIGNATURE_HEADER = "X-Seafbackup-Signature"
DEFAULT_WINDOW = 60.0
DEFAULT_MAX_NONCES = 100_000

_NONCE = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SignatureError(Exception):
    """A request failed authentication. `reason` is short, safe to send back and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayCacheFull(SignatureError):
    """More distinct requests inside one window than the replay cache can remember."""


def derive_key(token: str) -> bytes:
    """The HMAC key: bound to this protocol, so the token's bytes are never the key itself."""
    return hmac.new(token.encode("utf-8"), b"seafbackup transport request signing v1", hashlib.sha256).digest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256


def canonical_request(method: str, path_qs: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    return "\n".join((SCHEME, method.upper(), path_qs, timestamp, nonce, body_sha256)).encode("utf-8")


def compute_signature(key: bytes, method: str, path_qs: str, timestamp: str, nonce: str, body_sha256: str) -> str:
    message = canonical_request(method, path_qs, timestamp, nonce, body_sha256)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_headers(
    key: bytes, method: str, path_qs: str, body: bytes = b"", *, now: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The three headers that authenticate one request."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16) if nonce is None else nonce
    signature = compute_signature(key, method, path_qs, timestamp, nonce, body_digest(body))
    return {TIMESTAMP_HEADER: timestamp, NONCE_HEADER: nonce, SIGNATURE_HEADER: signature}


class RequestSigner:
    """Signs outgoing requests. Keeps only the derived key, and shows neither in its repr."""

    __slots__ = ("_key",)

    def __init__(self, token: str) -> None:
        self._key = derive_key(token)

    def __repr__(self) -> str:
        return "RequestSigner(<secret>)"

    def headers(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        return sign_headers(self._key, method, path_qs, body)


class RequestVerifier:
    """Checks incoming requests: signature (constant time), timestamp window, nonce replay.

    Nonces are remembered until their timestamp leaves the window, in a bounded cache; when the cache
    is full of live nonces the request is refused (`ReplayCacheFull`) rather than forgetting one early.
    Not thread-safe: use it from one event loop.
    """

    __slots__ = ("_clock", "_expiry", "_key", "_seen", "max_nonces", "window")

    def __init__(
        self,
        token: str,
        *,
        window: float = DEFAULT_WINDOW,
        max_nonces: int = DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = derive_key(token)
        self.window = window
        self.max_nonces = max_nonces
        self._clock = clock
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __repr__(self) -> str:
        return f"RequestVerifier(<secret>, window={self.window}, nonces={len(self._seen)})"

    def check_headers(self, headers: Mapping[str, str]) -> tuple[str, str, str]:
        """Cheap checks before the body is read: header syntax and the timestamp window."""
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        if not (timestamp and nonce and signature):
            raise SignatureError("missing signature headers")
        if not (_TIMESTAMP.fullmatch(timestamp) and _NONCE.fullmatch(nonce) and _SIGNATURE.fullmatch(signature)):
            raise SignatureError("malformed signature headers")
        if abs(self._clock() - int(timestamp)) > self.window:
            raise SignatureError("timestamp outside the allowed window (clocks differ?)")
        return timestamp, nonce, signature

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes = b"") -> None:
        """Raise `SignatureError` unless the request is authentic, fresh and not seen before."""
        timestamp, nonce, signature = self.check_headers(headers)
        expected = compute_signature(self._key, method, path_qs, timestamp, nonce, body_digest(body))
        if not hmac.compare_digest(expected, signature):
            raise SignatureError("signature mismatch")
        self._remember(nonce, int(timestamp) + self.window)

    def _remember(self, nonce: str, expires: float) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])
        if nonce in self._seen:
            raise SignatureError("replayed request (nonce already seen)")
        if len(self._seen) >= self.max_nonces:
            raise ReplayCacheFull("too many requests inside one window")
        self._seen.add(nonce)
        heapq.heappush(self._expiry, (expires, nonce))

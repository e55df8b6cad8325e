"""Requests and responses authenticated with the shared `sync_token`: RFC 9421 HTTP Message Signatures
(the `http-message-signatures` library), algorithm hmac-sha256, bodies covered by an RFC 9530
`Content-Digest` (sha-256).

The token itself never crosses the wire: both sides derive the HMAC key from it, and neither the token
nor the key is kept in a form that a repr or a log line could show.

Request (headers `Content-Digest`, `Signature-Input`, `Signature`, label "seafbackup"):
    covers "@method", "@request-target" (raw path and query, exactly as sent) and "content-digest";
    parameters created (unix seconds), nonce (32 lowercase hex), keyid "sync-token", alg, tag
    "seafbackup-request". The verifier accepts created within +-window seconds of its clock and not
    before this process started (see `RequestVerifier`), and each nonce once while it could still be
    inside the window.

Response (same headers, same label, tag "seafbackup-response"):
    covers "@status", "content-type", `X-Seafbackup-Diff-Complete` when present, "content-digest"
    when the body was known before the headers were sent, and the request it answers:
    "@method";req, "@request-target";req and "signature";req;key="seafbackup" -- the request's own
    signature, which covers its nonce, so a response is valid for that one request only. Streamed
    bodies (object packs, blocks) carry no digest: their objects are checked against their ids.
"""

from __future__ import annotations

import datetime
import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import http_sf
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)

LABEL = "seafbackup"
KEY_ID = "sync-token"
REQUEST_TAG = "seafbackup-request"
RESPONSE_TAG = "seafbackup-response"
SIGNATURE_HEADER = "Signature"
SIGNATURE_INPUT_HEADER = "Signature-Input"
DIGEST_HEADER = "Content-Digest"
DIFF_COMPLETE_HEADER = "X-Seafbackup-Diff-Complete"
"""On an fs-diff answer: "1" when it holds every object that differs (no limit hit, nothing unreadable)."""
DEFAULT_WINDOW = 60.0
DEFAULT_MAX_NONCES = 100_000

REQUEST_COMPONENTS = ("@method", "@request-target", "content-digest")
_RESPONSE_BINDING = ("@status", '"@method";req', '"@request-target";req', f'"signature";req;key="{LABEL}"')
_RESPONSE_FIELDS = ("content-type", DIFF_COMPLETE_HEADER.lower())
"""Response header fields covered whenever present."""
_ALGORITHM = algorithms.HMAC_SHA256
_NONCE = re.compile(r"[0-9a-f]{32}")
_MAX_INPUT = 1024
"""Longest Signature-Input accepted: ours is about 200 characters; anything much longer is not ours."""


class SignatureError(Exception):
    """A request failed authentication. `reason` is short, safe to send back and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ReplayCacheFull(SignatureError):
    """More distinct requests inside one window than the replay cache can remember."""


class SignedBeforeStart(SignatureError):
    """Signed before this process started: a capture could have been accepted by its predecessor."""


class ResponseSignatureError(Exception):
    """A response failed authentication (tampered on the way, or not from an agent with our token)."""


def derive_key(token: str) -> bytes:
    """The HMAC key: bound to this protocol, so the token's bytes are never the key itself."""
    return hmac.new(token.encode("utf-8"), b"seafbackup transport request signing v1", hashlib.sha256).digest()


# --- message views for the library: what it reads of a request or a response ----------------------------


class _Fields:
    """Header fields as the library wants them: every field line in order, writable when signing."""

    __slots__ = ("_lines", "_target")

    def __init__(self, lines: Callable[[], Iterable[tuple[str, str]]], target: MutableMapping[str, str] | None):
        self._lines = lines
        self._target = target

    def items(self) -> Iterable[tuple[str, str]]:
        return self._lines()

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._lines()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._lines())

    def __setitem__(self, name: str, value: str) -> None:
        if self._target is None:
            raise TypeError("read-only header view")
        self._target[name] = value

    def __delitem__(self, name: str) -> None:
        if self._target is None:
            raise TypeError("read-only header view")
        del self._target[name]


def _fields(headers: Mapping[str, str], *, writable: bool = False) -> _Fields:
    target = headers if writable and isinstance(headers, MutableMapping) else None
    return _Fields(lambda: list(headers.items()), target)


@dataclass
class _Request:
    method: str
    url: str
    headers: _Fields


@dataclass
class _Response:
    status_code: int
    headers: _Fields
    request: _Request


def _request_view(method: str, path_qs: str, headers: Mapping[str, str], *, writable: bool = False) -> _Request:
    # Only the target is covered, not the authority: a proxy or a different Host name changes nothing.
    return _Request(method.upper(), "http://peer" + path_qs, _fields(headers, writable=writable))


class _Verifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        """Freshness is checked by the caller, against its own clock and replay cache."""


def _signer(key: bytes) -> HTTPMessageSigner:
    return HTTPMessageSigner(signature_algorithm=_ALGORITHM,
                             key_resolver=MappingKeyResolver(public_keys={}, private_keys={KEY_ID: key}))


def _verifier(key: bytes) -> _Verifier:
    return _Verifier(signature_algorithm=_ALGORITHM,
                     key_resolver=MappingKeyResolver(public_keys={KEY_ID: key}, private_keys={}))


@dataclass(frozen=True, slots=True)
class SignatureParams:
    """What a request's Signature-Input says, checked for form before any cryptography."""

    created: int
    nonce: str
    components: tuple[str, ...]


def parse_signature_input(headers: Mapping[str, str]) -> SignatureParams:
    """Cheap checks of a request's signature headers: present, ours, well-formed. No HMAC yet."""
    sig_input = headers.get(SIGNATURE_INPUT_HEADER, "")
    if not sig_input or not headers.get(SIGNATURE_HEADER) or not headers.get(DIGEST_HEADER):
        raise SignatureError("missing signature headers")
    try:
        if len(sig_input) > _MAX_INPUT:
            raise ValueError("too long")
        members: Any = http_sf.parse(sig_input.encode("ascii"), tltype="dictionary")  # checked field by field below
        inner, params = members[LABEL]
        components = tuple(str(value) for value, item_params in inner if not item_params)
        created, nonce = params["created"], params["nonce"]
    except (ValueError, KeyError, TypeError, UnicodeEncodeError):
        raise SignatureError("malformed signature headers") from None
    if (
        len(members) != 1
        or type(created) is not int
        or not isinstance(nonce, str)
        or not _NONCE.fullmatch(nonce)
        or params.get("keyid") != KEY_ID
        or params.get("tag") != REQUEST_TAG
        or params.get("alg", _ALGORITHM.algorithm_id) != _ALGORITHM.algorithm_id
        or components != REQUEST_COMPONENTS
    ):
        raise SignatureError("malformed signature headers")
    return SignatureParams(created, nonce, components)


def sign_headers(
    key: bytes, method: str, path_qs: str, body: bytes = b"", *, now: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The three headers that authenticate one request (Content-Digest, Signature-Input, Signature)."""
    headers: dict[str, str] = {}
    created = datetime.datetime.fromtimestamp(int(time.time() if now is None else now), tz=datetime.UTC)
    _signer(key).sign(
        _request_view(method, path_qs, headers, writable=True),
        key_id=KEY_ID, created=created, nonce=secrets.token_hex(16) if nonce is None else nonce, label=LABEL,
        tag=REQUEST_TAG, covered_component_ids=REQUEST_COMPONENTS[:2], body=body,
    )
    return headers


class RequestSigner:
    """The client's side: signs requests and verifies the responses to them. Keeps only the derived key,
    and shows neither in its repr."""

    __slots__ = ("_key", "_verifier")

    def __init__(self, token: str) -> None:
        self._key = derive_key(token)
        self._verifier = _verifier(self._key)

    def __repr__(self) -> str:
        return "RequestSigner(<secret>)"

    def headers(self, method: str, path_qs: str, body: bytes = b"") -> dict[str, str]:
        return sign_headers(self._key, method, path_qs, body)

    def verify_response(
        self,
        method: str,
        path_qs: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: Mapping[str, str],
        body: bytes | None,
        *,
        require: Iterable[str] = (),
    ) -> None:
        """Raise `ResponseSignatureError` unless this response was signed with our key for exactly this
        request. `body`: the whole body, which must then match the signed digest; None for a streamed
        body whose content the caller checks by other means. `require`: header fields that must be
        covered (e.g. a header the caller acts on)."""
        request = _request_view(method, path_qs, request_headers)
        message = _Response(status, _fields(headers), request)
        required = [*_RESPONSE_BINDING, *(name.lower() for name in require)]
        try:
            results = self._verifier.verify(message, max_age=None, expect_tag=RESPONSE_TAG,
                                            require_components=required)
            if body is not None:
                self._verifier.verify_body(message, results, body)
        except (InvalidSignature, HTTPMessageSignaturesException) as exc:
            raise ResponseSignatureError(str(exc) or "signature mismatch") from None


class RequestVerifier:
    """The server's side: checks incoming requests and signs the responses to them.

    A request passes when its signature (constant time) verifies, its `created` is within the window,
    it was signed after this process started, and its nonce was never seen. Nonces are remembered
    until their timestamp leaves the window, in a bounded cache; when the cache is full of live nonces
    the request is refused (`ReplayCacheFull`) rather than forgetting one early.

    Why "not before this process started" and no cache on disk: the replay cache lives in memory, so
    a request captured before a restart would pass again afterwards. Refusing anything signed in or
    before the second this verifier was made closes that hole with no state to keep, no write per
    request, and nothing to go wrong after a crash; the price is that requests signed in that second
    (or by a client whose clock is behind) are refused with `SignedBeforeStart`, which the server
    answers with 503 so that clients sign again and retry.
    Not thread-safe: use it from one event loop.
    """

    __slots__ = ("_clock", "_expiry", "_key", "_seen", "_signer", "_verifier", "max_nonces", "not_before", "window")

    def __init__(
        self,
        token: str,
        *,
        window: float = DEFAULT_WINDOW,
        max_nonces: int = DEFAULT_MAX_NONCES,
        clock: Callable[[], float] = time.time,
        started: float | None = None,
    ) -> None:
        self._key = derive_key(token)
        self._signer = _signer(self._key)
        self._verifier = _verifier(self._key)
        self.window = window
        self.max_nonces = max_nonces
        self._clock = clock
        self.not_before = int(clock() if started is None else started) + 1
        """First `created` second accepted: later than anything a predecessor could have seen."""
        self._seen: set[str] = set()
        self._expiry: list[tuple[float, str]] = []

    def __repr__(self) -> str:
        return f"RequestVerifier(<secret>, window={self.window}, nonces={len(self._seen)})"

    def verify_headers(self, method: str, path_qs: str, headers: Mapping[str, str]) -> None:
        """Everything but the body, before the body is read: form, time window, signature over the
        headers (which covers the body's digest), start of this process, replay. A request that passes
        has its nonce remembered; its body must then pass `verify_body`."""
        params = parse_signature_input(headers)
        now = self._clock()
        if abs(now - params.created) > self.window:
            raise SignatureError("timestamp outside the allowed window (clocks differ?)")
        try:
            self._verifier.verify(_request_view(method, path_qs, headers), max_age=None, expect_tag=REQUEST_TAG,
                                  require_components=REQUEST_COMPONENTS)
        except (InvalidSignature, HTTPMessageSignaturesException):
            raise SignatureError("signature mismatch") from None
        if params.created < self.not_before:
            raise SignedBeforeStart("request signed before this agent started (sign it again)")
        self._remember(params.nonce, params.created + self.window)

    def verify_body(self, headers: Mapping[str, str], body: bytes) -> None:
        """The body matches the digest the (already verified) signature covers."""
        try:
            ContentDigest.verify(headers.get(DIGEST_HEADER, ""), body)
        except (InvalidSignature, HTTPMessageSignaturesException, ValueError):
            raise SignatureError("signature mismatch") from None

    def verify(self, method: str, path_qs: str, headers: Mapping[str, str], body: bytes = b"") -> None:
        """Raise `SignatureError` unless the request is authentic, fresh and not seen before."""
        self.verify_headers(method, path_qs, headers)
        self.verify_body(headers, body)

    def sign_response(
        self,
        method: str,
        path_qs: str,
        request_headers: Mapping[str, str],
        status: int,
        headers: MutableMapping[str, str],
        body: bytes | None,
    ) -> None:
        """Add the response's signature to `headers` (see the module's doc); `body` None when streamed."""
        fields = _fields(headers, writable=True)
        covered = ["@status", *(name for name in _RESPONSE_FIELDS if name in fields), *_RESPONSE_BINDING[1:]]
        message = _Response(status, fields, _request_view(method, path_qs, request_headers))
        options: dict[str, Any] = {"body": body} if body is not None else {}
        self._signer.sign(message, key_id=KEY_ID, label=LABEL, tag=RESPONSE_TAG, covered_component_ids=covered,
                          **options)

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

"""Requests and responses authenticated with the shared `sync_token`: RFC 9421 HTTP Message Signatures,
algorithm hmac-sha256, bodies covered by an RFC 9530 `Content-Digest` (sha-256). The signature bases of
our fixed component sets are built here (see "signature bases" below); the `http-message-signatures`
library checks Content-Digest fields and is the reference the tests compare every signature with.

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

import base64
import hashlib
import heapq
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import http_sf
from http_message_signatures import ContentDigest, HTTPMessageSignaturesException, InvalidSignature

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
_RESPONSE_BINDING = ('"@status"', '"@method";req', '"@request-target";req', f'"signature";req;key="{LABEL}"')
_RESPONSE_FIELDS = ("content-type", DIFF_COMPLETE_HEADER.lower())
"""Response header fields covered whenever present."""
_ALGORITHM_ID = "hmac-sha256"
_REQUEST_COMPONENTS_TEXT = tuple(f'"{name}"' for name in REQUEST_COMPONENTS)
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


# --- signature bases (RFC 9421 section 2.5), built directly ------------------------------------------
#
# Our messages cover a fixed set of components, so each base is a few formatted lines and one HMAC. The
# generic library took 0.25-0.5 ms of CPU per signature or check (component resolvers, structured field
# objects), four per request, on both agents' event loops and on every sync's critical path. The bytes on
# the wire are the same: tests/unit/test_signing_interop.py checks both directions against the library.


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _content_digest(body: bytes) -> str:
    return f"sha-256=:{_b64(hashlib.sha256(body).digest())}:"


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """A header field's value as RFC 9421 covers it: its field lines, trimmed, joined by ", "; None if absent."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        lines = getall(name, None)
    else:
        lower = name.lower()
        lines = [value for key, value in headers.items() if key.lower() == lower] or None
    return None if lines is None else ", ".join(line.strip() for line in lines)


_SIGNATURE_VALUE = re.compile(rf"{LABEL}=:([A-Za-z0-9+/]*={{0,2}}):")
_FIELD_COMPONENT = re.compile(r'"[a-z0-9-]+"')


def _signature_bytes(value: str | None) -> bytes:
    """The signature of our label in a Signature field (exactly one member, as our peers send it)."""
    match = _SIGNATURE_VALUE.fullmatch(value.strip()) if value else None
    if match is None:
        raise ValueError("not a seafbackup signature")
    return base64.b64decode(match.group(1), validate=True)


def _params_text(signature_input: str) -> str:
    """The serialized inner list and parameters of our label: the "@signature-params" value as signed."""
    value = signature_input.strip()
    if not value.startswith(f"{LABEL}=("):
        raise ValueError("not a seafbackup signature input")
    return value[len(LABEL) + 1 :]


def _hmac(key: bytes, lines: list[str], params: str) -> bytes:
    base = "\n".join([*lines, f'"@signature-params": {params}'])
    return hmac.digest(key, base.encode("utf-8"), "sha256")


def _params(components: Iterable[str], created: int, *, nonce: str | None, tag: str) -> str:
    nonce_param = f';nonce="{nonce}"' if nonce is not None else ""
    return (f'({" ".join(components)});created={created};keyid="{KEY_ID}";alg="{_ALGORITHM_ID}"'
            f'{nonce_param};tag="{tag}"')


def _request_lines(method: str, path_qs: str, digest: str) -> list[str]:
    return [f'"@method": {method.upper()}', f'"@request-target": {path_qs}', f'"content-digest": {digest}']


def _component_id(name: object, params: Mapping[str, Any]) -> str:
    """A covered component's identifier as serialized (only the forms our answers use)."""
    if not isinstance(name, str):
        raise ValueError("a component name must be a string")
    text = f'"{name}"'
    for key, value in params.items():
        if value is True:
            text += f";{key}"
        elif key == "key" and value == LABEL:
            text += f';{key}="{value}"'
        else:
            raise ValueError(f"unsupported component parameter {key}")
    return text


def _response_lines(components: Iterable[str], status: int, headers: Mapping[str, str], method: str, path_qs: str,
                    request_signature: str) -> list[str]:
    """The base lines of an answer's covered components (serialized identifiers, in order)."""
    request_values = {
        '"@method";req': method.upper(),
        '"@request-target";req': path_qs,
        f'"signature";req;key="{LABEL}"': request_signature,
    }
    lines = []
    for component in components:
        value: str | None
        if component == '"@status"':
            value = str(status)
        elif component in request_values:
            value = request_values[component]
        elif _FIELD_COMPONENT.fullmatch(component):
            value = _field(headers, component[1:-1])
        else:
            raise ValueError(f"unsupported component {component}")
        if value is None:
            raise ValueError(f"covered component {component} is absent")
        lines.append(f"{component}: {value}")
    return lines


def _request_signature(request_headers: Mapping[str, str]) -> str:
    """The request's signature as an answer covers it ("signature";req;key=...): its member, serialized."""
    return f":{_b64(_signature_bytes(_field(request_headers, SIGNATURE_HEADER)))}:"


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
        members: Any = http_sf.parse(sig_input.encode("ascii"), tltype="dictionary")
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
        or params.get("alg", _ALGORITHM_ID) != _ALGORITHM_ID
        or components != REQUEST_COMPONENTS
    ):
        raise SignatureError("malformed signature headers")
    return SignatureParams(created, nonce, components)


def sign_headers(
    key: bytes, method: str, path_qs: str, body: bytes = b"", *, now: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The three headers that authenticate one request (Content-Digest, Signature-Input, Signature)."""
    created = int(time.time() if now is None else now)
    digest = _content_digest(body)
    params = _params(_REQUEST_COMPONENTS_TEXT, created, nonce=secrets.token_hex(16) if nonce is None else nonce,
                     tag=REQUEST_TAG)
    signature = _hmac(key, _request_lines(method, path_qs, digest), params)
    return {DIGEST_HEADER: digest, SIGNATURE_INPUT_HEADER: f"{LABEL}={params}",
            SIGNATURE_HEADER: f"{LABEL}=:{_b64(signature)}:"}


class RequestSigner:
    """The client's side: signs requests and verifies the responses to them. Keeps only the derived key,
    and shows neither in its repr."""

    __slots__ = ("_key",)

    def __init__(self, token: str) -> None:
        self._key = derive_key(token)

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
        required = {*_RESPONSE_BINDING, *(f'"{name.lower()}"' for name in require)}
        if body is not None:
            required.add(f'"{DIGEST_HEADER.lower()}"')
        try:
            signature_input = _field(headers, SIGNATURE_INPUT_HEADER) or ""
            members: Any = http_sf.parse(signature_input.encode("ascii"), tltype="dictionary")
            inner, params = members[LABEL]
            components = [_component_id(name, item_params) for name, item_params in inner]
            if len(members) != 1 or params.get("tag") != RESPONSE_TAG or params.get("keyid") != KEY_ID \
                    or params.get("alg", _ALGORITHM_ID) != _ALGORITHM_ID:
                raise ValueError("not a seafbackup answer signature")
            missing = required - set(components)
            if missing:
                raise ValueError(f"required components not covered: {', '.join(sorted(missing))}")
            lines = _response_lines(components, status, headers, method, path_qs, _request_signature(request_headers))
            expected = _hmac(self._key, lines, _params_text(signature_input))
            if not hmac.compare_digest(expected, _signature_bytes(_field(headers, SIGNATURE_HEADER))):
                raise ValueError("signature mismatch")
            if body is not None:
                ContentDigest.verify(_field(headers, DIGEST_HEADER) or "", body)
        except (ValueError, KeyError, TypeError, UnicodeEncodeError, InvalidSignature,
                HTTPMessageSignaturesException) as exc:
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

    __slots__ = ("_clock", "_expiry", "_key", "_seen", "max_nonces", "not_before", "window")

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
            lines = _request_lines(method, path_qs, _field(headers, DIGEST_HEADER) or "")
            expected = _hmac(self._key, lines, _params_text(_field(headers, SIGNATURE_INPUT_HEADER) or ""))
            if not hmac.compare_digest(expected, _signature_bytes(_field(headers, SIGNATURE_HEADER))):
                raise ValueError("signature mismatch")
        except ValueError:
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
        fields = [f'"{name}"' for name in _RESPONSE_FIELDS if _field(headers, name) is not None]
        digest = []
        if body is not None:
            headers[DIGEST_HEADER] = _content_digest(body)
            digest = [f'"{DIGEST_HEADER.lower()}"']
        components = [_RESPONSE_BINDING[0], *fields, *_RESPONSE_BINDING[1:], *digest]
        params = _params(components, int(self._clock()), nonce=None, tag=RESPONSE_TAG)
        lines = _response_lines(components, status, headers, method, path_qs, _request_signature(request_headers))
        headers[SIGNATURE_INPUT_HEADER] = f"{LABEL}={params}"
        headers[SIGNATURE_HEADER] = f"{LABEL}=:{_b64(_hmac(self._key, lines, params))}:"

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

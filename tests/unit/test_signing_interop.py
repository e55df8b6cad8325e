"""The agents build and check RFC 9421 signatures themselves (signing.py: a fixed set of components, one
HMAC each); the `http-message-signatures` library, a general implementation, is the reference: the same
inputs give the same bytes on the wire, and each side accepts what the other signs."""

import datetime

import pytest
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    InvalidSignature,
    MappingKeyResolver,
    algorithms,
)

from seafbackup_agent.transport.signing import (
    KEY_ID,
    LABEL,
    REQUEST_TAG,
    RESPONSE_TAG,
    RequestSigner,
    RequestVerifier,
    ResponseSignatureError,
    derive_key,
    sign_headers,
)

TOKEN = "0123456789abcdef0123456789abcdef01234567"
KEY = derive_key(TOKEN)
NONCE = "0f" * 16
CREATED = 1_800_000_000
PATH = "/v1/stores/96e09ca5-5454-4dfa-9d9e-461eb3e38930/fs?x=1"
BINDING = ('"@method";req', '"@request-target";req', f'"signature";req;key="{LABEL}"')


class _Fields(dict):
    """Header fields as the library reads and writes them (a dict keeps insertion order)."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(key.lower() == name.lower() for key in self)


class _Request:
    def __init__(self, method: str, path_qs: str, headers: dict) -> None:
        self.method, self.url, self.headers = method, "http://peer" + path_qs, _Fields(headers)


class _Response:
    def __init__(self, status: int, headers: dict, request: _Request) -> None:
        self.status_code, self.headers, self.request = status, _Fields(headers), request


class _Verifier(HTTPMessageVerifier):
    def validate_created_and_expires(self, sig_input, max_age=None):
        """Freshness is not what this test is about."""


def _library_signer() -> HTTPMessageSigner:
    return HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                             key_resolver=MappingKeyResolver(public_keys={}, private_keys={KEY_ID: KEY}))


def _library_verifier() -> _Verifier:
    return _Verifier(signature_algorithm=algorithms.HMAC_SHA256,
                     key_resolver=MappingKeyResolver(public_keys={KEY_ID: KEY}, private_keys={}))


def _created() -> datetime.datetime:
    return datetime.datetime.fromtimestamp(CREATED, tz=datetime.UTC)


@pytest.mark.parametrize(("method", "body"), [("POST", b'["eefcf102112ad94e21f85c007cfd761e2de85c37"]'),
                                               ("GET", b"")])
def test_a_request_is_signed_as_the_library_signs_it(method, body):
    ours = sign_headers(KEY, method, PATH, body, now=CREATED, nonce=NONCE)
    request = _Request(method, PATH, {})
    _library_signer().sign(request, key_id=KEY_ID, created=_created(), nonce=NONCE, label=LABEL, tag=REQUEST_TAG,
                           covered_component_ids=("@method", "@request-target"), body=body)
    assert ours == dict(request.headers)
    _library_verifier().verify(_Request(method, PATH, ours), max_age=None, expect_tag=REQUEST_TAG,
                               require_components=("@method", "@request-target", "content-digest"))
    with pytest.raises(InvalidSignature):
        _library_verifier().verify(_Request(method, PATH + "&y", ours), max_age=None, expect_tag=REQUEST_TAG)


@pytest.mark.parametrize(("headers", "body"), [
    ({"Content-Type": "application/json; charset=utf-8"}, b'{"status": "ok"}'),
    ({"Content-Type": "application/octet-stream", "X-Seafbackup-Diff-Complete": "1"}, b"frames"),
    ({"Content-Type": "application/octet-stream"}, None),  # streamed: no digest
])
def test_an_answer_is_signed_as_the_library_signs_it_and_each_accepts_the_other(headers, body):
    request = sign_headers(KEY, "POST", PATH, b"[]", now=CREATED, nonce=NONCE)
    ours = dict(headers)
    RequestVerifier(TOKEN, clock=lambda: CREATED).sign_response("POST", PATH, request, 200, ours, body)

    theirs = _Response(200, dict(headers), _Request("POST", PATH, request))
    fields = [name.lower() for name in ("Content-Type", "X-Seafbackup-Diff-Complete") if name in headers]
    _library_signer().sign(theirs, key_id=KEY_ID, created=_created(), label=LABEL, tag=RESPONSE_TAG,
                           covered_component_ids=["@status", *fields, *BINDING],
                           **({"body": body} if body is not None else {}))
    assert ours == dict(theirs.headers)

    verified = _library_verifier().verify(_Response(200, ours, _Request("POST", PATH, request)), max_age=None,
                                          expect_tag=RESPONSE_TAG, require_components=("@status", *BINDING))
    assert verified
    RequestSigner(TOKEN).verify_response("POST", PATH, request, 200, dict(theirs.headers), body)
    with pytest.raises(ResponseSignatureError):
        RequestSigner(TOKEN).verify_response("POST", PATH, request, 201, dict(theirs.headers), body)

"""Request signing (RFC 9421): only a request signed with the same token, fresh, signed after the verifier
started and never seen, is accepted; a response verifies only for the request it answers."""

import re
import time

import pytest

from seafbackup_agent.transport.signing import (
    DIGEST_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_INPUT_HEADER,
    ReplayCacheFull,
    RequestSigner,
    RequestVerifier,
    ResponseSignatureError,
    SignatureError,
    SignedBeforeStart,
    derive_key,
    sign_headers,
)

TOKEN = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
PATH = "/v1/stores/96e09ca5-5454-4dfa-9d9e-461eb3e38930/fs"
BODY = b'["eefcf102112ad94e21f85c007cfd761e2de85c37"]'


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _verifier(clock: Clock, **kwargs) -> RequestVerifier:
    kwargs.setdefault("started", clock() - 3600)  # an agent that has been up for an hour
    return RequestVerifier(TOKEN, clock=clock, **kwargs)


def _with_param(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    """The same headers with one parameter of Signature-Input changed (the signature left as it was)."""
    changed = re.sub(rf";{name}=[^;]*", f";{name}={value}", headers[SIGNATURE_INPUT_HEADER])
    assert changed != headers[SIGNATURE_INPUT_HEADER]
    return dict(headers, **{SIGNATURE_INPUT_HEADER: changed})


def _signed(clock: Clock, token: str = TOKEN, method: str = "POST", path: str = PATH, body: bytes = BODY, **kw):
    return sign_headers(derive_key(token), method, path, body, now=clock(), **kw)


def _reason(verifier: RequestVerifier, headers, method="POST", path=PATH, body=BODY) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.verify(method, path, headers, body)
    return info.value.reason


def test_a_signed_request_is_accepted_once():
    clock = Clock()
    verifier = _verifier(clock)
    headers = _signed(clock)
    verifier.verify("POST", PATH, headers, BODY)
    assert "replayed" in _reason(verifier, headers)


def test_signer_headers_verify():
    clock = Clock(time.time())
    headers = RequestSigner(TOKEN).headers("GET", "/v1/libraries")
    assert set(headers) == {DIGEST_HEADER, SIGNATURE_INPUT_HEADER, SIGNATURE_HEADER}
    _verifier(clock).verify("GET", "/v1/libraries", headers, b"")


def test_wrong_token_is_rejected():
    clock = Clock()
    assert _reason(_verifier(clock), _signed(clock, token=OTHER)) == "signature mismatch"


def test_forged_signature_is_rejected():
    clock = Clock()
    headers = _signed(clock)
    forged = dict(headers, **{SIGNATURE_HEADER: "seafbackup=:" + "A" * 43 + "=:"})
    assert _reason(_verifier(clock), forged) == "signature mismatch"
    value = headers[SIGNATURE_HEADER]
    flipped = dict(headers, **{SIGNATURE_HEADER: value[:12] + value[12:-2][::-1] + value[-2:]})
    assert _reason(_verifier(clock), flipped) == "signature mismatch"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", PATH, BODY),  # method changed
        ("POST", PATH.replace("96e0", "96e1"), BODY),  # path changed
        ("POST", PATH + "?x=1", BODY),  # query added
        ("POST", PATH, BODY.replace(b"ee", b"ff", 1)),  # body tampered
        ("POST", PATH, b""),  # body dropped
    ],
)
def test_tampered_request_is_rejected(method, path, body):
    clock = Clock()
    assert _reason(_verifier(clock), _signed(clock), method, path, body) == "signature mismatch"


def test_changed_timestamp_or_nonce_breaks_the_signature():
    clock = Clock()
    headers = _signed(clock)
    later = _with_param(headers, "created", str(int(clock()) + 1))
    assert _reason(_verifier(clock), later) == "signature mismatch"
    other_nonce = _with_param(headers, "nonce", '"' + "a" * 32 + '"')
    assert _reason(_verifier(clock), other_nonce) == "signature mismatch"
    other_digest = dict(headers, **{DIGEST_HEADER: sign_headers(derive_key(TOKEN), "POST", PATH, b"x")[DIGEST_HEADER]})
    assert _reason(_verifier(clock), other_digest) == "signature mismatch"


@pytest.mark.parametrize("skew", [-61, 61, -3600, 10**6])
def test_timestamps_outside_the_window_are_rejected(skew):
    clock = Clock()
    headers = _signed(Clock(clock() + skew))
    assert "window" in _reason(_verifier(clock), headers)


def test_the_window_is_configurable():
    clock = Clock()
    headers = _signed(Clock(clock() - 100))
    _verifier(clock, window=120).verify("POST", PATH, headers, BODY)
    assert "window" in _reason(_verifier(clock, window=5), _signed(Clock(clock() - 6)))


@pytest.mark.parametrize(
    "change",
    [
        {DIGEST_HEADER: None},
        {SIGNATURE_INPUT_HEADER: None},
        {SIGNATURE_HEADER: None},
        {"created": "1.5"},
        {"created": '"1800000000"'},
        {"nonce": '"XYZ"'},
        {"nonce": '"' + "A" * 32 + '"'},
        {"keyid": '"other"'},
        {"tag": '"seafbackup-response"'},
        {"alg": '"ed25519"'},
        {SIGNATURE_INPUT_HEADER: "not a structured field ((("},
        {SIGNATURE_INPUT_HEADER: 'seafbackup=("@method");created=1800000000;nonce="' + "a" * 32 + '"'},
    ],
)
def test_missing_or_malformed_headers_are_rejected(change):
    clock = Clock()
    headers = _signed(clock)
    for name, value in change.items():
        if value is None:
            del headers[name]
        elif name in headers:
            headers[name] = value
        else:
            headers = _with_param(headers, name, value)
    assert _reason(_verifier(clock), headers) in {"missing signature headers", "malformed signature headers"}


def test_a_request_signed_before_the_verifier_started_is_refused():
    """A capture replayed at a restarted agent: its in-memory nonce cache is empty, the start time is not."""
    clock = Clock()
    captured = _signed(clock)
    _verifier(clock).verify("POST", PATH, captured, BODY)  # the agent before its restart
    clock.now += 7
    restarted = RequestVerifier(TOKEN, clock=clock)
    with pytest.raises(SignedBeforeStart, match="signed before this agent started"):
        restarted.verify("POST", PATH, captured, BODY)
    with pytest.raises(SignedBeforeStart):  # even one signed in the second it started
        restarted.verify("POST", PATH, _signed(clock), BODY)
    clock.now += 1
    restarted.verify("POST", PATH, _signed(clock), BODY)
    assert _reason(restarted, _signed(clock, token=OTHER)) == "signature mismatch"  # a wrong token says so first


def test_a_response_verifies_only_for_its_request_and_unchanged():
    clock = Clock(time.time())
    verifier, signer = _verifier(clock), RequestSigner(TOKEN)
    request = signer.headers("GET", "/v1/libraries")
    other_request = signer.headers("GET", "/v1/libraries")
    body = b"96e09ca5-5454-4dfa-9d9e-461eb3e38930 " + b"a" * 40 + b"\nend 1\n"
    response = {"Content-Type": "text/plain", "X-Seafbackup-Diff-Complete": "1"}
    verifier.sign_response("GET", "/v1/libraries", request, 200, response, body)
    signer.verify_response("GET", "/v1/libraries", request, 200, response, body,
                           require=("X-Seafbackup-Diff-Complete",))
    flipped = body.replace(b"a" * 40, b"b" * 40)
    for args in [
        ("GET", "/v1/libraries", request, 200, response, flipped),  # body changed
        ("GET", "/v1/libraries", request, 404, response, body),  # status changed
        ("GET", "/v1/libraries", other_request, 200, response, body),  # answer to another request
        ("GET", "/v1/libraries?x", request, 200, response, body),  # another target
        ("GET", "/v1/libraries", request, 200, dict(response, **{"X-Seafbackup-Diff-Complete": "0"}), body),
        ("GET", "/v1/libraries", request, 200, {"Content-Type": "text/plain"}, body),  # no signature at all
    ]:
        with pytest.raises(ResponseSignatureError):
            signer.verify_response(*args)
    with pytest.raises(ResponseSignatureError):
        RequestSigner(OTHER).verify_response("GET", "/v1/libraries", request, 200, response, body)
    streamed = {"Content-Type": "application/octet-stream"}
    verifier.sign_response("GET", "/v1/libraries", request, 200, streamed, None)
    signer.verify_response("GET", "/v1/libraries", request, 200, streamed, None)
    with pytest.raises(ResponseSignatureError):  # a digest was promised by the caller, none was signed
        signer.verify_response("GET", "/v1/libraries", request, 200, streamed, b"data")


def test_nonces_are_forgotten_only_after_their_window_and_the_cache_is_bounded():
    clock = Clock()
    verifier = _verifier(clock, window=60, max_nonces=3)
    first = _signed(clock)
    verifier.verify("POST", PATH, first, BODY)
    for _ in range(2):
        verifier.verify("POST", PATH, _signed(clock), BODY)
    with pytest.raises(ReplayCacheFull):
        verifier.verify("POST", PATH, _signed(clock), BODY)
    clock.now += 61  # every nonce has left the window: the cache empties, the old request is stale
    assert "window" in _reason(verifier, first)
    verifier.verify("POST", PATH, _signed(clock), BODY)


def test_a_replay_just_inside_the_window_is_still_caught():
    clock = Clock()
    verifier = _verifier(clock, window=60)
    headers = _signed(clock)
    verifier.verify("POST", PATH, headers, BODY)
    clock.now += 60
    assert "replayed" in _reason(verifier, headers)


def test_the_token_is_in_no_repr_and_not_the_key():
    signer, verifier = RequestSigner(TOKEN), RequestVerifier(TOKEN)
    for obj in (signer, verifier):
        assert TOKEN not in repr(obj) and derive_key(TOKEN).hex() not in repr(obj)
    assert TOKEN.encode() not in derive_key(TOKEN)
    headers = signer.headers("GET", "/v1/libraries")
    assert all(TOKEN not in v for v in headers.values())

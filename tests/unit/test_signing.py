"""Request signing: only a request signed with the same token, fresh and never seen, is accepted."""

import time

import pytest

from seafbackup_agent.transport.signing import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayCacheFull,
    RequestSigner,
    RequestVerifier,
    SignatureError,
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
    return RequestVerifier(TOKEN, clock=clock, **kwargs)


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
    assert set(headers) == {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER}
    _verifier(clock).verify("GET", "/v1/libraries", headers, b"")


def test_wrong_token_is_rejected():
    clock = Clock()
    assert _reason(_verifier(clock), _signed(clock, token=OTHER)) == "signature mismatch"


def test_forged_signature_is_rejected():
    clock = Clock()
    headers = _signed(clock)
    forged = dict(headers, **{SIGNATURE_HEADER: "0" * 64})
    assert _reason(_verifier(clock), forged) == "signature mismatch"
    flipped = dict(headers, **{SIGNATURE_HEADER: headers[SIGNATURE_HEADER][::-1]})
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
    later = dict(headers, **{TIMESTAMP_HEADER: str(int(clock()) + 1)})
    assert _reason(_verifier(clock), later) == "signature mismatch"
    other_nonce = dict(headers, **{NONCE_HEADER: "a" * 32})
    assert _reason(_verifier(clock), other_nonce) == "signature mismatch"


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
        {TIMESTAMP_HEADER: None},
        {NONCE_HEADER: None},
        {SIGNATURE_HEADER: None},
        {TIMESTAMP_HEADER: "1.5e9"},
        {TIMESTAMP_HEADER: "-1"},
        {NONCE_HEADER: "XYZ"},
        {NONCE_HEADER: "A" * 32},
        {SIGNATURE_HEADER: "g" * 64},
        {SIGNATURE_HEADER: "0" * 63},
    ],
)
def test_missing_or_malformed_headers_are_rejected(change):
    clock = Clock()
    headers = _signed(clock)
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    assert _reason(_verifier(clock), headers) in {"missing signature headers", "malformed signature headers"}


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

"""The agent signs its S3 object requests itself (objectstore/s3_bucket.py): the same signatures as botocore's own
signers for the same request at the same instant, SigV4 and SigV2 (radosgw checks them in tests/objectstore)."""

from __future__ import annotations

import datetime
import email.utils

import botocore.auth
import pytest
from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from seafbackup_agent.objectstore.backend_conf import S3Backend
from seafbackup_agent.objectstore.s3_bucket import S3Bucket

KEY_ID, SECRET = "AKIDEXAMPLE0123456789", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime.datetime(2026, 12, 2, 5, 30, 7, tzinfo=datetime.UTC)
KEY = "0f6e5a7c-2b3d-4e1f-9a8b-7c6d5e4f3a2b/" + "ab" * 20


@pytest.mark.parametrize("method, body", [("PUT", b"x" * 2048), ("GET", b""), ("HEAD", b""), ("PUT", b"")])
@pytest.mark.parametrize("conf", [
    S3Backend("backup-blocks", KEY_ID, SECRET, host="127.0.0.71", port=7480, path_style_request=True,
              use_v4_signature=True),
    S3Backend("backup-blocks", KEY_ID, SECRET, host="s3.example.com", use_https=True, use_v4_signature=True,
              aws_region="eu-central-1"),
    S3Backend("backup-blocks", KEY_ID, SECRET, aws_region="eu-west-1"),  # AWS itself
], ids=["radosgw", "https", "aws"])
def test_sigv4_as_botocore_signs_it(conf, method, body, monkeypatch):
    bucket = S3Bucket(conf)
    assert bucket._signer is not None
    url, headers = bucket._signer.sign(method, KEY, body, now=NOW)
    request = AWSRequest(method=method, url=url, data=body)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)  # the same instant
    S3SigV4Auth(Credentials(KEY_ID, SECRET), "s3", bucket._signer.region).add_auth(request)
    assert headers["Authorization"] == request.headers["Authorization"]
    assert headers["x-amz-date"] == request.headers["X-Amz-Date"]


@pytest.mark.parametrize("method, body", [("PUT", b"x" * 2048), ("GET", b"")])
def test_sigv2_as_botocore_signs_it(method, body, monkeypatch):
    conf = S3Backend("backup-blocks", KEY_ID, SECRET, host="127.0.0.71", port=7480, path_style_request=True)
    bucket = S3Bucket(conf)
    assert bucket._signer is not None and not bucket._signer.sigv4
    url, headers = bucket._signer.sign(method, KEY, body, now=NOW)
    request = AWSRequest(method=method, url=url, data=body)
    monkeypatch.setattr(HmacV1Auth, "_get_date", lambda _self: email.utils.format_datetime(NOW, usegmt=True))
    HmacV1Auth(Credentials(KEY_ID, SECRET)).add_auth(request)
    assert headers["Authorization"] == request.headers["Authorization"]
    assert url == f"http://127.0.0.71:7480/backup-blocks/{KEY}"


def test_urls_are_the_clients_own_or_the_buckets_regional_endpoint():
    def base(**kw) -> str:
        signer = S3Bucket(S3Backend("backup-blocks", KEY_ID, SECRET, **kw))._signer
        assert signer is not None
        return signer.base

    assert base(host="127.0.0.71", port=7480, path_style_request=True) == "http://127.0.0.71:7480/backup-blocks/"
    assert base(aws_region="eu-west-1") == "https://backup-blocks.s3.eu-west-1.amazonaws.com/"
    assert S3Bucket(S3Backend("b", KEY_ID, SECRET, sse_c_key="k" * 32))._signer is None  # SSE-C: through boto3

"""The agent's own S3 object requests (objectstore/s3_bucket.py): the URL the client itself would use, signed by
botocore's signer of the client's signature version (radosgw accepts them in tests/objectstore)."""

from __future__ import annotations

import pytest

from seafbackup_agent.objectstore.backend_conf import S3Backend
from seafbackup_agent.objectstore.s3_bucket import S3Bucket

KEY_ID, SECRET = "AKIDEXAMPLE0123456789", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEY = "0f6e5a7c-2b3d-4e1f-9a8b-7c6d5e4f3a2b/" + "ab" * 20


@pytest.mark.parametrize(("conf", "url", "scheme"), [
    (S3Backend("backup-blocks", KEY_ID, SECRET, host="127.0.0.71", port=7480, path_style_request=True,
               use_v4_signature=True), f"http://127.0.0.71:7480/backup-blocks/{KEY}", "AWS4-HMAC-SHA256"),
    (S3Backend("backup-blocks", KEY_ID, SECRET, aws_region="eu-west-1"),  # AWS itself
     f"https://backup-blocks.s3.eu-west-1.amazonaws.com/{KEY}", "AWS4-HMAC-SHA256"),
    (S3Backend("backup-blocks", KEY_ID, SECRET, host="127.0.0.71", port=7480, path_style_request=True),
     f"http://127.0.0.71:7480/backup-blocks/{KEY}", "AWS"),  # use_v4_signature = false: SigV2
], ids=["radosgw-v4", "aws", "radosgw-v2"])
def test_an_object_request_goes_to_the_clients_url_signed_with_its_version(conf, url, scheme):
    signer = S3Bucket(conf)._signer
    assert signer is not None
    signed_url, headers = signer.sign("PUT", KEY, b"x" * 2048)
    assert signed_url == url
    authorization = headers["Authorization"]
    assert authorization.split(" ", 1)[0] == scheme and KEY_ID in authorization and SECRET not in authorization
    if scheme == "AWS4-HMAC-SHA256":
        region = conf.aws_region or "us-east-1"
        assert f"/{region}/s3/aws4_request" in authorization and "X-Amz-Date" in headers


def test_urls_are_the_clients_own_or_the_buckets_regional_endpoint():
    def base(**kw) -> str:
        signer = S3Bucket(S3Backend("backup-blocks", KEY_ID, SECRET, **kw))._signer
        assert signer is not None
        return signer.base

    assert base(host="127.0.0.71", port=7480, path_style_request=True) == "http://127.0.0.71:7480/backup-blocks/"
    assert base(aws_region="eu-west-1") == "https://backup-blocks.s3.eu-west-1.amazonaws.com/"
    assert S3Bucket(S3Backend("b", KEY_ID, SECRET, sse_c_key="k" * 32))._signer is None  # SSE-C: through boto3

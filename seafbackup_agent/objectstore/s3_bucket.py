"""One object type of a Seafile installation in an S3 bucket: the key of an object is `<repo_id>/<obj_id>`.

boto3's synchronous client, called from worker threads (the storage interface is synchronous and the
engine, `verify` and the transport server already call it through `asyncio.to_thread`). A boto3 client is
thread-safe and keeps a pool of HTTP connections (`max_pool_connections`), so N threads give N PUTs in
flight. A PUT that returned 200 is durable: S3 (and radosgw, which acknowledges after the write is
committed on the OSDs) never returns success for data it may lose.

GET, HEAD and PUT of objects, the agent's requests per object, skip botocore's per-call machinery (request
serialisation, its dozens of event handlers, endpoint resolution, response parsing: about 1.2 ms of CPU per
request, two thirds of a small object's PUT): they are signed by botocore's own signers (SigV4, or SigV2 as
Seafile's `use_v4_signature = false`; ~0.1 ms) and sent through the client's own HTTP session (its connection pool, TLS
verification and proxies), with the client's retry policy (5 attempts, exponential backoff with jitter, on
broken connections, 5xx, throttling). Everything else (bucket checks, listings, SSE-C) goes through boto3.
"""

from __future__ import annotations

import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.credentials import Credentials

from seafbackup_agent.errors import ConfigError, StorageError
from seafbackup_agent.objectstore.backend_conf import S3Backend
from seafbackup_agent.seafile.ids import is_object_id

CONNECTIONS = 32
ATTEMPTS = 5
"""Tries of one request (as botocore's `retries={"max_attempts": 5}`)."""
RETRIED_STATUS = frozenset((500, 502, 503, 504))
RETRIED_CODES = frozenset(("RequestTimeout", "RequestTimeoutException", "SlowDown", "Throttling",
                           "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"))
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


class S3Bucket:
    def __init__(self, conf: S3Backend, *, connections: int = CONNECTIONS) -> None:
        self.conf = conf
        self.where = conf.describe()
        config = botocore.config.Config(
            # Seafile's use_v4_signature = false means SigV2 ("s3"): radosgw and most S3 stores still take it.
            signature_version="s3v4" if conf.use_v4_signature or conf.host is None else "s3",
            s3={"addressing_style": "path" if conf.path_style_request else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
            max_pool_connections=connections,
            connect_timeout=10,
            read_timeout=60,
            # Checksums only where the operation requires one: a PUT needs no trailer.
            request_checksum_calculation="when_required",
            # Our parameters are always well-formed: skip botocore's per-request validation (CPU per PUT).
            parameter_validation=False,
            response_checksum_validation="when_required",
        )
        key = (conf.endpoint_url, conf.key_id, conf.key, conf.aws_region, config.signature_version,
               conf.path_style_request, connections)
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                # One client for the three buckets of an installation (a client costs ~20 MB and 0.3 s to make).
                client = _clients[key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=conf.endpoint_url,
                    aws_access_key_id=conf.key_id,
                    aws_secret_access_key=conf.key,
                    region_name=conf.aws_region or "us-east-1",
                    config=config,
                )
        self.client: Any = client
        self._sse: dict[str, str] = {}
        if conf.sse_c_key:
            self._sse = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": conf.sse_c_key}
        self._signer: _Signer | None = None
        if not self._sse:  # SSE-C's key headers: through boto3
            self._signer = _Signer(client, conf, sigv4=config.signature_version == "s3v4")
        self.http: Any = client._endpoint.http_session  # the client's pool: one per client, thread-safe

    def identity(self) -> str:
        return f"s3:{self.conf.endpoint_url or 'aws'}/{self.conf.bucket}"

    def read(self, store_id: str, obj_id: str) -> bytes | None:
        if self._signer is not None:
            status, body = self._request("GET", f"{store_id}/{obj_id}", b"", f"reading {store_id}/{obj_id} from")
            return body if status == 200 else None
        try:
            response = self.client.get_object(Bucket=self.conf.bucket, Key=f"{store_id}/{obj_id}", **self._sse)
            return bytes(response["Body"].read())
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._error(exc, f"reading {store_id}/{obj_id} from") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"reading {store_id}/{obj_id} from") from exc

    def exists(self, store_id: str, obj_id: str) -> bool:
        if self._signer is not None:
            status, _ = self._request("HEAD", f"{store_id}/{obj_id}", b"", f"looking up {store_id}/{obj_id} in")
            return status == 200
        try:
            self.client.head_object(Bucket=self.conf.bucket, Key=f"{store_id}/{obj_id}", **self._sse)
            return True
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._error(exc, f"looking up {store_id}/{obj_id} in") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, f"looking up {store_id}/{obj_id} in") from exc

    def write(self, store_id: str, obj_id: str, data: bytes) -> None:
        if self._signer is not None:
            self._request("PUT", f"{store_id}/{obj_id}", data, f"writing {store_id}/{obj_id} to")
            return
        try:
            self.client.put_object(Bucket=self.conf.bucket, Key=f"{store_id}/{obj_id}", Body=data, **self._sse)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, f"writing {store_id}/{obj_id} to") from exc

    def iter_ids(self, store_id: str) -> Iterator[str]:
        for _store, obj_id in self._list(f"{store_id}/"):
            yield obj_id

    def list_all(self) -> Iterator[tuple[str, str]]:
        """Every object of the bucket as (store id, object id): a LIST, 1000 keys per request."""
        return self._list("")

    def _list(self, prefix: str) -> Iterator[tuple[str, str]]:
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.conf.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    store_id, sep, obj_id = item["Key"].partition("/")
                    if sep and is_object_id(obj_id):
                        yield store_id, obj_id
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._error(exc, "listing") from exc

    def check(self) -> None:
        """Reach the bucket with these credentials (HEAD bucket); ConfigError saying what failed."""
        try:
            self.client.head_bucket(Bucket=self.conf.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            reason = {"404": "does not exist", "NoSuchBucket": "does not exist",
                      "403": "refuses these credentials (403 Forbidden)",
                      "AccessDenied": "refuses these credentials"}.get(code, f"answered {code}")
            raise ConfigError(f"{self.where} {reason}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise ConfigError(f"{self.where} cannot be reached: {exc}") from exc

    def close(self) -> None:
        pass  # the client is shared (`_clients`) and lives as long as the process

    def _error(self, exc: Exception, action: str) -> StorageError:
        return StorageError(f"{action} {self.where} failed: {exc}")

    def _request(self, method: str, key: str, body: bytes, action: str) -> tuple[int, bytes]:
        """One object request, retried as botocore would: (200, body), or (404, b"") for GET and HEAD of a
        missing object; anything else raises StorageError naming the bucket, the object and the answer."""
        assert self._signer is not None
        for attempt in range(1, ATTEMPTS + 1):
            url, headers = self._signer.sign(method, key, body)
            try:
                response = self.http.send(AWSPreparedRequest(method, url, headers, body or None, False))
            except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError) as exc:
                if attempt == ATTEMPTS:
                    raise self._error(exc, action) from exc
                _backoff(attempt)
                continue
            except botocore.exceptions.BotoCoreError as exc:
                raise self._error(exc, action) from exc
            status = response.status_code
            content = response.content if method != "HEAD" else b""
            if status == 200:
                return status, bytes(content)
            code, message = _error_code(content, status)
            if status == 404 and method != "PUT" and code != "NoSuchBucket":
                return status, b""
            if attempt < ATTEMPTS and (status in RETRIED_STATUS or status == 429 or code in RETRIED_CODES):
                _backoff(attempt)
                continue
            raise StorageError(f"{action} {self.where} failed: {status} {code}{f': {message}' if message else ''}")
        raise AssertionError("unreachable")


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_code(content: bytes, status: int) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; the status's reason when there is none (HEAD has no body)."""
    code = re.search(rb"<Code>([^<]*)</Code>", content)
    message = re.search(rb"<Message>([^<]*)</Message>", content)
    if code is None:
        return {403: "Forbidden", 404: "Not Found"}.get(status, "error"), ""
    return code.group(1).decode(errors="replace"), message.group(1).decode(errors="replace") if message else ""


def _backoff(attempt: int) -> None:
    """botocore's standard mode: a random wait of up to 2^attempt / 2 seconds, at most 20."""
    time.sleep(random.uniform(0, min(20.0, 2 ** attempt / 2)))


class _Signer:
    """Signs object requests of one bucket as the client would (its endpoint, addressing style, region, keys),
    with botocore's signers (SigV4, or SigV2 for Seafile's `use_v4_signature = false`).

    The URL of an object on an endpoint of seafile.conf's `host` is the client's own, taken once from a presigned
    URL of a sample key; on AWS itself, the bucket's regional endpoint (virtual-hosted where the bucket's name
    allows it)."""

    def __init__(self, client: Any, conf: S3Backend, *, sigv4: bool) -> None:
        self.region: str = client.meta.region_name or "us-east-1"
        if conf.host is None:
            if re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", conf.bucket):
                base = f"https://{conf.bucket}.s3.{self.region}.amazonaws.com/"
            else:
                base = f"https://s3.{self.region}.amazonaws.com/{conf.bucket}/"
            sample = urllib.parse.urlsplit(base)
        else:
            sample = urllib.parse.urlsplit(client.generate_presigned_url(
                "get_object", Params={"Bucket": conf.bucket, "Key": "k"}, ExpiresIn=60))
            if not sample.path.endswith("/k"):
                raise ConfigError(f"unexpected S3 URL for bucket {conf.bucket}: {sample.path}")
        self.base = f"{sample.scheme}://{sample.netloc}{sample.path.removesuffix('k')}"
        self.bucket = conf.bucket
        credentials = Credentials(conf.key_id, conf.key)
        self._auth: S3SigV4Auth | HmacV1Auth = (
            S3SigV4Auth(credentials, "s3", self.region) if sigv4 else HmacV1Auth(credentials))

    def sign(self, method: str, key: str, body: bytes) -> tuple[str, dict[str, str]]:
        """The URL and headers of one request, signed now by botocore's own signer for the client's version."""
        quoted = urllib.parse.quote(key, safe="/~")
        request = AWSRequest(method=method, url=self.base + quoted, data=body or None)
        request.auth_path = f"/{self.bucket}/{quoted}"  # SigV2's resource, whatever the addressing style
        self._auth.add_auth(request)
        return request.url, dict(request.headers.items())

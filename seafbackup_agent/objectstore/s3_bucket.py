"""One object type of a Seafile installation in an S3 bucket: the key of an object is `<repo_id>/<obj_id>`.

boto3's synchronous client, called from worker threads (the storage interface is synchronous and the
engine, `verify` and the transport server already call it through `asyncio.to_thread`). A boto3 client is
thread-safe and keeps a pool of HTTP connections (`max_pool_connections`), so N threads give N PUTs in
flight. A PUT that returned 200 is durable: S3 (and radosgw, which acknowledges after the write is
committed on the OSDs) never returns success for data it may lose.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from seafbackup_agent.errors import ConfigError, StorageError
from seafbackup_agent.objectstore.backend_conf import S3Backend
from seafbackup_agent.seafile.ids import is_object_id

CONNECTIONS = 32
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

    def identity(self) -> str:
        return f"s3:{self.conf.endpoint_url or 'aws'}/{self.conf.bucket}"

    def read(self, store_id: str, obj_id: str) -> bytes | None:
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


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))

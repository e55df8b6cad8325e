"""Independent checks of Seafile data, written from docs/seafile-format.md and not from the product's engine:
a library's whole closure verifies, and its database rows agree with its head."""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tests.backup_storage import S3Object, object_path

EMPTY = "0" * 40


@dataclass
class Closure:
    commits: set[str] = field(default_factory=set)
    fs: set[str] = field(default_factory=set)
    blocks: set[str] = field(default_factory=set)


def _path(data_dir: Path, kind: str, store: str, oid: str) -> Path | S3Object:
    return object_path(data_dir, kind, store, oid)  # a file, or a key in the bucket of `--backup-storage=s3`


def read_fs(data_dir: Path, store: str, oid: str) -> dict:
    body = zlib.decompress(_path(data_dir, "fs", store, oid).read_bytes())
    assert hashlib.sha1(body).hexdigest() == oid, f"fs object {oid} does not match its id"
    return json.loads(body)


def check_closure(data_dir: Path, repo_id: str, store_id: str, head: str, *, stop_before: int | None = None) -> Closure:
    """Walk every commit from head (both parents), every tree and block; assert each object verifies."""
    seen = Closure()
    pending = [head]
    while pending:
        cid = pending.pop()
        if cid in seen.commits:
            continue
        raw = _path(data_dir, "commits", repo_id, cid).read_bytes()
        commit = json.loads(raw)
        assert commit["commit_id"] == cid and commit["repo_id"] == repo_id
        seen.commits.add(cid)
        if stop_before is not None and commit["ctime"] < stop_before:
            continue
        check_tree(data_dir, store_id, commit["root_id"], seen)
        pending += [p for p in (commit.get("parent_id"), commit.get("second_parent_id")) if p]
    return seen


def check_tree(data_dir: Path, store: str, dir_id: str, seen: Closure) -> None:
    stack = [dir_id]
    while stack:
        oid = stack.pop()
        if oid == EMPTY or oid in seen.fs:
            continue
        doc = read_fs(data_dir, store, oid)
        seen.fs.add(oid)
        if doc["type"] == 3:
            names = [d["name"].encode() for d in doc["dirents"]]
            assert names == sorted(names, reverse=True), f"dirents of {oid} are not in descending order"
            stack += [d["id"] for d in doc["dirents"]]
        else:
            for bid in doc["block_ids"]:
                if bid not in seen.blocks:
                    data = _path(data_dir, "blocks", store, bid).read_bytes()
                    assert hashlib.sha1(data).hexdigest() == bid, f"block {bid} does not match its id"
                    seen.blocks.add(bid)


def head_files(data_dir: Path, repo_id: str, store_id: str, head: str) -> dict[str, bytes]:
    """Every file of the head tree with its content, read straight from storage."""
    commit = json.loads(_path(data_dir, "commits", repo_id, head).read_bytes())
    files: dict[str, bytes] = {}
    stack = [("", commit["root_id"])]
    while stack:
        prefix, oid = stack.pop()
        if oid == EMPTY:
            continue
        for d in read_fs(data_dir, store_id, oid)["dirents"]:
            path = f"{prefix}/{d['name']}"
            if d["mode"] & 0o170000 == 0o040000:
                stack.append((path, d["id"]))
            elif d["id"] == EMPTY:
                files[path] = b""
            else:
                doc = read_fs(data_dir, store_id, d["id"])
                files[path] = b"".join(_path(data_dir, "blocks", store_id, b).read_bytes() for b in doc["block_ids"])
    return files

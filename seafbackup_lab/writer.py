"""A Seafile data writer: acts like a Seafile server on a lab host.

It writes what Seafile's server writes (docs/seafile-format.md): objects under `storage/`, commits with the
server's fields and ids, and the database rows the server changes for each operation (§6).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.objectstore.store import open_store
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import (
    S_IFDIR,
    S_IFREG,
    Dirent,
    SeafDir,
    SeafFile,
    compute_commit_id,
    encode_commit,
    encode_dir,
    encode_file,
    parse_commit,
    parse_fs_object,
)
from seafbackup_agent.seafile.storage import ObjType

SERVER_CREATOR = "0" * 40
FILE_MODE = S_IFREG | 0o644
DIR_MODE = S_IFDIR
DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
_V2_FIXED_SALT = bytes([0xDA, 0x90, 0x45, 0xC3, 0x06, 0xC7, 0xCC, 0x26])


# --- Changes a commit can carry --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Put:
    """Add or replace a file."""

    path: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Mkdir:
    path: str


@dataclass(frozen=True, slots=True)
class Delete:
    path: str


@dataclass(frozen=True, slots=True)
class Rename:
    src: str
    dst: str


Change = Put | Mkdir | Delete | Rename


def _split(path: str) -> list[str]:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise ValueError(f"not a path inside a library: {path!r}")
    return parts


class _Tree:
    """A library tree being edited: directories load lazily and are re-encoded only where changed."""

    def __init__(self, server: SeafileServer, store_id: str, dir_id: str, now: int, modifier: str) -> None:
        self.server, self.store_id, self.now, self.modifier = server, store_id, now, modifier
        self.root = self._load(dir_id)
        self.size_delta = 0
        self.count_delta = 0

    def _load(self, dir_id: str) -> dict[str, Dirent | dict]:
        if dir_id == EMPTY_ID:
            return {}
        seafdir = self.server.read_fs(self.store_id, dir_id)
        assert isinstance(seafdir, SeafDir)
        return {d.name: d for d in seafdir.dirents}

    def _dir(self, parts: Sequence[str], create: bool) -> dict:
        node = self.root
        for part in parts:
            child = node.get(part)
            if isinstance(child, Dirent):
                if not child.is_dir:
                    raise ValueError(f"{part!r} is a file, not a directory")
                child = node[part] = self._load(child.id)
            elif child is None:
                if not create:
                    raise KeyError("/".join(parts))
                child = node[part] = {}
            node = child
        return node

    def _subtree_totals(self, entry: Dirent | dict) -> tuple[int, int]:
        if isinstance(entry, Dirent) and not entry.is_dir:
            return entry.size or 0, 1
        children = entry if isinstance(entry, dict) else self._load(entry.id)
        size = count = 0
        for child in children.values():
            s, c = self._subtree_totals(child)
            size, count = size + s, count + c
        return size, count

    def put(self, path: str, data: bytes) -> None:
        *parents, name = _split(path)
        node = self._dir(parents, create=True)
        old = node.get(name)
        if old is not None:
            old_size, old_count = self._subtree_totals(old)
            self.size_delta -= old_size
            self.count_delta -= old_count
        file_id = self.server.write_file_data(self.store_id, data)
        node[name] = Dirent(name, file_id, FILE_MODE, self.now, self.modifier, len(data))
        self.size_delta += len(data)
        self.count_delta += 1

    def mkdir(self, path: str) -> None:
        self._dir(_split(path), create=True)

    def delete(self, path: str) -> None:
        *parents, name = _split(path)
        node = self._dir(parents, create=False)
        old = node.pop(name)
        size, count = self._subtree_totals(old)
        self.size_delta -= size
        self.count_delta -= count

    def rename(self, src: str, dst: str) -> None:
        *src_parents, src_name = _split(src)
        *dst_parents, dst_name = _split(dst)
        entry = self._dir(src_parents, create=False).pop(src_name)
        target = self._dir(dst_parents, create=True)
        if isinstance(entry, Dirent):
            entry = Dirent(dst_name, entry.id, entry.mode, entry.mtime, entry.modifier, entry.size)
        target[dst_name] = entry

    def flush(self) -> str:
        return self._flush(self.root)

    def _flush(self, node: dict) -> str:
        dirents = []
        for name, entry in node.items():
            if isinstance(entry, dict):
                dirents.append(Dirent(name, self._flush(entry), DIR_MODE, self.now))
            else:
                dirents.append(entry)
        dir_id, stored = encode_dir(dirents)
        if dir_id != EMPTY_ID:
            self.server.store.write(ObjType.FS, self.store_id, dir_id, stored, durable=False)
        return dir_id


def _describe(changes: Sequence[Change]) -> str:
    """A commit description in the style of Seafile's `gen_commit_description()`."""
    first = changes[0]
    if isinstance(first, Put):
        verb, name = "Added", first.path.rsplit("/", 1)[-1]
    elif isinstance(first, Mkdir):
        verb, name = "Added directory", first.path.rsplit("/", 1)[-1]
    elif isinstance(first, Delete):
        verb, name = "Deleted", first.path.rsplit("/", 1)[-1]
    else:
        return f'Renamed "{first.src.rsplit("/", 1)[-1]}"'
    more = len(changes) - 1
    return f'{verb} "{name}".' if more == 0 else f'{verb} "{name}" and {more} more files.'


class SeafileServer:
    """Writes libraries into one lab host's `seafile-data` and `seafile_db`, as Seafile would."""

    def __init__(self, conf_dir: str | Path, data_dir: str | Path, *, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        self.conf = load_seafile_conf(conf_dir)
        # Where seafile.conf puts the objects: seafile-data, or S3 buckets and Ceph pools.
        self.store = open_store(self.conf.backends, Path(data_dir))
        self.block_size = block_size
        self.db = connect(self.conf.database, autocommit=False)
        self._clock = 0

    def close(self) -> None:
        self.db.close()
        self.store.close()

    def __enter__(self) -> SeafileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------------------

    def _query_one(self, sql: str, args: tuple) -> tuple | None:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            row = cur.fetchone()
        self.db.commit()
        return row

    def head(self, repo_id: str) -> str:
        row = self._query_one("SELECT commit_id FROM Branch WHERE repo_id=%s AND name='master'", (repo_id,))
        if row is None:
            raise KeyError(f"library {repo_id} has no master branch")
        return row[0]

    def store_id(self, repo_id: str) -> str:
        row = self._query_one("SELECT origin_repo FROM VirtualRepo WHERE repo_id=%s", (repo_id,))
        return row[0] if row else repo_id

    def read_commit(self, repo_id: str, commit_id: str):
        raw = self.store.read(ObjType.COMMITS, repo_id, commit_id)
        if raw is None:
            raise KeyError(f"commit {commit_id} of {repo_id} is missing")
        return parse_commit(raw, expected_id=commit_id)

    def read_fs(self, store_id: str, obj_id: str) -> SeafDir | SeafFile:
        raw = self.store.read(ObjType.FS, store_id, obj_id)
        if raw is None:
            raise KeyError(f"fs object {obj_id} of {store_id} is missing")
        return parse_fs_object(obj_id, raw)

    def walk_files(self, repo_id: str, commit_id: str | None = None) -> Iterator[tuple[str, SeafFile | None]]:
        """Every file of a commit's tree as (path, file object or None for an empty file)."""
        store_id = self.store_id(repo_id)
        commit = self.read_commit(repo_id, commit_id or self.head(repo_id))
        stack = [("", commit.root_id)]
        while stack:
            prefix, dir_id = stack.pop()
            if dir_id == EMPTY_ID:
                continue
            seafdir = self.read_fs(store_id, dir_id)
            assert isinstance(seafdir, SeafDir)
            for d in seafdir.dirents:
                path = f"{prefix}/{d.name}"
                if d.is_dir:
                    stack.append((path, d.id))
                else:
                    obj = None if d.id == EMPTY_ID else self.read_fs(store_id, d.id)
                    yield path, obj  # type: ignore[misc]

    def read_file(self, repo_id: str, path: str, commit_id: str | None = None) -> bytes:
        for file_path, obj in self.walk_files(repo_id, commit_id):
            if file_path == "/" + path.strip("/"):
                if obj is None:
                    return b""
                assert isinstance(obj, SeafFile)
                store_id = self.store_id(repo_id)
                return b"".join(self.store.read(ObjType.BLOCKS, store_id, b) or b"" for b in obj.block_ids)
        raise KeyError(path)

    # --- writing objects ---------------------------------------------------------------------------

    def write_file_data(self, store_id: str, data: bytes) -> str:
        """Cut into fixed-size blocks (as the web upload does), write blocks and the file object."""
        block_ids = []
        for offset in range(0, len(data), self.block_size):
            chunk = data[offset : offset + self.block_size]
            block_id = hashlib.sha1(chunk).hexdigest()
            if not self.store.exists(ObjType.BLOCKS, store_id, block_id):
                self.store.write(ObjType.BLOCKS, store_id, block_id, chunk, durable=False)
            block_ids.append(block_id)
        file_id, stored = encode_file(len(data), block_ids)
        if file_id != EMPTY_ID and not self.store.exists(ObjType.FS, store_id, file_id):
            self.store.write(ObjType.FS, store_id, file_id, stored, durable=False)
        return file_id

    def _now(self, ctime: int | None) -> int:
        # Seafile orders history by ctime; keep ctimes distinct and increasing within one writer.
        now = ctime if ctime is not None else max(int(time.time()), self._clock + 1)
        self._clock = max(self._clock, now)
        return now

    def _write_commit(
        self,
        *,
        repo_id: str,
        root_id: str,
        creator_name: str,
        ctime: int,
        repo_name: str,
        description: str = "Created library",
        parent_id: str | None = None,
        second_parent_id: str | None = None,
        repo_desc: str = "",
        encryption: dict | None = None,
    ) -> str:
        commit_id = compute_commit_id(
            root_id=root_id, creator=SERVER_CREATOR, creator_name=creator_name, description=description, ctime=ctime
        )
        fields: dict = {
            "commit_id": commit_id,
            "root_id": root_id,
            "repo_id": repo_id,
            "creator_name": creator_name,
            "creator": SERVER_CREATOR,
            "description": description,
            "ctime": ctime,
            "parent_id": parent_id,
            "second_parent_id": second_parent_id,
            "repo_name": repo_name,
            "repo_desc": repo_desc,
            "repo_category": None,
        }
        if encryption:
            fields.update(encryption)
        fields["no_local_history"] = 1
        fields["version"] = 1
        self.store.write(ObjType.COMMITS, repo_id, commit_id, encode_commit(fields), durable=True)
        return commit_id

    @staticmethod
    def _encryption_fields(repo_id: str, password: str) -> dict:
        """enc_version 2 parameters: `magic` as `seafile_generate_magic()` computes it; `key` is random
        (the lab does not encrypt blocks, so no real file key is needed)."""
        key = hashlib.pbkdf2_hmac("sha256", (repo_id + password).encode(), _V2_FIXED_SALT, 1000, 32)
        return {"encrypted": "true", "enc_version": 2, "magic": key.hex(), "key": secrets.token_hex(48)}

    # --- library operations (each one database transaction, like the server) ----------------------

    def create_library(
        self,
        name: str,
        owner: str,
        *,
        desc: str = "",
        password: str | None = None,
        repo_id: str | None = None,
        ctime: int | None = None,
    ) -> str:
        """`seaf_repo_manager_create_new_repo()`: first commit, Branch, RepoHead, Repo, RepoInfo, RepoOwner."""
        repo_id = repo_id or str(uuid.uuid4())
        now = self._now(ctime)
        encryption = self._encryption_fields(repo_id, password) if password else None
        head = self._write_commit(repo_id=repo_id, root_id=EMPTY_ID, creator_name=owner, ctime=now, repo_name=name,
                                  repo_desc=desc, encryption=encryption)
        with self.db.cursor() as cur:
            cur.execute("REPLACE INTO Branch (name, repo_id, commit_id) VALUES ('master', %s, %s)", (repo_id, head))
            cur.execute("REPLACE INTO RepoHead (repo_id, branch_name) VALUES (%s, 'master')", (repo_id,))
            cur.execute("INSERT INTO Repo (repo_id) VALUES (%s)", (repo_id,))
            self._update_repo_info(cur, repo_id, name, now, bool(password), owner)
            cur.execute("REPLACE INTO RepoOwner (repo_id, owner_id) VALUES (%s, %s)", (repo_id, owner))
            cur.execute("REPLACE INTO RepoSize (repo_id, size, head_id) VALUES (%s, 0, %s)", (repo_id, head))
            cur.execute("REPLACE INTO RepoFileCount (repo_id, file_count) VALUES (%s, 0)", (repo_id,))
        self.db.commit()
        return repo_id

    @staticmethod
    def _update_repo_info(cur, repo_id: str, name: str, ctime: int, encrypted: bool, modifier: str) -> None:
        cur.execute(
            "INSERT INTO RepoInfo (repo_id, name, update_time, version, is_encrypted, last_modifier) "
            "VALUES (%s, %s, %s, 1, %s, %s) ON DUPLICATE KEY UPDATE name=VALUES(name), "
            "update_time=VALUES(update_time), version=VALUES(version), is_encrypted=VALUES(is_encrypted), "
            "last_modifier=VALUES(last_modifier)",
            (repo_id, name, ctime, int(encrypted), modifier),
        )

    def commit(
        self,
        repo_id: str,
        changes: Sequence[Change],
        *,
        modifier: str = "alice@example.com",
        description: str | None = None,
        ctime: int | None = None,
        parent_id: str | None = None,
        second_parent_id: str | None = None,
        move_branch: bool = True,
    ) -> str:
        """Apply changes on top of `parent_id` (default: the head) and make a new commit.

        With `move_branch`, `Branch` moves by compare-and-swap (`test_and_update_branch`) and RepoInfo,
        RepoSize and RepoFileCount follow, as `on_branch_updated()` and the size scheduler do.
        """
        if not changes and second_parent_id is None:
            raise ValueError("a commit needs at least one change")
        old_head = self.head(repo_id)
        base = self.read_commit(repo_id, parent_id or old_head)
        store_id = self.store_id(repo_id)
        now = self._now(ctime)
        tree = _Tree(self, store_id, base.root_id, now, modifier)
        for change in changes:
            if isinstance(change, Put):
                tree.put(change.path, change.data)
            elif isinstance(change, Mkdir):
                tree.mkdir(change.path)
            elif isinstance(change, Delete):
                tree.delete(change.path)
            else:
                tree.rename(change.src, change.dst)
        root_id = tree.flush()
        head_doc = parse_commit(self.store.read(ObjType.COMMITS, repo_id, old_head) or b"")
        encryption = _encryption_of(base.raw) if base.encrypted else None
        if description is None:
            description = "Auto merge by system" if second_parent_id and not changes else _describe(changes)
        commit_id = self._write_commit(
            repo_id=repo_id,
            root_id=root_id,
            creator_name=modifier,
            description=description,
            ctime=now,
            parent_id=base.commit_id,
            second_parent_id=second_parent_id,
            repo_name=head_doc.repo_name,
            repo_desc=_field(base.raw, "repo_desc") or "",
            encryption=encryption,
        )
        if move_branch:
            self._move_branch(repo_id, old_head, commit_id, head_doc.repo_name, now, base.encrypted, modifier, tree)
        return commit_id

    def _move_branch(self, repo_id, old_head, new_head, name, ctime, encrypted, modifier, tree: _Tree) -> None:
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT commit_id FROM Branch WHERE repo_id=%s AND name='master' FOR UPDATE", (repo_id,)
            )
            row = cur.fetchone()
            if row is None or row[0] != old_head:
                self.db.rollback()
                raise RuntimeError(f"library {repo_id}: head moved concurrently")
            cur.execute(
                "UPDATE Branch SET commit_id=%s WHERE repo_id=%s AND name='master'", (new_head, repo_id)
            )
            self._update_repo_info(cur, repo_id, name, ctime, encrypted, modifier)
            cur.execute(
                "UPDATE RepoSize SET size=CAST(size AS SIGNED)+%s, head_id=%s WHERE repo_id=%s",
                (tree.size_delta, new_head, repo_id),
            )
            cur.execute(
                "UPDATE RepoFileCount SET file_count=CAST(file_count AS SIGNED)+%s WHERE repo_id=%s",
                (tree.count_delta, repo_id),
            )
        self.db.commit()

    def put_files(self, repo_id: str, files: dict[str, bytes], **kwargs) -> str:
        return self.commit(repo_id, [Put(p, d) for p, d in files.items()], **kwargs)

    def create_virtual_repo(self, origin_id: str, path: str, name: str, owner: str) -> str:
        """`do_create_virtual_repo()`: own commits and rows, fs objects and blocks in the origin's store."""
        origin_head = self.read_commit(origin_id, self.head(origin_id))
        dir_id = origin_head.root_id
        for part in _split(path):
            seafdir = self.read_fs(origin_id, dir_id)
            assert isinstance(seafdir, SeafDir)
            match = [d for d in seafdir.dirents if d.name == part and d.is_dir]
            if not match:
                raise KeyError(f"{path} is not a directory of {origin_id}")
            dir_id = match[0].id
        vrepo_id = str(uuid.uuid4())
        now = self._now(None)
        head = self._write_commit(repo_id=vrepo_id, root_id=dir_id, creator_name=owner, ctime=now, repo_name=name)
        with self.db.cursor() as cur:
            cur.execute("REPLACE INTO Branch (name, repo_id, commit_id) VALUES ('master', %s, %s)", (vrepo_id, head))
            cur.execute("REPLACE INTO RepoHead (repo_id, branch_name) VALUES (%s, 'master')", (vrepo_id,))
            cur.execute("INSERT INTO Repo (repo_id) VALUES (%s)", (vrepo_id,))
            cur.execute(
                "INSERT INTO VirtualRepo (repo_id, origin_repo, path, base_commit) VALUES (%s, %s, %s, %s)",
                (vrepo_id, origin_id, "/" + path.strip("/"), origin_head.commit_id),
            )
            self._update_repo_info(cur, vrepo_id, name, now, False, owner)
            cur.execute("REPLACE INTO RepoOwner (repo_id, owner_id) VALUES (%s, %s)", (vrepo_id, owner))
        self.db.commit()
        return vrepo_id

    def set_history_limit(self, repo_id: str, days: int) -> None:
        with self.db.cursor() as cur:
            cur.execute("REPLACE INTO RepoHistoryLimit (repo_id, days) VALUES (%s, %s)", (repo_id, days))
        self.db.commit()

    def set_valid_since(self, repo_id: str, timestamp: int) -> None:
        with self.db.cursor() as cur:
            cur.execute("REPLACE INTO RepoValidSince (repo_id, timestamp) VALUES (%s, %s)", (repo_id, timestamp))
        self.db.commit()

    def delete_library(self, repo_id: str) -> None:
        """`seaf_repo_manager_del_repo()`: a RepoTrash row, the library's rows gone, objects kept."""
        head = self.head(repo_id)
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT i.name, o.owner_id, s.size FROM RepoInfo i LEFT JOIN RepoOwner o USING (repo_id) "
                "LEFT JOIN RepoSize s USING (repo_id) WHERE i.repo_id=%s",
                (repo_id,),
            )
            name, owner, size = cur.fetchone() or ("", "", 0)
            cur.execute(
                "REPLACE INTO RepoTrash (repo_id, repo_name, head_id, owner_id, size, org_id, del_time) "
                "VALUES (%s, %s, %s, %s, %s, -1, %s)",
                (repo_id, name, head, owner, size or 0, int(time.time())),
            )
            for table in ("Repo", "Branch", "RepoHead", "RepoOwner", "RepoInfo", "RepoSize", "RepoFileCount",
                          "RepoHistoryLimit", "RepoValidSince", "VirtualRepo", "RepoUserToken", "SharedRepo"):
                cur.execute(f"DELETE FROM `{table}` WHERE repo_id=%s", (repo_id,))
        self.db.commit()

    def library_ids(self) -> list[str]:
        with self.db.cursor() as cur:
            cur.execute("SELECT repo_id FROM Repo ORDER BY repo_id")
            rows = [r[0] for r in cur.fetchall()]
        self.db.commit()
        return rows

    def add_sync_token(self, repo_id: str, email: str) -> str:
        token = secrets.token_hex(20)
        with self.db.cursor() as cur:
            cur.execute(
                "INSERT INTO RepoUserToken (repo_id, email, token) VALUES (%s, %s, %s)", (repo_id, email, token)
            )
        self.db.commit()
        return token


def _field(raw: bytes, key: str):
    return json.loads(raw).get(key)


def _encryption_of(raw: bytes) -> dict:
    doc = json.loads(raw)
    keys = ("encrypted", "enc_version", "magic", "key", "salt", "pwd_hash", "pwd_hash_algo", "pwd_hash_params")
    return {k: doc[k] for k in keys if k in doc}


def bulk_files(count: int, size: int, *, seed: int = 0, prefix: str = "bulk") -> Iterable[Put]:
    """Deterministic distinct files, spread over directories of 100 entries."""
    for i in range(count):
        payload = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        data = (payload * (size // len(payload) + 1))[:size]
        yield Put(f"{prefix}/d{i // 100:05d}/f{i:07d}.bin", data)



"""Seafile on object storage, against the lab's real Ceph: radosgw for S3 buckets, librados for pools.

Every comparison reads the stores with clients of the tests' own (boto3, librados, the filesystem), object
by object, and checks closures with an independent walk of Seafile's format.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import os
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from seafbackup_agent.cli.main import main as cmd_main
from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ExitCode
from seafbackup_agent.objectstore.backend_conf import Backend, CephBackend, S3Backend, render_sections
from seafbackup_agent.objectstore.librados import load_rados
from seafbackup_agent.objectstore.s3_bucket import S3Bucket
from seafbackup_agent.objectstore.store import BackendStore
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.engine import SyncEngine
from seafbackup_agent.sync.result import SyncError
from seafbackup_agent.sync.source import LocalSource
from seafbackup_agent.transport.client import HttpSource
from seafbackup_agent.transport.server import create_primary_app, start_server
from seafbackup_lab.writer import Put, SeafileServer, bulk_files
from tests.agents import Agents
from tests.playbooks import run_playbook
from tests.seafile_checks import check_closure
from tests.signed_http import TOKEN, past_start

EMPTY = "0" * 40
Objects = dict[tuple[str, str, str], bytes]
"""(type, store id, object id) -> stored bytes."""


# --- reading stores independently -------------------------------------------------------------------

def fs_objects(data_dir: Path) -> Objects:
    found: Objects = {}
    for obj_type in ObjType:
        base = data_dir / "storage" / obj_type.value
        for path in base.glob("*/??/*") if base.is_dir() else ():
            if len(path.name) == 38 and not path.parts[-3].startswith("."):
                found[(obj_type.value, path.parts[-3], path.parent.name + path.name)] = path.read_bytes()
    return found


def s3_objects(s3, backends: dict[ObjType, Backend]) -> Objects:
    keys: list[tuple[str, str, str, str]] = []
    for obj_type, backend in backends.items():
        assert isinstance(backend, S3Backend)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=backend.bucket):
            for item in page.get("Contents", ()):
                store, obj_id = item["Key"].split("/")
                keys.append((obj_type.value, store, obj_id, backend.bucket))

    def get(key: tuple[str, str, str, str]) -> bytes:
        _kind, store, obj_id, bucket = key
        return bytes(s3.get_object(Bucket=bucket, Key=f"{store}/{obj_id}")["Body"].read())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return {key[:3]: data for key, data in zip(keys, pool.map(get, keys), strict=True)}


def rados_objects(ceph, backends: dict[ObjType, Backend]) -> Objects:
    rados = load_rados()
    found: Objects = {}
    cluster = ceph.rados()
    for obj_type, backend in backends.items():
        assert isinstance(backend, CephBackend)
        ioctx = cluster.open_ioctx(backend.pool)
        try:
            ioctx.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            names = [(o.nspace, o.key) for o in ioctx.list_objects()]
            for nspace, key in names:
                ioctx.set_namespace(nspace)
                size, _ = ioctx.stat(key)
                found[(obj_type.value, nspace, key)] = ioctx.read(key, length=size)
        finally:
            ioctx.close()
    return found


def assert_closed(objects: Objects) -> None:
    """Every object present has everything it references present: commits their trees and parents, directories
    their entries, files their blocks; and every object matches its id (commits: their own fields)."""
    for (kind, store, obj_id), raw in objects.items():
        if kind == "blocks":
            assert hashlib.sha1(raw).hexdigest() == obj_id
        elif kind == "fs":
            body = zlib.decompress(raw)
            assert hashlib.sha1(body).hexdigest() == obj_id
            doc = json.loads(body)
            if doc["type"] == 3:
                for d in doc["dirents"]:
                    assert d["id"] == EMPTY or ("fs", store, d["id"]) in objects, f"{obj_id} lacks {d['id']}"
            else:
                for b in doc["block_ids"]:
                    assert ("blocks", store, b) in objects, f"file {obj_id} lacks block {b}"
        else:
            doc = json.loads(raw)
            assert doc["commit_id"] == obj_id and doc["repo_id"] == store
            assert doc["root_id"] == EMPTY or ("fs", store, doc["root_id"]) in objects
            for parent in (doc.get("parent_id"), doc.get("second_parent_id")):
                assert parent is None or ("commits", store, parent) in objects, f"commit {obj_id} lacks {parent}"


# --- the pair ------------------------------------------------------------------------------------------

def open_pair(lab) -> tuple[SeafileInstallation, SeafileInstallation]:
    source = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
    return source, target


def sync(source: SeafileInstallation, target: SeafileInstallation, repo: str):
    return asyncio.run(SyncEngine(LocalSource(source), target).sync_library(repo))


def write_library(lab, *, files: int = 60) -> tuple[str, SeafileServer]:
    writer = SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir, block_size=64 * 1024)
    repo = writer.create_library("objects", "alice@example.com")
    writer.put_files(repo, {"hello.txt": b"hello", "docs/a.md": b"# a\n" * 50, "empty.txt": b""})
    writer.commit(repo, [Put("docs/big.bin", os.urandom(300_000)), *bulk_files(files, 700)])
    return repo, writer


@contextlib.contextmanager
def wire_requests(store, before_send: Callable[[str], None] | None = None) -> Iterator[Counter[str]]:
    """The agent's S3 requests sent in the block, by HTTP method (PUT, HEAD...), counted where they go on the wire:
    the HTTP session of its S3 clients, which every request of theirs goes through. `before_send(method)` is
    called before each is sent (it may raise, as a broken connection does)."""
    assert isinstance(store, BackendStore)
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    sessions = {id(b.http): b.http for b in store.backends.values() if isinstance(b, S3Bucket)}.values()
    for session in sessions:
        def send(request, _send=session.send):
            if before_send is not None:
                before_send(request.method)
            with lock:
                counts[request.method] += 1
            return _send(request)

        session.send = send
    try:
        yield counts
    finally:
        for session in sessions:  # the clients are shared by every store on the same endpoint and keys
            del session.send


# --- tests ---------------------------------------------------------------------------------------------

def test_filesystem_to_s3_first_sync_then_one_change_without_a_head_per_object(
        lab, backup_db_privileges, buckets, seafile_conf_backends, s3):
    backup_buckets = buckets("backup")
    seafile_conf_backends("backup", backup_buckets)
    repo, writer = write_library(lab)
    source, target = open_pair(lab)
    try:
        assert isinstance(target.store, BackendStore)
        result = sync(source, target, repo)
        assert result.new_head == writer.head(repo) == target.rows.head(repo)
        primary = fs_objects(lab.primary.seafile_data_dir)
        backup = s3_objects(s3, backup_buckets)
        assert backup == primary  # object by object, byte for byte, under `<repo_id>/<obj_id>` keys
        assert_closed(backup)

        writer.commit(repo, [Put("bulk/d00001/f0000120.bin", b"changed")])
        with wire_requests(target.store) as requests:
            again = sync(source, target, repo)
        assert again.new_head == writer.head(repo)
        after = s3_objects(s3, backup_buckets)
        assert after == fs_objects(lab.primary.seafile_data_dir)
        # One commit, the changed file, its block, and the directories above it: PUT once each, no HEAD at all;
        # one GET, the backup's head commit (its tree is what the change is diffed against).
        assert requests["PUT"] == len(after) - len(backup) == again.objects == 1 + 1 + 1 + 3
        assert requests["HEAD"] == 0 and requests["GET"] == 1
    finally:
        source.close()
        target.close()
        writer.close()


def test_s3_to_s3(lab, backup_db_privileges, buckets, seafile_conf_backends, s3):
    primary_buckets, backup_buckets = buckets("primary"), buckets("backup")
    seafile_conf_backends("primary", primary_buckets)
    seafile_conf_backends("backup", backup_buckets)
    repo, writer = write_library(lab)
    source, target = open_pair(lab)
    try:
        sync(source, target, repo)
        assert target.rows.head(repo) == writer.head(repo)
        primary = s3_objects(s3, primary_buckets)
        assert s3_objects(s3, backup_buckets) == primary
        assert_closed(primary)
        assert not (lab.backup.seafile_data_dir / "storage").exists()  # nothing went to the backup's disk
    finally:
        source.close()
        target.close()
        writer.close()


def test_a_primary_on_s3_serves_an_incremental_sync_in_one_request(
        lab, backup_db_privileges, buckets, seafile_conf_backends, s3):
    """Over HTTP from a primary whose objects are in S3: the library's answer brings the change along (its reads
    are GETs, made after the database connection is given back), and the backup's copy is the primary's."""
    seafile_conf_backends("primary", buckets("primary"))
    repo, writer = write_library(lab)
    target = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)

    async def scenario():
        installation = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
        app = create_primary_app(installation, TOKEN)
        server = await start_server(app)
        await past_start(app)
        try:
            async with HttpSource(server.url, TOKEN) as http:
                engine = SyncEngine(http, target)
                await engine.sync_library(repo)
                writer.commit(repo, [Put("bulk/d00001/f0000120.bin", b"changed"), Put("new.txt", b"new")])
                before = http.requests_sent
                result = await engine.sync_library(repo)
                assert result.new_head == writer.head(repo) and result.blocks == 2
                assert http.requests_sent - before == 1
        finally:
            await server.close()
            installation.close()

    try:
        asyncio.run(scenario())
        assert target.rows.head(repo) == writer.head(repo)
        check_closure(lab.backup.seafile_data_dir, repo, repo, writer.head(repo))
    finally:
        target.close()
        writer.close()


def test_ceph_pools_to_filesystem(lab, backup_db_privileges, pools, seafile_conf_backends, ceph):
    primary_pools = pools("primary")
    seafile_conf_backends("primary", primary_pools)
    repo, writer = write_library(lab)
    source, target = open_pair(lab)
    try:
        sync(source, target, repo)
        head = target.rows.head(repo)
        assert head == writer.head(repo)
        primary = rados_objects(ceph, primary_pools)
        assert {(t, s, o) for t, s, o in primary} >= {("commits", repo, head)}
        assert fs_objects(lab.backup.seafile_data_dir) == primary
        check_closure(lab.backup.seafile_data_dir, repo, repo, head)
    finally:
        source.close()
        target.close()
        writer.close()


class StoreWentAway(botocore.exceptions.BotoCoreError):
    fmt = "the connection to the store broke"


@pytest.mark.parametrize("fail_at", ["first", "middle", "head commit"])
def test_an_interrupted_sync_publishes_no_head_and_leaves_only_closed_objects(
        lab, backup_db_privileges, buckets, seafile_conf_backends, s3, fail_at):
    """The connection to the store breaks at the first PUT, halfway, or at the last one (the head commit): the
    sync fails, the backup has no head, and every object that did land has its whole closure there. The
    next sync completes."""
    backup_buckets = buckets("backup")
    seafile_conf_backends("backup", backup_buckets)
    repo, writer = write_library(lab)
    total = len(fs_objects(lab.primary.seafile_data_dir))
    fail_after = {"first": 0, "middle": total // 2, "head commit": total - 1}[fail_at]
    source, target = open_pair(lab)
    try:
        assert isinstance(target.store, BackendStore)
        done = [0]
        lock = threading.Lock()

        def maybe_fail(method: str) -> None:
            if method == "PUT":
                with lock:
                    if done[0] >= fail_after:
                        raise StoreWentAway
                    done[0] += 1

        with wire_requests(target.store, maybe_fail), pytest.raises(SyncError, match="connection to the store broke"):
            sync(source, target, repo)
        assert target.rows.head(repo) is None
        landed = s3_objects(s3, backup_buckets)
        assert len(landed) == fail_after
        assert_closed(landed)
        assert ("commits", repo, writer.head(repo)) not in landed
    finally:
        source.close()
        target.close()
    source, target = open_pair(lab)  # the next run: a new process, its index taken up where it was
    try:
        sync(source, target, repo)
        assert target.rows.head(repo) == writer.head(repo)
        assert s3_objects(s3, backup_buckets) == fs_objects(lab.primary.seafile_data_dir)
    finally:
        source.close()
        target.close()
        writer.close()


def _backup_dirs(lab) -> list[str]:
    """seaf-backup-cmd's options naming the lab backup's Seafile conf and data directories."""
    return ["--conf-dir", str(lab.backup.seafile_conf_dir), "--data-dir", str(lab.backup.seafile_data_dir)]


def _local_sync_args(lab) -> list[str]:
    p = lab.primary
    return ["local-sync", "--source-conf-dir", str(p.seafile_conf_dir), "--source-data-dir", str(p.seafile_data_dir),
            *_backup_dirs(lab)]


def _delete_the_first_block_of_big_bin(writer, repo, backup_buckets, s3) -> tuple[bytes, str]:
    """Someone deletes a block from the backup's bucket behind the agent's back: docs/big.bin's first. Returns
    that file's content and the block's id."""
    big = writer.read_file(repo, "docs/big.bin")
    lost = hashlib.sha1(big[: 64 * 1024]).hexdigest()
    blocks = backup_buckets[ObjType.BLOCKS]
    assert isinstance(blocks, S3Backend)
    s3.delete_object(Bucket=blocks.bucket, Key=f"{repo}/{lost}")
    return big, lost


def test_local_sync_and_verify_on_s3_and_the_index_rebuilt_after_a_lost_object(
        lab, backup_db_privileges, buckets, seafile_conf_backends, s3, capsys):
    backup_buckets = buckets("backup")
    seafile_conf_backends("backup", backup_buckets)
    repo, writer = write_library(lab, files=20)
    p = lab.primary
    local_sync = _local_sync_args(lab)
    verify = ["verify", "--no-compare", *_backup_dirs(lab)]
    try:
        assert cmd_main(local_sync) == 0
        assert cmd_main(verify) == 0
        # Someone deletes a block (the first of docs/big.bin) behind the agent's back: verify, which asks the
        # store, sees it...
        big, lost = _delete_the_first_block_of_big_bin(writer, repo, backup_buckets, s3)
        capsys.readouterr()
        assert cmd_main(verify) == ExitCode.MISSING_OBJECTS
        assert f"missing block {lost}" in capsys.readouterr().out
        # ...and the next sync no longer trusts the agent's index: a new file that starts like docs/big.bin puts
        # the block back (with the index as it was, the block would be taken as present and stay lost).
        writer.commit(repo, [Put("again.bin", big + b"and a different end")])
        assert cmd_main(local_sync) == 0
        assert cmd_main(verify) == 0
        assert s3_objects(s3, backup_buckets) == fs_objects(p.seafile_data_dir)
    finally:
        writer.close()


def test_index_rebuild_after_objects_deleted_behind_the_agents_back(
        lab, backup_db_privileges, buckets, seafile_conf_backends, s3, capsys):
    """An operator knows blocks were deleted from the backup's bucket (a lifecycle rule, say): `index rebuild` lists
    the buckets now, and the next sync puts a lost block back as soon as a commit needs it again (with the index as
    it was, the block would be taken as present and stay lost). On a filesystem backup there is no index."""
    backup_buckets = buckets("backup")
    seafile_conf_backends("backup", backup_buckets)
    repo, writer = write_library(lab, files=20)
    p = lab.primary
    local_sync = _local_sync_args(lab)
    rebuild = ["index", "rebuild", *_backup_dirs(lab)]
    try:
        assert cmd_main(local_sync) == 0
        big, _lost = _delete_the_first_block_of_big_bin(writer, repo, backup_buckets, s3)
        capsys.readouterr()

        assert cmd_main([*rebuild, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        stored = Counter(kind for kind, _store, _obj in s3_objects(s3, backup_buckets))
        assert {t["type"]: t["objects"] for t in doc["types"]} == {"commits": stored["commits"], "fs": stored["fs"],
                                                                     "blocks": stored["blocks"]}
        assert all(t["store"].startswith("S3 bucket ") for t in doc["types"])
        assert cmd_main([*rebuild, "--type", "blocks"]) == 0
        out = capsys.readouterr().out
        assert f"blocks: {stored['blocks']} objects listed" in out and "fs:" not in out

        writer.commit(repo, [Put("again.bin", big + b"and a different end")])
        assert cmd_main(local_sync) == 0
        assert s3_objects(s3, backup_buckets) == fs_objects(p.seafile_data_dir)  # the lost block is back
    finally:
        writer.close()
    seafile_conf_backends("backup", {})  # the backup on its filesystem again
    assert cmd_main(rebuild) == ExitCode.USAGE
    assert "there is no index to rebuild" in capsys.readouterr().err


def test_agents_status_and_verify_with_the_backup_on_s3(lab, backup_db_privileges, buckets, seafile_conf_backends,
                                                        s3, tmp_path):
    backup_buckets = buckets("backup")
    seafile_conf_backends("backup", backup_buckets)
    with Agents(lab, tmp_path) as agents:
        agents.start("primary")
        agents.start("backup")
        repo, writer = write_library(lab, files=20)
        try:
            writer.commit(repo, [Put("late.txt", b"after the first sync")])
            agents.wait_synchronized(1)
            status = agents.status()
            assert status["exit_code"] == 0
            result = agents.cmd("verify", "--data-dir", str(lab.backup.seafile_data_dir), check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert s3_objects(s3, backup_buckets) == fs_objects(lab.primary.seafile_data_dir)
        finally:
            writer.close()


# --- setup_backup.yml's part: preflight reaches each bucket and pool, the backup's sections are written --------

PLAY = """
- name: Preflight of the object storage, then the backup's [..._backend] sections
  hosts: seafile_backup
  gather_facts: false
  tasks:
    - name: Preflight
      ansible.builtin.include_role: {name: seafbackup_preflight, tasks_from: object_storage}
    - name: Sections
      ansible.builtin.include_role: {name: seafbackup_seafile_conf, tasks_from: backends}
  handlers:
    - name: Agent restart
      ansible.builtin.debug: {msg: restart}
      listen: seafbackup_agent_restart
"""


def _conf_dict(backend: Backend) -> dict[str, str]:
    values = next(iter(render_sections({ObjType.BLOCKS: backend}).values()))
    return dict(values)


def test_ansible_preflight_reaches_each_bucket_and_pool_then_writes_the_backups_sections(
        buckets, pools, tmp_path):
    """One run, two backup hosts: one given wrong buckets, a wrong key and a missing pool (preflight stops it
    and says what fails, without the key), one given the right ones (its sections are written)."""
    s3_backends, ceph_backends = buckets("backup"), pools("backup")
    database = "[database]\ntype = mysql\nhost = db\nuser = seafile\npassword = pw\ndb_name = seafile_db\n"
    wanted = {"commits": _conf_dict(s3_backends[ObjType.COMMITS]), "fs": _conf_dict(s3_backends[ObjType.FS]),
              "blocks": _conf_dict(ceph_backends[ObjType.BLOCKS])}
    wrong = {"commits": {**wanted["commits"], "key": "not-the-secret-key"},
             "fs": {**wanted["fs"], "bucket": "no-such-bucket-here"},
             "blocks": {**wanted["blocks"], "pool": "no-such-pool"}}
    hosts = {}
    for name, backends in (("wrong", wrong), ("right", wanted)):
        conf_dir = tmp_path / name
        conf_dir.mkdir()
        (conf_dir / "seafile.conf").write_text(database)
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                       "seafbackup_seafile_conf_dir": str(conf_dir),
                       "seafbackup_seafile_conf_backup_backends": backends}
    (tmp_path / "play.yml").write_text(PLAY)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {
        "vars": {"seafbackup_seafile_conf_restart_seafile": False, "seafbackup_seafile_user": ""},
        "children": {"seafile_primary": {"hosts": {"primary": {"ansible_connection": "local"}}},  # not a target
                     "seafile_backup": {"hosts": hosts}}}}))

    run = run_playbook(inventory, playbook=str(tmp_path / "play.yml"))
    assert run.recap["wrong"]["failures"] == 1 and run.recap["right"]["failures"] == 0, run.output
    output = run.output
    assert "[commit_object_backend] (commits): S3 bucket" in output and "refuses these credentials" in output
    assert "[fs_object_backend] (fs): S3 bucket no-such-bucket-here at http" in output, output
    assert "[block_backend] (blocks): Ceph pool no-such-pool does not exist" in output
    assert wanted["commits"]["key"] not in output and "not-the-secret-key" not in output
    assert (tmp_path / "wrong/seafile.conf").read_text() == database  # nothing written after a failed preflight
    conf = load_seafile_conf(tmp_path / "right")
    assert conf.backends == {ObjType.COMMITS: s3_backends[ObjType.COMMITS], ObjType.FS: s3_backends[ObjType.FS],
                             ObjType.BLOCKS: ceph_backends[ObjType.BLOCKS]}

"""Fast bulk paths for the bench: many libraries at once, and a backup seeded as if already synchronized.

`SeafileServer.create_library` is one transaction per library; here each library is one commit object
(written without fsync) plus rows inserted with executemany in chunks. The rows are the ones Seafile's
`create_new_repo` writes (Repo, Branch, RepoHead, RepoInfo, RepoOwner).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import compute_commit_id, encode_commit
from seafbackup_agent.seafile.storage import FilesystemStore, ObjType
from seafbackup_lab.lab import LabHost
from seafbackup_lab.writer import SERVER_CREATOR

CHUNK = 5000


def create_libraries(host: LabHost, count: int, *, owner: str = "bench@example.com",
                     commits: bool = True) -> list[tuple[str, str]]:
    """`count` empty libraries on `host`; returns [(repo_id, head)]. Without `commits`, only the rows: enough
    for a poll (which compares heads and reads no object), and 100k commit files less to write and copy."""
    store = FilesystemStore(host.seafile_data_dir)
    conn = connect(load_seafile_conf(host.seafile_conf_dir).database, autocommit=False)
    base = int(time.time()) - count - 10
    made: list[tuple[str, str]] = []
    try:
        for start in range(0, count, CHUNK):
            chunk = []
            for i in range(start, min(start + CHUNK, count)):
                repo_id = str(uuid.uuid4())
                ctime = base + i
                name = f"bench-{i}"
                head = compute_commit_id(root_id=EMPTY_ID, creator=SERVER_CREATOR, creator_name=owner,
                                         description="Created library", ctime=ctime)
                raw = encode_commit({
                    "commit_id": head, "root_id": EMPTY_ID, "repo_id": repo_id, "creator_name": owner,
                    "creator": SERVER_CREATOR, "description": "Created library", "ctime": ctime,
                    "parent_id": None, "second_parent_id": None, "repo_name": name, "repo_desc": "",
                    "repo_category": None, "no_local_history": 1, "version": 1,
                })
                if commits:
                    store.write(ObjType.COMMITS, repo_id, head, raw, durable=False)
                chunk.append((repo_id, head, name, ctime))
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO Repo (repo_id) VALUES (%s)", [(r,) for r, *_ in chunk])
                cur.executemany("INSERT INTO Branch (name, repo_id, commit_id) VALUES ('master', %s, %s)",
                                [(r, h) for r, h, *_ in chunk])
                cur.executemany("INSERT INTO RepoHead (repo_id, branch_name) VALUES (%s, 'master')",
                                [(r,) for r, *_ in chunk])
                cur.executemany(
                    "INSERT INTO RepoInfo (repo_id, name, update_time, version, is_encrypted, last_modifier) "
                    "VALUES (%s, %s, %s, 1, 0, %s)", [(r, n, t, owner) for r, _h, n, t in chunk])
                cur.executemany("INSERT INTO RepoOwner (repo_id, owner_id) VALUES (%s, %s)",
                                [(r, owner) for r, *_ in chunk])
            conn.commit()
            made += [(r, h) for r, h, *_ in chunk]
    finally:
        conn.close()
    return made


def heads(host: LabHost) -> list[tuple[str, str]]:
    conn = connect(load_seafile_conf(host.seafile_conf_dir).database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT repo_id, commit_id FROM Branch WHERE name='master'")
            return list(cur.fetchall())
    finally:
        conn.close()


def seed_backup_rows(backup: LabHost, rows: list[tuple[str, str]]) -> None:
    """The backup's Repo/Branch/RepoHead as the agent would have published them (sql_log_bin=0)."""
    conn = backup.mariadb.root_connection("seafile_db")
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin=0")
            for start in range(0, len(rows), CHUNK):
                part = rows[start : start + CHUNK]
                cur.executemany("INSERT IGNORE INTO Repo (repo_id) VALUES (%s)", [(r,) for r, _ in part])
                cur.executemany("INSERT IGNORE INTO RepoHead (repo_id, branch_name) VALUES (%s, 'master')",
                                [(r,) for r, _ in part])
                cur.executemany(
                    "INSERT INTO Branch (name, repo_id, commit_id) VALUES ('master', %s, %s) "
                    "ON DUPLICATE KEY UPDATE commit_id=VALUES(commit_id)", part)
            conn.commit()
    finally:
        conn.close()


def copy_storage(src_data_dir: Path, dst_data_dir: Path) -> None:
    """The primary's storage/ into the backup's seafile-data as hard links (`cp -al`) on one disk: objects are immutable
    and every writer (Seafile, the writer, the agent) creates new files by rename, so sharing inodes is safe
    and seeding a million objects takes seconds instead of minutes."""
    subprocess.run(["rm", "-rf", str(dst_data_dir / "storage")], check=True)
    # Hosts on disks of their own (bench/disks.py) cannot share inodes: a real copy then.
    same_disk = src_data_dir.stat().st_dev == dst_data_dir.stat().st_dev
    subprocess.run(["cp", "-al" if same_disk else "-a", str(src_data_dir / "storage"), str(dst_data_dir / "storage")],
                   check=True)

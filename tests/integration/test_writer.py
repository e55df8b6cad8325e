"""The Seafile data writer writes what Seafile writes: verified objects, full closures, matching rows."""

import json
import time

import pytest

from seafbackup_lab.writer import Delete, Mkdir, Put, Rename, bulk_files
from tests.seafile_checks import check_closure, head_files, read_fs


def _rows(server, sql, args):
    with server.db.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    server.db.commit()
    return rows


def test_new_library_has_the_servers_first_commit_and_rows(primary, lab):
    repo = primary.create_library("notes", "alice@example.com", desc="my notes")
    head = primary.head(repo)
    raw = (lab.primary.seafile_data_dir / "storage/commits" / repo / head[:2] / head[2:]).read_bytes()
    commit = json.loads(raw)
    assert commit["root_id"] == "0" * 40 and commit["parent_id"] is None
    assert commit["description"] == "Created library" and commit["creator"] == "0" * 40
    assert not raw.endswith(b"\n")
    assert list(commit)[:6] == ["commit_id", "root_id", "repo_id", "creator_name", "creator", "description"]
    for table in ("Repo", "RepoHead", "RepoOwner", "RepoInfo"):
        assert _rows(primary, f"SELECT COUNT(*) FROM {table} WHERE repo_id=%s", (repo,)) == ((1,),)
    assert _rows(primary, "SELECT name, commit_id FROM Branch WHERE repo_id=%s", (repo,)) == (("master", head),)


def test_commits_keep_a_verifiable_closure_and_rows_follow_the_head(primary, lab):
    repo = primary.create_library("work", "alice@example.com")
    primary.put_files(repo, {"hello.txt": b"hello world\n", "docs/a.md": b"# A\n" * 100, "empty.txt": b""})
    primary.commit(repo, [Put("docs/big.bin", bytes(range(256)) * 1000), Mkdir("docs/sub")])
    primary.commit(repo, [Rename("hello.txt", "docs/sub/hello.txt"), Delete("empty.txt")])
    primary.commit(repo, [Put("ünïcödé/文件.txt", "grüße".encode())])
    head = primary.head(repo)

    data = lab.primary.seafile_data_dir
    closure = check_closure(data, repo, repo, head)
    assert len(closure.commits) == 5
    assert len(closure.blocks) >= 5  # big.bin is cut into 64 KiB blocks

    files = head_files(data, repo, repo, head)
    assert files == {
        "/docs/a.md": b"# A\n" * 100,
        "/docs/big.bin": bytes(range(256)) * 1000,
        "/docs/sub/hello.txt": b"hello world\n",
        "/ünïcödé/文件.txt": "grüße".encode(),
    }
    size = sum(len(v) for v in files.values())
    assert _rows(primary, "SELECT size, head_id FROM RepoSize WHERE repo_id=%s", (repo,)) == ((size, head),)
    assert _rows(primary, "SELECT file_count FROM RepoFileCount WHERE repo_id=%s", (repo,)) == ((4,),)
    info = _rows(primary, "SELECT name, update_time, last_modifier FROM RepoInfo WHERE repo_id=%s", (repo,))
    assert info[0][0] == "work" and info[0][2] == "alice@example.com"
    assert info[0][1] == primary.read_commit(repo, head).ctime
    # Nothing but objects in storage: no temporary files left behind.
    assert not [p for p in data.rglob("*") if p.is_file() and len(p.name) != 38]


def test_merge_commit_has_two_parents(primary, lab):
    repo = primary.create_library("merge", "alice@example.com")
    base = primary.put_files(repo, {"a.txt": b"a"})
    side = primary.commit(repo, [Put("b.txt", b"b")], parent_id=base, move_branch=False)
    primary.commit(repo, [Put("c.txt", b"c")])
    merged = primary.commit(repo, [Put("b.txt", b"b")], second_parent_id=side, description="Auto merge by system")
    commit = primary.read_commit(repo, merged)
    assert len(commit.parents) == 2 and side in commit.parents
    assert side in check_closure(lab.primary.seafile_data_dir, repo, repo, merged).commits


def test_virtual_repo_commits_under_its_own_id_objects_in_the_origin_store(primary, lab):
    origin = primary.create_library("origin", "alice@example.com")
    primary.put_files(origin, {"shared/x.txt": b"x", "private/y.txt": b"y"})
    vrepo = primary.create_virtual_repo(origin, "shared", "shared folder", "bob@example.com")
    primary.commit(vrepo, [Put("z.txt", b"z")], modifier="bob@example.com")
    data = lab.primary.seafile_data_dir
    assert (data / "storage/commits" / vrepo).is_dir()
    assert not (data / "storage/fs" / vrepo).exists() and not (data / "storage/blocks" / vrepo).exists()
    assert set(head_files(data, vrepo, origin, primary.head(vrepo))) == {"/x.txt", "/z.txt"}
    row = _rows(primary, "SELECT origin_repo, path FROM VirtualRepo WHERE repo_id=%s", (vrepo,))
    assert row == ((origin, "/shared"),)


def test_encrypted_library_carries_its_parameters_in_every_commit(primary):
    repo = primary.create_library("secret", "alice@example.com", password="s3cret")
    primary.put_files(repo, {"a.txt": b"ciphertext stand-in"})
    for cid in (primary.head(repo), primary.read_commit(repo, primary.head(repo)).parent_id):
        doc = json.loads(primary.read_commit(repo, cid).raw)
        assert doc["encrypted"] == "true" and doc["enc_version"] == 2
        assert len(doc["magic"]) == 64 and len(doc["key"]) == 96
    assert _rows(primary, "SELECT is_encrypted FROM RepoInfo WHERE repo_id=%s", (repo,)) == ((1,),)


def test_delete_library_moves_it_to_the_trash_and_keeps_objects(primary, lab):
    repo = primary.create_library("doomed", "alice@example.com")
    primary.put_files(repo, {"a.txt": b"a"})
    head = primary.head(repo)
    primary.delete_library(repo)
    for table in ("Repo", "Branch", "RepoHead", "RepoInfo", "RepoOwner"):
        assert _rows(primary, f"SELECT COUNT(*) FROM {table} WHERE repo_id=%s", (repo,)) == ((0,),)
    assert _rows(primary, "SELECT head_id FROM RepoTrash WHERE repo_id=%s", (repo,)) == ((head,),)
    check_closure(lab.primary.seafile_data_dir, repo, repo, head)


def test_history_limit_rows(primary):
    repo = primary.create_library("limited", "alice@example.com")
    primary.set_history_limit(repo, 30)
    primary.set_valid_since(repo, 1234)
    assert _rows(primary, "SELECT days FROM RepoHistoryLimit WHERE repo_id=%s", (repo,)) == ((30,),)
    assert _rows(primary, "SELECT timestamp FROM RepoValidSince WHERE repo_id=%s", (repo,)) == ((1234,),)


def test_a_store_of_many_objects_is_quick_to_make(primary, lab):
    repo = primary.create_library("bulk", "alice@example.com")
    start = time.monotonic()
    primary.commit(repo, list(bulk_files(5000, 100)))
    elapsed = time.monotonic() - start
    objects = sum(1 for p in (lab.primary.seafile_data_dir / "storage").rglob("*") if p.is_file())
    print(f"\nwriter: {objects} objects in {elapsed:.2f}s ({objects / elapsed:.0f} objects/s)")
    assert objects >= 10_000


@pytest.mark.parametrize("name", ["z", "a", "B", "é", "ä"])
def test_dirents_are_in_descending_byte_order(primary, lab, name):
    repo = primary.create_library("order", "alice@example.com")
    primary.put_files(repo, {n: n.encode() for n in ("m", name, "Z0", "é2")})
    root = primary.read_commit(repo, primary.head(repo)).root_id
    names = [d["name"] for d in read_fs(lab.primary.seafile_data_dir, repo, root)["dirents"]]
    assert [n.encode() for n in names] == sorted((n.encode() for n in names), reverse=True)

"""`seaf-backup-cmd verify` on a real backup (lab MariaDB + Seafile data copied by local-sync): ok when whole,
behind when the primary moved on, missing / corrupt with the objects' ids, sampled, and over the signed API."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import zlib
from pathlib import Path

from seafbackup_agent.cli.progress import parse_line
from seafbackup_agent.errors import ExitCode
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_agent.sync.verify import check_closure as verify_closure
from seafbackup_lab.writer import Put, bulk_files
from tests.agents import primary_url, wait_ready
from tests.backup_storage import S3Object, object_path
from tests.helpers import root_sql
from tests.playbooks import run_module
from tests.seafile_checks import check_closure


def _cmd(lab, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seafbackup_agent.cli.main", *args, "--conf-dir", str(lab.backup.seafile_conf_dir),
         "--data-dir", str(lab.backup.seafile_data_dir)],
        capture_output=True, text=True, check=False)


def _local(lab) -> list[str]:
    return ["--source-conf-dir", str(lab.primary.seafile_conf_dir), "--source-data-dir",
            str(lab.primary.seafile_data_dir)]


def _synced(primary, lab) -> dict[str, str]:
    work = primary.create_library("work", "alice@example.com")
    primary.put_files(work, {"a.txt": b"a" * 5000, "docs/b.md": b"# B\n" * 300})
    primary.commit(work, [Put("docs/c.bin", bytes(range(256)) * 300), *bulk_files(40, 2000, seed=3)])
    vrepo = primary.create_virtual_repo(work, "docs", "docs", "bob@example.com")
    limited = primary.create_library("limited", "alice@example.com")
    primary.put_files(limited, {"l.txt": b"old"})
    primary.set_history_limit(limited, 30)
    primary.commit(limited, [Put("l.txt", b"new")])
    # With the rows replication brings to a real backup: the virtual repo's origin and the history limit.
    done = _cmd(lab, "local-sync", "--with-library-rows", *_local(lab))
    assert done.returncode == 0, done.stderr
    return {"work": work, "vrepo": vrepo, "limited": limited}


def _object_path(lab, kind: str, store: str, obj_id: str) -> Path | S3Object:
    return object_path(lab.backup.seafile_data_dir, kind, store, obj_id)  # or its key (`--backup-storage=s3`)


def test_verify_finds_a_whole_backup_ok_and_names_what_is_behind_missing_or_corrupt(primary, lab,
                                                                                     backup_db_privileges):
    libs = _synced(primary, lab)
    work = libs["work"]

    done = _cmd(lab, "verify", "--json", *_local(lab))
    assert done.returncode == 0, done.stdout + done.stderr
    reports = {r["repo_id"]: r for r in json.loads(done.stdout)}
    assert set(reports) == set(libs.values()) and {r["verdict"] for r in reports.values()} == {"ok"}
    expected = check_closure(lab.backup.seafile_data_dir, work, work, primary.head(work))
    closure = reports[work]["closure"]
    assert (closure["commits"], closure["fs_objects"], closure["blocks"]) == (
        len(expected.commits), len(expected.fs), len(expected.blocks))
    assert closure["blocks_read"] == closure["blocks"] > 40

    plain = _cmd(lab, "verify", *_local(lab), work)  # not a terminal: plain lines, no progress bar
    assert plain.returncode == 0 and plain.stdout.startswith(f"{work} ok: head {primary.head(work)[:12]}, ")
    assert "\x1b[" not in plain.stdout
    on_terminal = subprocess.run(  # `script` gives it a terminal: the progress bar, then the same line
        ["script", "-qec", shlex.join([sys.executable, "-m", "seafbackup_agent.cli.main", "verify", *_local(lab),
                                       "--conf-dir", str(lab.backup.seafile_conf_dir), "--data-dir",
                                       str(lab.backup.seafile_data_dir), work]), "/dev/null"],
        capture_output=True, text=True, check=False, env={**os.environ, "COLUMNS": "200"})
    assert on_terminal.returncode == 0 and "\x1b[" in on_terminal.stdout, on_terminal.stdout
    assert f"{work} ok: head {primary.head(work)[:12]}, " in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", on_terminal.stdout)

    primary.commit(libs["limited"], [Put("l.txt", b"newer")])
    behind = _cmd(lab, "verify", *_local(lab))
    assert behind.returncode == 5
    assert f"{libs['limited']} behind (primary at {primary.head(libs['limited'])[:12]})" in behind.stdout

    block = sorted(expected.blocks)[0]
    _object_path(lab, "blocks", work, block).unlink()
    missing = _cmd(lab, "verify", *_local(lab), work)
    assert missing.returncode == 6 and f"{work} missing 1:" in missing.stdout
    assert f"  missing block {block}" in missing.stdout

    fs_id = next(f for f in sorted(expected.fs) if f != json.loads(
        primary.store.read(ObjType.COMMITS, work, primary.head(work)))["root_id"])
    path = _object_path(lab, "fs", work, fs_id)
    intact = path.read_bytes()
    path.write_bytes(zlib.compress(zlib.decompress(intact).replace(b'"', b"'", 1)))
    corrupt = _cmd(lab, "verify", "--json", *_local(lab), work)
    assert corrupt.returncode == 7
    [report] = json.loads(corrupt.stdout)
    assert report["verdict"] == "corrupt" and report["closure"]["corrupt"] == 1
    assert report["closure"]["first_corrupt"][0]["obj_id"] == fs_id

    # Whole again: the corrupt directory may hold the missing block, which the walk could not reach then.
    path.write_bytes(intact)
    sampled = _cmd(lab, "verify", "--json", "--no-compare", "--sample", "0.2", work)
    [report] = json.loads(sampled.stdout)
    assert report["closure"]["blocks_read"] < report["closure"]["blocks"]
    assert report["closure"]["missing"] == 1  # every block is still checked to be there

    bad = _cmd(lab, "verify", "--sample", "0", work)
    assert bad.returncode == 2 and "give a fraction in (0, 1]" in bad.stderr


def test_the_seafbackup_verify_module_returns_each_verdict_and_fails_on_a_missing_block(primary, lab,
                                                                                       backup_db_privileges):
    libs = _synced(primary, lab)
    args = {"conf_dir": str(lab.backup.seafile_conf_dir), "data_dir": str(lab.backup.seafile_data_dir),
            "agent_cmd": str(Path(sys.executable).parent / "seaf-backup-cmd"), "compare": "local",
            "source_conf_dir": str(lab.primary.seafile_conf_dir),
            "source_data_dir": str(lab.primary.seafile_data_dir)}
    inventory = lab.dir / "inventory.yml"

    rc, result = run_module(inventory, "backup", "seafbackup_verify", args)
    assert rc == 0, result
    assert result["verdict"] == "ok" and result["counts"] == {"ok": 3, "behind": 0, "missing": 0, "corrupt": 0}
    assert {r["repo_id"] for r in result["libraries"]} == set(libs.values()) and not result["changed"]
    assert result["not_ok"] == []

    old = primary.head(libs["limited"])
    head = primary.commit(libs["limited"], [Put("l.txt", b"newer")])
    rc, result = run_module(inventory, "backup", "seafbackup_verify", args)
    assert rc != 0 and f"{libs['limited']}: behind" in result["msg"] and head in result["msg"], result
    rc, result = run_module(inventory, "backup", "seafbackup_verify", {**args, "fail_on_behind": False})
    assert rc == 0 and result["verdict"] == "behind" and result["exit_code"] == 5, result
    assert result["not_ok"] == [f"{libs['limited']}: behind (backup at {old}, primary at {head})"]

    work = libs["work"]
    block = sorted(check_closure(lab.backup.seafile_data_dir, work, work, primary.head(work)).blocks)[0]
    _object_path(lab, "blocks", work, block).unlink()
    rc, result = run_module(inventory, "backup", "seafbackup_verify",
                            {**args, "libraries": [work], "sample": 0.2, "fail_on_behind": False})
    assert rc != 0 and result["verdict"] == "missing" and result["counts"]["missing"] == 1, result
    assert f"{work}: missing" in result["msg"] and f"missing block {block}" in result["msg"]
    [report] = result["libraries"]
    assert report["closure"]["first_missing"][0]["obj_id"] == block

    rc, result = run_module(inventory, "backup", "seafbackup_verify", {**args, "sample": 0})
    assert rc != 0 and "sample must be above 0 and at most 1" in result["msg"]
    rc, result = run_module(inventory, "backup", "seafbackup_verify", {**args, "compare": "primary"})
    assert rc != 0 and result["msg"].startswith("seaf-backup-cmd verify failed: ") and result["rc"] == 2, result


def test_verify_compares_heads_with_the_primary_over_the_signed_api(primary, lab, agents):
    libs = _synced(primary, lab)
    agents.start("primary")
    wait_ready(primary_url(lab))
    done = _cmd(lab, "verify", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {r["verdict"] for r in json.loads(done.stdout)} == {"ok"}
    head = primary.commit(libs["work"], [Put("new.txt", b"new")])
    behind = _cmd(lab, "verify", libs["work"])
    assert behind.returncode == 5 and f"behind (primary at {head[:12]})" in behind.stdout
    agents.stop("primary")
    unreachable = _cmd(lab, "verify", libs["work"])
    assert unreachable.returncode == ExitCode.PEER_UNREACHABLE and "unreachable" in unreachable.stderr


def test_the_cost_of_a_full_check_per_million_objects(primary, lab, backup_db_privileges):
    """Not a speed assertion: measures what a full and a sampled check cost on a generated store."""
    repo = primary.create_library("measured", "alice@example.com")
    for seed in range(4):
        primary.commit(repo, list(bulk_files(5000, 4096, seed=seed)))
    store = SeafileInstallation.open(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir)
    try:
        results = {}
        for sample in (1.0, 0.05):
            started = time.perf_counter()
            check = verify_closure(store.store, repo, repo, primary.head(repo), sample=sample)
            results[sample] = (check, time.perf_counter() - started)
    finally:
        store.close()
    full, _ = results[1.0]
    assert full.missing == full.corrupt == 0 and full.objects > 40_000
    for sample, (check, seconds) in results.items():
        per_million = seconds / check.objects * 1e6
        print(f"\nverify --sample {sample}: {check.objects} objects ({check.fs_objects} fs, {check.blocks} blocks, "
              f"{check.bytes_read / 2**20:.0f} MiB read) in {seconds:.1f}s = {per_million / 60:.1f} min per "
              f"million objects")


def _progress_lines(stderr: str) -> list[dict[str, str]]:
    """Every line of stderr, parsed as a plain progress line (fails on anything else)."""
    return [parse_line(line) for line in stderr.splitlines()]


def _assert_climbs_to(lines: list[dict[str, str]], libraries: int, objects: int, nbytes: int) -> None:
    figures = [(int(f["libraries"].split("/")[0]), int(f["objects"]), int(f["bytes"])) for f in lines]
    assert figures == sorted(figures) and len(lines) > libraries  # monotonic, and lines while working
    assert {f["libraries"].split("/")[1] for f in lines} == {str(libraries)}
    assert figures[-1] == (libraries, objects, nbytes) and lines[-1]["library"] == "-"


def test_local_sync_and_verify_print_parseable_progress_lines_off_a_terminal(primary, lab, backup_db_privileges):
    repos = [primary.create_library(f"p{i}", "alice@example.com") for i in range(3)]
    for i, repo in enumerate(repos):
        primary.commit(repo, list(bulk_files(300, 3000, seed=20 + i)))
    done = _cmd(lab, "local-sync", *_local(lab), "--json", "--progress-interval", "0")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    copied = sum(r["commits"] + r["fs_objects"] + r["blocks"] for r in results)
    _assert_climbs_to(_progress_lines(done.stderr), 3, copied, sum(r["bytes"] for r in results))

    checked = _cmd(lab, "verify", "--no-compare", "--json", "--progress-interval", "0")
    assert checked.returncode == 0, checked.stderr
    reports = json.loads(checked.stdout)
    closures = [r["closure"] for r in reports]
    walked = sum(c["commits"] + c["fs_objects"] + c["blocks"] for c in closures)
    _assert_climbs_to(_progress_lines(checked.stderr), 3, walked, sum(c["bytes_read"] for c in closures))

    # Without --json, on a log: the same lines on stderr, the summary table on stdout.
    again = _cmd(lab, "local-sync", *_local(lab))
    assert again.returncode == 0 and "local-sync" in again.stdout and "progress" not in again.stdout
    assert [f["libraries"] for f in _progress_lines(again.stderr)][-1] == "3/3"


LIBRARY_TABLES = ("RepoOwner", "RepoInfo", "RepoSize", "RepoFileCount", "VirtualRepo", "RepoHistoryLimit",
                  "RepoValidSince")


def _library_rows(host, repo: str) -> dict[str, list]:
    """The library's rows Seafile lists and serves it from, without the tables' own row ids."""
    out = {}
    for table in ("Repo", "Branch", "RepoHead", *LIBRARY_TABLES):
        rows = root_sql(host, f"SELECT * FROM seafile_db.{table} WHERE repo_id='{repo}'")
        out[table] = sorted(tuple(row[1:]) for row in rows)  # column 0 is the AUTO_INCREMENT id
    return out


def test_local_sync_with_library_rows_copies_every_row_a_virtual_repo_and_an_encrypted_library_need(
        primary, lab, backup_db_privileges):
    work = primary.create_library("work", "alice@example.com")
    primary.put_files(work, {"shared/x.txt": b"x" * 3000, "y.txt": b"y"})
    vrepo = primary.create_virtual_repo(work, "shared", "shared", "bob@example.com")
    secret = primary.create_library("secret", "carol@example.com", password="s3cret")
    primary.put_files(secret, {"s.txt": b"s"})
    primary.set_history_limit(secret, 30)
    primary.set_valid_since(secret, 1_700_000_000)
    root_sql(lab.backup, f"INSERT INTO seafile_db.RepoTrash (repo_id, repo_name) VALUES ('{secret}', 'old')",
             f"INSERT INTO seafile_db.GarbageRepos (repo_id) VALUES ('{secret}')", "COMMIT")

    plain = _cmd(lab, "local-sync", *_local(lab))
    assert plain.returncode == 0, plain.stderr
    assert _library_rows(lab.backup, vrepo)["VirtualRepo"] == []  # without the option: objects and head only

    done = _cmd(lab, "local-sync", "--with-library-rows", *_local(lab))
    assert done.returncode == 0, done.stdout + done.stderr
    for repo in (work, vrepo, secret):
        source, copied = _library_rows(lab.primary, repo), _library_rows(lab.backup, repo)
        assert copied == source, repo
        for table in ("Repo", "Branch", "RepoHead", "RepoOwner", "RepoInfo"):
            assert copied[table], (repo, table)
    [(_, origin, path, _)] = _library_rows(lab.backup, vrepo)["VirtualRepo"]
    assert (origin, path) == (work, "/shared")
    [(_, _, _, _, is_encrypted, *_)] = _library_rows(lab.backup, secret)["RepoInfo"]
    assert is_encrypted == 1
    assert _library_rows(lab.backup, secret)["RepoHistoryLimit"] == [(secret, 30)]
    for table in ("RepoTrash", "GarbageRepos"):  # else the target's trash purge or GC would delete the copy
        assert not root_sql(lab.backup, f"SELECT * FROM seafile_db.{table} WHERE repo_id='{secret}'")
    verified = _cmd(lab, "verify", "--json", *_local(lab))
    assert verified.returncode == 0 and {r["verdict"] for r in json.loads(verified.stdout)} == {"ok"}

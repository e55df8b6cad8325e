"""The agent service end to end on the lab: primary agent -> HTTP -> backup agent -> database."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

from seafbackup_agent import __version__
from seafbackup_agent.cli.agent_cmds import format_status
from seafbackup_lab.lab import LAB_SYNC_TOKEN
from seafbackup_lab.writer import Put, bulk_files
from tests.agents import Agents, backup_head
from tests.helpers import root_sql as _root_sql
from tests.seafile_checks import check_closure, head_files


def _wait_head(lab, repo, head, timeout=20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if backup_head(lab, repo) == head:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"backup head of {repo} did not reach {head} in {timeout}s")


def test_backup_follows_the_primary_within_seconds(primary, lab, agents):
    repos = [primary.create_library(f"lib{i}", "alice@example.com") for i in range(3)]
    first_head = primary.put_files(repos[0], {"a.txt": b"a", "d/b.bin": os.urandom(100_000)})
    agents.start("primary", journal=True)  # as under systemd: journald stamps the lines
    agents.start("backup")
    doc = agents.wait_synchronized(3)
    assert doc["counts"] == {"synchronized": 3, "waiting": 0, "syncing": 0, "failed": 0, "unknown": 0}

    delays = []
    requests_before = _primary_requests(agents)
    for i in range(20):
        head = primary.commit(repos[i % 3], [Put(f"f{i}.txt", os.urandom(1000))])
        delays.append(_wait_head(lab, repos[i % 3], head))
    # An ordinary head move is one request to the primary (the heartbeats' few come on top; three a move before
    # the library's answer brought its objects along).
    assert 20 <= _primary_requests(agents) - requests_before < 30
    delays.sort()
    print(f"\nhead move -> backup: p50 {statistics.median(delays) * 1000:.0f} ms, "
          f"p99 {delays[-1] * 1000:.0f} ms over {len(delays)} commits")
    for repo in repos:
        check_closure(lab.backup.seafile_data_dir, repo, repo, backup_head(lab, repo))
        assert head_files(lab.backup.seafile_data_dir, repo, repo, backup_head(lab, repo)) == head_files(
            lab.primary.seafile_data_dir, repo, repo, primary.head(repo))

    # A library created, one deleted, a virtual repo, a history-limited library.
    new = primary.create_library("new", "alice@example.com")
    primary.delete_library(repos[2])
    vrepo = primary.create_virtual_repo(repos[0], "d", "shared d", "bob@example.com")
    primary.set_history_limit(repos[1], 7)
    primary.commit(repos[1], [Put("limited.txt", b"x")])
    agents.wait_synchronized(4)
    assert backup_head(lab, new) == primary.head(new)
    assert backup_head(lab, repos[2]) is None
    assert backup_head(lab, vrepo) == primary.head(vrepo)
    check_closure(lab.backup.seafile_data_dir, vrepo, repos[0], primary.head(vrepo))

    text = agents.cmd("status").stdout
    assert text.startswith("Total number of libraries: 4\nNumber of synchronized libraries: 4\n")
    assert "List of libraries failed to sync:" in text
    assert 'seafbackup_libraries{state="synchronized"} 4.0' in _metrics(agents)
    assert LAB_SYNC_TOKEN not in agents.log("primary") + agents.log("backup")
    assert lab.db_password not in agents.log("primary") + agents.log("backup")
    assert "change detection: tailing the binlog of seafile_db" in agents.log("primary")

    assert agents.stop("backup") == 0  # SIGTERM: orderly shutdown
    assert agents.stop("primary") == 0
    assert not (agents.tmp / "state/agent.sock").exists()
    _check_the_logs(lab, agents, repos[0], first_head)


def _metrics(agents) -> str:
    return subprocess.run(["curl", "-s", "--unix-socket", str(agents.tmp / "state/agent.sock"),
                           "http://agent/metrics"], capture_output=True, text=True, check=True).stdout


def _primary_requests(agents) -> int:
    found = re.search(r"(?m)^seafbackup_primary_requests_total (\S+)$", _metrics(agents))
    assert found, "no seafbackup_primary_requests_total in the backup's metrics"
    return int(float(found.group(1)))


def _check_the_logs(lab, agents, repo, head):
    """At INFO by default: one start-up line, one line per sync with its counts and duration, no line per request;
    under journald no timestamps of its own but the priority, which journald reads."""
    p, b = lab.primary.address, lab.backup.address
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    backup_log, primary_log = agents.log("backup"), agents.log("primary")
    assert re.search(rf"(?m)^{stamp}INFO seafbackup {__version__} agent started: mode backup, peer \(primary\) "
                     rf"http://{p}:8090, change detection notifications from the primary and a full poll every "
                     rf"[0-9.e-]+ h, listening on http://{b}:8091, metrics off, control socket \S+, 2 workers$",
                     backup_log), backup_log[:2000]
    assert re.search(rf"(?m)^{stamp}INFO library {repo}: synced None -> {head}: 2 commits, \d+ fs objects, "
                     rf"\d+ blocks, \d+ bytes in \d+\.\d\ds$", backup_log), backup_log[:4000]
    assert re.search(rf"(?m)^<6>INFO seafbackup {__version__} agent started: mode primary, peer \(backup\) "
                     rf"http://{b}:8091, change detection binlog \(server id \d+; information_schema polling if the "
                     rf"binlog cannot be read\), listening on http://{p}:8090, metrics off, control socket \S+, "
                     rf"instance \w+$", primary_log), primary_log[:2000]
    assert primary_log.rstrip().endswith("<6>INFO agent stopped")
    assert all(line.startswith("<") for line in primary_log.splitlines()), primary_log[:2000]
    assert '"GET /v1/' not in primary_log and '"POST /v1/' not in backup_log  # access logs are DEBUG


def test_poll_catches_up_when_notifications_are_lost(primary, lab, agents):
    repo = primary.create_library("polled", "alice@example.com")
    agents.start("primary")
    agents.start("backup")
    agents.wait_synchronized(1)
    # The primary agent is down while the head moves: when it comes back it starts from the current
    # heads, so this change is never notified. Only the poll (every 0.002 h = 7.2 s) can find it.
    agents.stop("primary")
    head = primary.commit(repo, [Put("while-away.txt", b"x")])
    agents.start("primary")
    waited = _wait_head(lab, repo, head, timeout=20)
    print(f"\npoll caught the unnotified change after {waited:.1f}s")


def test_kill_9_mid_sync_then_restart_is_consistent_and_complete(primary, lab, agents):
    repos = [primary.create_library(f"big{i}", "alice@example.com") for i in range(2)]
    for i, repo in enumerate(repos):
        primary.commit(repo, list(bulk_files(2000, 4000, seed=i)))
    agents.start("primary")
    agents.start("backup")
    time.sleep(1.5)
    agents.stop("backup", signal.SIGKILL)
    for repo in repos:
        head = backup_head(lab, repo)
        if head:
            check_closure(lab.backup.seafile_data_dir, repo, repo, head)
    agents.start("backup")
    agents.wait_synchronized(2, timeout=60)
    for repo in repos:
        assert head_files(lab.backup.seafile_data_dir, repo, repo, primary.head(repo)) == head_files(
            lab.primary.seafile_data_dir, repo, repo, primary.head(repo))


def test_status_and_sync_force_with_a_corrupt_block_on_the_primary(primary, lab, agents):
    good = primary.create_library("good", "alice@example.com")
    bad = primary.create_library("bad", "alice@example.com")
    primary.put_files(bad, {"ok.txt": b"fine", "broken.bin": b"will be corrupted"})
    [block] = [p for p in (lab.primary.seafile_data_dir / "storage/blocks" / bad).rglob("*")
               if p.is_file() and p.read_bytes() == b"will be corrupted"]
    block.write_bytes(b"corrupted on disk")
    agents.start("primary")
    agents.start("backup")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = agents.status()
        if doc["counts"]["failed"] == 1 and doc["counts"]["synchronized"] == 1:
            break
        time.sleep(0.1)
    lines = format_status(doc).splitlines()
    # Seafile's own layout: the five counts, then the two lists of ids; seafbackup's lines come after.
    assert lines[4] == "Number of libraries failed to sync: 1"
    assert lines[lines.index("List of libraries failed to sync:") + 1] == bad
    failed = next(lib for lib in doc["libraries"] if lib["repo_id"] == bad)
    assert "does not match its id" in failed["reason"]
    assert backup_head(lab, bad) is None and backup_head(lab, good) == primary.head(good)

    result = agents.cmd("sync", bad, check=False)
    assert result.returncode == 1 and "failed to sync" in result.stderr and block.parent.name in result.stderr
    result = agents.cmd("sync", "--force", bad)
    assert "synchronized" in result.stdout and "skipped block object" in result.stdout
    assert backup_head(lab, bad) == primary.head(bad)
    assert agents.status()["counts"]["failed"] == 0

    bad_id = agents.cmd("sync", "not-a-uuid", check=False)
    assert bad_id.returncode == 2 and "malformed library id" in bad_id.stderr


def test_commands_say_when_the_agent_is_not_running(lab, agents):
    result = agents.cmd("status", check=False)
    assert result.returncode == 4 and "agent is not running" in result.stderr


def _store_on_disk(data_dir: Path) -> tuple[int, int]:
    """(objects, bytes) of a store's commits, fs objects and blocks: what a first sync copies into it."""
    files = [p for kind in ("commits", "fs", "blocks") for p in (data_dir / "storage" / kind).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _control_get(agents: Agents, path: str) -> str:
    return subprocess.run(["curl", "-s", "--unix-socket", str(agents.tmp / "state/agent.sock"), f"http://agent{path}"],
                          capture_output=True, text=True, check=True).stdout


def test_first_sync_progress_is_monotonic_and_ends_at_the_totals(primary, lab, agents):
    repos = [primary.create_library(f"first{i}", "alice@example.com") for i in range(4)]
    for i, repo in enumerate(repos):
        # Distinct contents: every block is copied once, so the store on disk is exactly what was copied.
        primary.commit(repo, list(bulk_files(1000, 4000, seed=10 + i)))
        primary.commit(repo, [Put("second.txt", f"second commit of {i}".encode())])
    sizes = dict(_root_sql(lab.primary, "SELECT repo_id, size FROM seafile_db.RepoSize"))
    agents.start("primary")
    agents.start("backup")
    samples = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        doc = json.loads(_control_get(agents, "/status"))
        samples.append(doc)
        progress = doc["progress"]
        if progress["libraries_total"] == 4 and not progress["active"] and doc["counts"]["synchronized"] == 4:
            break
    else:
        raise AssertionError(f"first sync not done: {samples[-1]}")

    progresses = [s["progress"] for s in samples if s["progress"]["libraries_total"]]
    for earlier, later in itertools.pairwise(progresses):
        for key in ("libraries_done", "objects", "bytes"):
            assert later[key] >= earlier[key], (key, earlier, later)
    per_sync: dict[tuple[str, float], list[dict]] = {}  # a poll during a sync may run it once more
    for progress in progresses:
        assert progress["libraries_total"] == 4
        for lib in progress["libraries"]:
            per_sync.setdefault((lib["repo_id"], lib["started_at"]), []).append(lib)
    for (repo, _started), seen in per_sync.items():
        for earlier, later in itertools.pairwise(seen):
            assert later["objects"] >= earlier["objects"] and later["bytes"] >= earlier["bytes"], (repo, seen)
        # A library new on the backup: its bytes are estimated from the primary's RepoSize (None before the
        # sync's first report; a second sync of it finds it on the backup, with nothing to estimate).
        assert {lib["estimated_bytes"] for lib in seen} - {None} <= {sizes[repo]}
        assert {lib["commits_total"] for lib in seen} <= {None, 0, 3}  # creation + the two commits above
    assert {lib["estimated_bytes"] for seen in per_sync.values() for lib in seen} - {None} <= set(sizes.values())
    assert {lib["estimated_bytes"] for seen in per_sync.values() for lib in seen} - {None}, "no estimate shown"

    final = progresses[-1]
    objects, nbytes = _store_on_disk(lab.backup.seafile_data_dir)
    assert (final["libraries_done"], final["libraries_remaining"], final["libraries"]) == (4, 0, [])
    assert (final["objects"], final["bytes"]) == (objects, nbytes)
    assert objects > 4 * 1000 * 2  # each library: 1000 files, each a file object and a block

    # While it ran, the text kept Seafile's layout and added the progress after seafbackup's own lines.
    active = [s for s in samples if s["progress"]["active"] and s["progress"]["libraries"]]
    assert active, "no sample caught the sync running"
    lines = format_status(active[-1]).splitlines()
    assert lines[0] == "Total number of libraries: " + str(active[-1]["total"])
    assert lines.index("List of libraries failed to sync:") < lines.index(
        next(line for line in lines if line.startswith("Database replication lag:")))
    progress_at = next(i for i, line in enumerate(lines) if line.startswith("Sync progress: "))
    assert progress_at > lines.index(next(line for line in lines if line.startswith("Database replication lag:")))
    assert f"libraries done, {active[-1]['progress']['objects']} objects" in lines[progress_at]
    assert any(line.startswith(f"  {lib['repo_id']}: ") for lib in active[-1]["progress"]["libraries"]
               for line in lines)

    metrics = _control_get(agents, "/metrics")
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#"))
    assert float(values["seafbackup_copied_bytes_total"]) == nbytes
    assert float(values["seafbackup_libraries_remaining"]) == 0
    assert float(values["seafbackup_sync_in_progress_bytes"]) == 0

"""A Seafile cluster as the primary, end to end with the real playbooks: two Seafile nodes sharing one
seafile-data, a three-node Galera cluster, one backup. One lab, one setup_backup.yml from scratch, then in file
order: the second run, changes through either node, node 1's agent killed, Galera's apply lag, the replication
source lost and the replication moved by GTID, the failover drill with the cluster fenced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from seafbackup_agent.cli.agent_cmds import format_status
from seafbackup_lab.cluster import GALERA_NODES, SEAFILE_NODES, row_checksums
from seafbackup_lab.services import UnitService
from seafbackup_lab.writer import Put, SeafileServer
from tests.agents import backup_head
from tests.playbooks import query, replica_status, run_module, run_playbook

# Host-local tables, never replicated (setup_backup.yml's default ignore list but the agent's three tables).
HOST_LOCAL = {
    "seahub_db.base_userlastlogin", "seahub_db.django_session", "seahub_db.sysadmin_extra_userloginlog",
    "seahub_db.UserTrafficStat", "seahub_db.FileAudit", "seahub_db.FileUpdate", "seahub_db.PermAudit",
    "seahub_db.Event", "seahub_db.UserEvent", "seahub_db.avatar_avatar", "seahub_db.avatar_groupavatar",
    "seahub_db.avatar_uploaded",
}
AGENT_TABLES = {"seafile_db.Repo", "seafile_db.Branch", "seafile_db.RepoHead"}
# The fresh run installs the agent on three hosts (its venv, 90 s of the fresh run at load 10 on the 2-core machine).
pytestmark = pytest.mark.timeout(900)
MOVE = ("-e", "seafbackup_replication_source=node2", "--tags", "seafbackup_replication")


def _inventory(lab):
    return lab.dir / "inventory.yml"


def _writer(lab, node):
    host = lab.hosts[node]
    return SeafileServer(host.seafile_conf_dir, host.seafile_data_dir, block_size=64 * 1024)


def _status(lab) -> dict:
    """`seaf-backup-cmd status --json` on the backup (exit 0 healthy, 5 stale, 6 failed libraries)."""
    result = subprocess.run([sys.executable, "-m", "seafbackup_agent.cli.main", "status", "--json", "--conf-dir",
                             str(lab.backup.seafile_conf_dir)], capture_output=True, text=True, check=False)
    assert result.returncode in (0, 5, 6), result.stderr
    doc = json.loads(result.stdout)
    doc["exit_code"] = result.returncode
    return doc


def _wait_head(lab, repo, head, timeout=20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if backup_head(lab, repo) == head:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"backup head of {repo} did not reach {head} in {timeout}s")


def _wait(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _seqno(position: str) -> int:
    """The sequence number of the cluster's GTID domain in a position like `1-1-504`."""
    return max(int(part.split("-")[2]) for part in position.split(",") if part.startswith("1-"))


def _replicated(sums: dict) -> dict:
    return {table: value for table, value in sums.items() if table not in HOST_LOCAL}


def _caught_up(lab, source: str) -> None:
    """Wait until the backup has applied everything the source's binlog holds."""
    [row] = query(lab, source, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
    [done] = query(lab, "backup", "SELECT MASTER_GTID_WAIT(%s, 30) AS r", (row["pos"],))
    assert done["r"] == 0, replica_status(lab)


@pytest.fixture(scope="module")
def seeded(cluster_lab, state, timings):
    """Libraries made through both nodes, then setup_backup.yml from scratch."""
    if "first_run" not in state:
        with _writer(cluster_lab, "node1") as one, _writer(cluster_lab, "node2") as two:
            state["repo"] = one.create_library("made through node 1", "alice@example.com")
            one.put_files(state["repo"], {"a.txt": b"a", "d/b.bin": os.urandom(50_000)})
            state["repo2"] = two.create_library("made through node 2", "bob@example.com")
        run = run_playbook(_inventory(cluster_lab))
        timings["fresh run"] = run.seconds
        assert run.rc == 0, run.output[-4000:]
        state["first_run"] = run
    return cluster_lab


def test_fresh_run_pairs_every_node_and_replicates_from_the_source(seeded):
    lab = seeded
    status = replica_status(lab)
    assert status["Master_Host"] == lab.hosts["node1"].address and status["Using_Gtid"] == "Slave_Pos"
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
    urls = [f"http://{lab.hosts[n].address}:8090" for n in SEAFILE_NODES]
    backup_conf = (lab.backup.seafile_conf_dir / "seafile.conf").read_text()
    assert f"primary_url = {', '.join(urls)}" in backup_conf
    tokens = set()
    for node in SEAFILE_NODES:
        conf = (lab.hosts[node].seafile_conf_dir / "seafile.conf").read_text()
        assert f"backup_url = http://{lab.backup.address}:8091" in conf
        tokens.add(conf.split("sync_token = ", 1)[1].split("\n", 1)[0])
        assert UnitService("seafbackup-agent", lab.hosts[node].root).pid() is not None
    assert len(tokens) == 1 and f"sync_token = {tokens.pop()}" in backup_conf
    # A Galera cluster keeps its own configuration: no drop-in, no restart.
    for node in GALERA_NODES:
        assert not (lab.hosts[node].mariadb.paths.conf_d / "60-seafbackup-primary.cnf").exists()


def test_second_run_changes_nothing(seeded, timings):
    run = run_playbook(_inventory(seeded))
    timings["second run"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert {host: counts["changed"] for host, counts in run.recap.items()} == {
        "node1": 0, "node2": 0, "node3": 0, "backup": 0}


def test_a_change_through_either_node_reaches_the_backup_once(seeded, state):
    lab = seeded
    repo = state["repo"]
    _wait(lambda: _status(lab)["exit_code"] == 0, "the backup is not healthy", timeout=30)
    before = _status(lab)["notifications"]
    moves, delays = 8, []
    with _writer(lab, "node1") as one, _writer(lab, "node2") as two:
        for i in range(moves):
            head = (one if i % 2 == 0 else two).commit(repo, [Put(f"f{i}.txt", os.urandom(500))])
            delays.append(_wait_head(lab, repo, head))
            time.sleep(0.3)  # both nodes' notifications of this move are in before the next one
    doc = _status(lab)
    received = doc["notifications"]["received"] - before["received"]
    redundant = doc["notifications"]["redundant"] - before["redundant"]
    print(f"\n{moves} head moves through two nodes: {received} notifications ({received / moves:.1f} per head move), "
          f"{received - redundant} syncs queued; head move -> backup (ms): {sorted(round(d * 1000) for d in delays)}")
    assert received == 2 * moves and received - redundant == moves
    pairing = doc["pairing"]
    assert [node["answers"] for node in pairing["primary_nodes"]] == [True, True]
    assert f"Primary node in use: {pairing['primary_node']}" in format_status(doc)


def test_node1s_agent_killed_changes_still_arrive_through_node2(seeded, state):
    lab = seeded
    urls = [f"http://{lab.hosts[n].address}:8090" for n in SEAFILE_NODES]
    UnitService("seafbackup-agent", lab.hosts["node1"].root).stop(sig=signal.SIGKILL)
    delays = []
    with _writer(lab, "node2") as two:
        for i in range(3):
            head = two.commit(state["repo"], [Put(f"after-{i}.txt", os.urandom(500))])
            delays.append(_wait_head(lab, state["repo"], head, timeout=5))
    print(f"node 1's agent killed: head move -> backup (ms) {[round(d * 1000) for d in delays]}")
    doc = _wait(lambda: (d := _status(lab))["pairing"]["primary_node"] == urls[1]
                and d["pairing"]["primary_nodes"][0]["answers"] is False and d, "the backup does not use node 2")
    assert doc["exit_code"] == 0, doc["pairing"]
    text = format_status(doc)
    assert f"Primary node in use: {urls[1]}" in text and f"  {urls[0]}: does not answer since" in text
    rc, result = run_module(_inventory(lab), "backup", "seafbackup_status", {
        "conf_dir": str(lab.backup.seafile_conf_dir),
        "agent_cmd": str(lab.backup.root / "opt/seafbackup/venv/bin/seaf-backup-cmd"),
        "login_unix_socket": str(lab.backup.mariadb.paths.socket)})
    assert rc == 0, result
    fresh = result["freshness"]
    assert fresh["primary_node"] == urls[1]
    assert [(n["url"], n["answers"]) for n in fresh["primary_nodes"]] == [(urls[0], False), (urls[1], True)]


def test_no_claim_past_a_commit_the_node_in_use_has_not_applied(seeded, state):
    """Galera applies a write set on the other nodes shortly after the commit: node 2's agent must not vouch for a
    commit made through node 1 that node 2 has not applied yet (its database reads wait for causality)."""
    lab = seeded
    pause = lab.hosts["node2"].mariadb.root_connection()
    try:
        with pause.cursor() as cur, _writer(lab, "node1") as one:
            cur.execute("SET GLOBAL wsrep_desync = ON")
            cur.execute("FLUSH TABLES WITH READ LOCK")
            committed_at = time.time()
            head = one.commit(state["repo"], [Put("while-node2-lags.txt", b"late")])
            until = time.monotonic() + 3
            while time.monotonic() < until:
                current = _status(lab)["pairing"]["current_as_of"]
                assert current is None or current < committed_at, (current, committed_at)
                time.sleep(0.2)
            assert backup_head(lab, state["repo"]) != head
            cur.execute("UNLOCK TABLES")
            cur.execute("SET GLOBAL wsrep_desync = OFF")
    finally:
        pause.close()
    print(f"node 2 applies again: head -> backup {_wait_head(lab, state['repo'], head, timeout=10) * 1000:.0f} ms")


def test_the_source_node_lost_replication_moves_by_gtid_without_loss_or_repeat(seeded, state, timings):
    lab = seeded
    # Transactions the backup has fetched but not applied when its source dies (its relay log is discarded on the
    # move: they must come again from node 2, once), then the source's database stops, then more writes.
    query(lab, "backup", "STOP SLAVE SQL_THREAD")
    query(lab, "node3", "CREATE TABLE seahub_db.cluster_move_check (id INT PRIMARY KEY, node VARCHAR(8), v INT)")
    for i in range(20):
        query(lab, f"node{2 + i % 2}", "INSERT INTO seahub_db.cluster_move_check VALUES (%s, %s, %s)",
              (i, f"node{2 + i % 2}", i * i))
    [pos] = query(lab, "node1", "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
    _wait(lambda: _seqno(replica_status(lab)["Gtid_IO_Pos"]) >= _seqno(pos["pos"]),
          "the backup did not fetch node 1's binlog")
    assert _seqno(query(lab, "backup", "SELECT @@GLOBAL.gtid_slave_pos AS pos")[0]["pos"]) < _seqno(pos["pos"])
    lab.galera("node1").stop()
    with _writer(lab, "node2") as two:
        state["repo3"] = two.create_library("made while node 1's database is down", "carol@example.com")
    query(lab, "node3", "UPDATE seahub_db.cluster_move_check SET v = v + 1 WHERE id < 10")
    query(lab, "node2", "DELETE FROM seahub_db.cluster_move_check WHERE id >= 15")

    run = run_playbook(_inventory(lab), *MOVE)
    timings["move replication"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert "Replication moves from" in run.output and "Dump the primary" not in run.output
    status = replica_status(lab)
    assert status["Master_Host"] == lab.hosts["node2"].address and status["Using_Gtid"] == "Slave_Pos"
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes", status
    _caught_up(lab, "node2")
    primary_sums = _replicated(row_checksums(lab.hosts["node2"].mariadb))
    backup_sums = _replicated(row_checksums(lab.backup.mariadb))
    replicated = {t: s for t, s in primary_sums.items() if t not in AGENT_TABLES}
    assert {t: backup_sums.get(t) for t in replicated} == replicated
    assert query(lab, "backup", "SELECT COUNT(*) AS n, SUM(v) AS s FROM seahub_db.cluster_move_check") == \
        query(lab, "node2", "SELECT COUNT(*) AS n, SUM(v) AS s FROM seahub_db.cluster_move_check")
    # The agents keep writing their own tables through node 2, so its position may move between two reads: the
    # backup has applied exactly node 2's binlog when a pair of reads finds them equal (a repeat stops the SQL
    # thread on a duplicate key, a loss leaves the backup behind for good).
    _wait(lambda: query(lab, "backup", "SELECT @@GLOBAL.gtid_slave_pos AS pos") ==
          query(lab, "node2", "SELECT @@GLOBAL.gtid_binlog_pos AS pos"),
          f"the backup's GTID position never equalled node 2's: {replica_status(lab)}")
    # The agent-written tables reached the backup through node 2's agent: the library made meanwhile too.
    with _writer(lab, "node2") as two:
        _wait_head(lab, state["repo3"], two.head(state["repo3"]))

    again = run_playbook(_inventory(lab), *MOVE)
    assert again.rc == 0 and sum(c["changed"] for c in again.recap.values()) == 0, again.output[-3000:]
    timings["move again"] = again.seconds


def test_failover_drill_fences_every_node(seeded, timings):
    lab = seeded
    run = run_playbook(_inventory(lab), "-e", "seafbackup_failover_confirm=true", playbook="playbooks/failover.yml")
    timings["failover"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert "Fenced node2: reachable yes, database set read-only" in run.output
    assert "Fenced node3: reachable yes, database set read-only" in run.output
    assert "Fenced node1: reachable yes, database does not answer" in run.output
    for node in ("node2", "node3"):
        assert query(lab, node, "SELECT @@GLOBAL.read_only AS ro") == [{"ro": 1}]
    for node in SEAFILE_NODES:
        assert UnitService("seafbackup-agent", lab.hosts[node].root).pid() is None
        assert (lab.hosts[node].root / "run/seafile.state").read_text().strip() == "stopped"
    assert replica_status(lab) is None
    assert query(lab, "backup", "SELECT @@GLOBAL.read_only AS ro") == [{"ro": 0}]


def test_report_timings(timings):
    print("\ncluster timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

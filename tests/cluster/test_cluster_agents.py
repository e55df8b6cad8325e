"""A Seafile cluster as the primary, agents run by hand: every Seafile node's agent notifies, the backup
de-duplicates, lists every node in primary_url and moves to the next node at once when one is down."""

from __future__ import annotations

import os
import signal
import time

import pytest

from seafbackup_agent.cli.agent_cmds import format_status
from seafbackup_lab.writer import Put, SeafileServer
from tests.agents import ClusterAgents, backup_head
from tests.helpers import root_sql


def _wait_head(lab, repo, head, timeout=20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if backup_head(lab, repo) == head:
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"backup head of {repo} did not reach {head} in {timeout}s")


def _writer(lab, node: str) -> SeafileServer:
    host = lab.hosts[node]
    return SeafileServer(host.seafile_conf_dir, host.seafile_data_dir, block_size=64 * 1024)


@pytest.fixture
def agents(cluster_lab, tmp_path):
    root_sql(cluster_lab.backup, "GRANT BINLOG ADMIN ON *.* TO 'seafile'@'%'")
    with ClusterAgents(cluster_lab, tmp_path) as a:
        yield a
    root_sql(cluster_lab.backup, "REVOKE BINLOG ADMIN ON *.* FROM 'seafile'@'%'")


def test_changes_through_either_node_arrive_once_and_a_dead_node_is_skipped(cluster_lab, agents):
    lab = cluster_lab
    node_urls = [f"http://{host.address}:8090" for host in lab.seafile_nodes]
    with _writer(lab, "node1") as one, _writer(lab, "node2") as two:
        repo = one.create_library("cluster", "alice@example.com")
        one.put_files(repo, {"a.txt": b"a"})
        for name in ("node1", "node2", "backup"):
            agents.start(name)
        agents.wait_synchronized(1)
        before = agents.status()["notifications"]

        # A change through either node reaches the backup; both nodes' agents report it, one sync copies it.
        moves = 10
        delays = []
        for i in range(moves):
            writer = one if i % 2 == 0 else two
            head = writer.commit(repo, [Put(f"f{i}.txt", os.urandom(500))])
            delays.append(_wait_head(lab, repo, head))
            time.sleep(0.3)  # both notifications of this move are in before the next one
        doc = agents.status()
        received = doc["notifications"]["received"] - before["received"]
        redundant = doc["notifications"]["redundant"] - before["redundant"]
        print(f"\n{moves} head moves through two nodes: {received} notifications received "
              f"({received / moves:.1f} per head move), {redundant} redundant; "
              f"head move -> backup (ms): {sorted(round(d * 1000) for d in delays)}")
        assert received == 2 * moves
        assert received - redundant == moves  # one sync queued per head move
        pairing = doc["pairing"]
        assert [node["url"] for node in pairing["primary_nodes"]] == node_urls
        assert [node["answers"] for node in pairing["primary_nodes"]] == [True, True]
        used = node_urls.index(pairing["primary_node"])
        other = 1 - used
        text = format_status(doc)
        assert f"Primary node in use: {node_urls[used]}" in text
        assert f"  {node_urls[other]}: answers" in text

        # The agent of the node in use dies: changes keep arriving through the other node within the usual RPO,
        # and the backup uses that node.
        dead, alive = (one, two) if used == 0 else (two, one)
        agents.stop(f"node{used + 1}", signal.SIGKILL)
        late = []
        for i in range(3):
            head = alive.commit(repo, [Put(f"after-{i}.txt", os.urandom(500))])
            late.append(_wait_head(lab, repo, head, timeout=5))
        lib = dead.create_library("made through the node whose agent is down", "bob@example.com")
        late.append(_wait_head(lab, lib, dead.head(lib), timeout=5))
        print(f"the agent in use killed: head move -> backup max {max(late) * 1000:.0f} ms")
        deadline = time.monotonic() + 5
        while True:
            doc = agents.status()
            nodes = doc["pairing"]["primary_nodes"]
            if doc["pairing"]["primary_node"] == node_urls[other] and nodes[used]["answers"] is False:
                break
            assert time.monotonic() < deadline, doc["pairing"]
            time.sleep(0.1)
        assert doc["exit_code"] == 0, doc["pairing"]
        text = format_status(doc)
        assert f"Primary node in use: {node_urls[other]}" in text
        assert f"  {node_urls[used]}: does not answer since" in text

        # Galera applies a write set on the other nodes shortly after its commit. The live node's agent must not
        # vouch for a commit made through the other node that its database has not applied yet (its reads wait
        # for causality): its Galera node paused (desynced, global read lock), a commit through the other node
        # (whose agent is dead) -> the backup never claims to be current as of a time after that commit until
        # it has it.
        pause = lab.hosts[f"node{other + 1}"].mariadb.root_connection()
        try:
            with pause.cursor() as cur:
                cur.execute("SET GLOBAL wsrep_desync = ON")
                cur.execute("FLUSH TABLES WITH READ LOCK")
                committed_at = time.time()
                head = dead.commit(repo, [Put("while-the-other-galera-node-lags.txt", b"late")])
                until = time.monotonic() + 3
                while time.monotonic() < until:
                    current = agents.status()["pairing"]["current_as_of"]
                    assert current is None or current < committed_at, (current, committed_at)
                    time.sleep(0.2)
                assert backup_head(lab, repo) != head
                cur.execute("UNLOCK TABLES")
                cur.execute("SET GLOBAL wsrep_desync = OFF")
        finally:
            pause.close()
        seconds = _wait_head(lab, repo, head, timeout=10)
        print(f"the paused Galera node applies again: head -> backup {seconds * 1000:.0f} ms")

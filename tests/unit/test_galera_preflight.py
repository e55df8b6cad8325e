"""Preflight's verdict on a Galera cluster as the primary's database (the filter behind the assertion)."""

from tests.ansible_files import ROOT, load

filters = load("seafbackup_filters_for_galera", ROOT / "filter_plugins/seafbackup.py")


def _node(host, **changes):
    row = {"wsrep_on": 1, "wsrep_gtid_mode": 1, "wsrep_gtid_domain_id": 1, "gtid_domain_id": 10 + int(host[-1]),
           "server_id": 1, "log_bin": 1, "log_slave_updates": 1, "binlog_format": "ROW",
           "gtid_binlog_pos": "1-1-504", "state": "Synced"}
    return {"host": host, "vars": {**row, **changes}, "error": ""}


def problems(nodes, source="node1", backup_server_id=2):
    return filters.seafbackup_galera_problems(nodes, source, backup_server_id)


def test_a_cluster_as_documented_passes():
    assert problems([_node("node1"), _node("node2"), _node("node3")]) == []


def test_a_node_down_is_no_problem_unless_it_is_the_source():
    down = {"host": "node3", "vars": None, "error": "Can't connect"}
    assert problems([_node("node1"), _node("node2"), down]) == []
    [said] = problems([{**down, "host": "node1"}, _node("node2"), _node("node3")])
    assert "replication source node1" in said and "does not answer" in said and "Can't connect" in said


def test_each_setting_a_move_by_gtid_needs_is_named_with_its_node():
    said = " ".join(problems([
        _node("node1", server_id=3), _node("node2", log_slave_updates=0, binlog_format="MIXED"),
        _node("node3", gtid_domain_id=1), _node("node4", wsrep_gtid_mode=0, gtid_domain_id=12)]))
    assert "server_id differs between the Galera nodes (node1 3, node2 1" in said
    assert "node2: log_slave_updates is off" in said and "node2: binlog_format is MIXED" in said
    assert "node3: gtid_domain_id equals wsrep_gtid_domain_id (1)" in said
    assert "node4: wsrep_gtid_mode is off" in said and "Two Galera nodes share a gtid_domain_id" in said


def test_not_galera_a_shared_server_id_local_writes_and_an_unsynced_source():
    said = " ".join(problems([_node("node1", gtid_binlog_pos="1-1-504,11-1-3", state="Donor/Desynced"),
                              _node("node2", wsrep_on=0)], backup_server_id=1))
    assert "node2 is not a Galera node" in said
    assert "The backup's server_id 1 is the Galera nodes' server_id" in said
    assert "holds GTID domain(s) 11 besides the cluster's 1" in said
    assert "node1 is Donor/Desynced, not Synced" in said

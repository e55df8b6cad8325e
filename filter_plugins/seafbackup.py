"""Filters that expose the flavour table (module_utils/seafbackup_flavour.py) and small helpers to the roles."""

from __future__ import annotations

import configparser
import datetime
import importlib.util
import sys
from pathlib import Path

_FLAVOUR_PATH = Path(__file__).resolve().parents[1] / "module_utils" / "seafbackup_flavour.py"


def _load_flavour():
    name = "seafbackup_flavour_for_filters"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _FLAVOUR_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_flavour = _load_flavour()


def seafbackup_flavour(version):
    """`SELECT VERSION()` text -> the flavour table (or {'supported': False, 'problem': ...})."""
    return _flavour.describe(version)


def seafbackup_change_source(flav, host, port, user, password, connect_retry=60, use_gtid=True, log_file=None,
                             log_pos=None):
    """-> {'sql': ..., 'params': [...]} for community.mysql.mysql_query (query + positional_args)."""
    sql, params = _flavour.change_source_sql(flav, host, port, user, password, connect_retry, use_gtid, log_file,
                                             log_pos)
    return {"sql": sql, "params": params}


def seafbackup_replica_status(rows, flav):
    """The first row of SHOW SLAVE/REPLICA STATUS (as mysql_query returns it) in flavour-neutral keys."""
    row = rows[0] if isinstance(rows, list) and rows else rows
    return _flavour.replica_status(flav, row or None)


def seafbackup_binlog_expire(flav, days):
    """-> [variable, value] for the primary's drop-in."""
    return list(_flavour.binlog_expire_setting(flav, days))


def seafbackup_ini_value(text, section, option, default=""):
    """The value of `option` in `section` of an INI text (seafile.conf), or `default`."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text or "")
    except configparser.Error:
        return default
    return parser.get(section, option, fallback=default)


def seafbackup_libraries_behind(status, names=None):
    """seafbackup_status's result -> every library not synchronized: [{repo_id, name, state, reason}].

    `names` is the rows of ``SELECT repo_id, name FROM RepoInfo`` (a list of dicts); unknown names are ``?``.
    """
    known = {row["repo_id"]: row["name"] for row in names or []}
    behind = [{"repo_id": lib["repo_id"], "state": "failed", "reason": lib.get("reason", "")}
              for lib in status.get("failed_libraries", [])]
    behind += [{"repo_id": repo_id, "state": state, "reason": ""}
               for state in ("syncing", "waiting") for repo_id in status.get(f"{state}_libraries", [])]
    for lib in behind:
        lib["name"] = known.get(lib["repo_id"], "?")
    return behind


def seafbackup_library_line(lib):
    """One library behind, for people: ``<id> (<name>): failed: <reason>``."""
    line = f"{lib['repo_id']} ({lib.get('name', '?')}): {lib['state']}"
    return f"{line}: {lib['reason']}" if lib.get("reason") else line


def seafbackup_freshness_line(freshness):
    """What the backup can prove, for people: current as of when, and the window nobody can know about."""
    current = freshness.get("current_as_of")
    if not current:
        return ("Freshness: the backup has no evidence from the primary's agent; which head moves it lacks "
                "cannot be known")
    when = datetime.datetime.fromtimestamp(current).strftime("%Y-%m-%d %H:%M:%S")
    line = (f"Freshness: the backup holds every library at least as new as the primary had it at {when} "
            f"(RPO bound {freshness.get('rpo_bound_seconds', 0):.0f} s); head moves on the old primary after that "
            "cannot be known")
    if freshness.get("state") not in (None, "ok") and freshness.get("reason"):
        line += f"; pairing {freshness['state']}: {freshness['reason']}"
    return line


def seafbackup_fence_line(fence):
    """How one old primary host was fenced, for people."""
    line = f"Fenced {fence['host']}: reachable {'yes' if fence['reachable'] else 'no'}, database {fence['database']}"
    return line if fence["complete"] else line + " - NOT FENCED COMPLETELY"


def seafbackup_pair_line(item):
    """{'key': k, 'value': v} -> 'k: v'."""
    return f"{item['key']}: {item['value']}"


def _on(value):
    return str(value).strip().upper() in ("1", "ON", "TRUE", "YES")


def seafbackup_galera_problems(nodes, source, backup_server_id=None):
    """What stops a Galera cluster from being the primary's database here, as sentences (empty: nothing).

    `nodes`: one dict per node of seafile_primary_db, {'host', 'vars' (the row of the preflight's query, None when
    the node did not answer), 'error'}. Every node must log every write set in ROW format under the same GTIDs
    (wsrep_gtid_mode, one wsrep_gtid_domain_id and one server_id cluster-wide, a gtid_domain_id of its own that is
    not the cluster's), so that any node can be the backup's replication source and a replica can move between
    them by GTID; the replication source must answer and be Synced."""
    problems = []
    answering = [n for n in nodes if n.get("vars")]
    for node in nodes:
        if not node.get("vars") and node["host"] == source:
            problems.append(f"The replication source {source} (seafbackup_replication_source) does not answer: "
                            f"{node.get('error') or 'no answer'}. Name a Galera node that runs.")
    for node in answering:
        host, v = node["host"], node["vars"]
        if not _on(v.get("wsrep_on")):
            problems.append(f"{host} is not a Galera node (wsrep_on is OFF) but is in group seafile_primary_db.")
            continue
        for name, hint in (("wsrep_gtid_mode", "wsrep_gtid_mode = ON"), ("log_bin", "log_bin"),
                           ("log_slave_updates", "log_slave_updates = ON")):
            if not _on(v.get(name)):
                problems.append(f"{host}: {name} is off; set {hint} on every Galera node (each can be the "
                                "replication source, and each Seafile node's agent reads its own node's binlog).")
        if str(v.get("binlog_format", "")).upper() != "ROW":
            problems.append(f"{host}: binlog_format is {v.get('binlog_format')}; set binlog_format = ROW.")
        if str(v.get("gtid_domain_id")) == str(v.get("wsrep_gtid_domain_id")):
            problems.append(f"{host}: gtid_domain_id equals wsrep_gtid_domain_id ({v.get('gtid_domain_id')}); give "
                            "each node a gtid_domain_id of its own for writes Galera does not replicate.")
        if host == source and v.get("state") != "Synced":
            problems.append(f"The replication source {host} is {v.get('state')}, not Synced.")
    for name, what in (("wsrep_gtid_domain_id", "wsrep_gtid_domain_id"), ("server_id", "server_id")):
        values = {str(n["vars"].get(name)) for n in answering}
        if len(values) > 1:
            listed = ", ".join(f"{n['host']} {n['vars'].get(name)}" for n in answering)
            problems.append(f"{what} differs between the Galera nodes ({listed}): it must be the same on every node "
                            "so that a write set has the same GTID on each.")
    local = [str(n["vars"].get("gtid_domain_id")) for n in answering]
    if len(set(local)) < len(local):
        problems.append("Two Galera nodes share a gtid_domain_id (" + ", ".join(
            f"{n['host']} {n['vars'].get('gtid_domain_id')}" for n in answering) + "): give each its own.")
    if backup_server_id is not None and answering and \
            str(backup_server_id) in {str(n["vars"].get("server_id")) for n in answering}:
        problems.append(f"The backup's server_id {backup_server_id} is the Galera nodes' server_id: it must differ.")
    for node in answering:
        if node["host"] != source:
            continue
        domain = str(node["vars"].get("wsrep_gtid_domain_id"))
        others = sorted({part.split("-")[0] for part in str(node["vars"].get("gtid_binlog_pos") or "").split(",")
                         if part.strip()} - {domain})
        if others:
            problems.append(f"The binlog of {node['host']} holds GTID domain(s) {', '.join(others)} besides the "
                            f"cluster's {domain}: transactions written on that node alone, which the other nodes do "
                            "not have; a replica of it could not move to another node.")
    return problems


class FilterModule:
    def filters(self):
        return {
            "seafbackup_flavour": seafbackup_flavour,
            "seafbackup_change_source": seafbackup_change_source,
            "seafbackup_replica_status": seafbackup_replica_status,
            "seafbackup_binlog_expire": seafbackup_binlog_expire,
            "seafbackup_ini_value": seafbackup_ini_value,
            "seafbackup_libraries_behind": seafbackup_libraries_behind,
            "seafbackup_library_line": seafbackup_library_line,
            "seafbackup_freshness_line": seafbackup_freshness_line,
            "seafbackup_fence_line": seafbackup_fence_line,
            "seafbackup_pair_line": seafbackup_pair_line,
            "seafbackup_galera_problems": seafbackup_galera_problems,
        }

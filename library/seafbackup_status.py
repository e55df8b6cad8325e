#!/usr/bin/python
"""Ansible module: the backup server's sync and replication state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_status
short_description: Report (and gate on) the state and freshness of a seafbackup pairing
description:
  - Reads the sync agent's state through C(seaf-backup-cmd status --json) (the agent's local control socket)
    and, on the backup, the replication state of its MySQL/MariaDB server.
  - On the backup, returns the seed's counts (synchronized, waiting, syncing, failed, and unknown while the
    pairing is stale), the lists of libraries in each state with the reason of each failure, how long each
    unsynchronized library has been behind, the replication threads, lag and last errors, and the
    O(freshness) the backup can prove from the primary's heartbeats.
  - On a primary, returns whether its agent reaches the backup and has its notifications accepted
    (RV(mode=primary), with the problems and the number of changes waiting to be sent).
  - Fails at once, with the agent's own reason (a token mismatch, an unreachable URL, TLS), when the pairing is
    broken or stale, unless O(fail_on_stale=false).
  - Optionally waits until every library is synchronized, and fails when a library failed to sync, when the
    backup's RPO bound is over O(max_staleness_seconds), or when replication lags more than a bound, so a
    playbook can gate on it (for example before a failover).
  - Never changes anything.
version_added: "0.1.0"
author: seafbackup developers
extends_documentation_fragment:
  - seafbackup_login
options:
  login_user:
    description: Database user allowed to run C(SHOW SLAVE STATUS) / C(SHOW REPLICA STATUS).
    type: str
    default: root
  conf_dir:
    description: Seafile's conf directory on the backup (the one holding seafile.conf with C([backup])).
    type: path
    default: /opt/seafile/conf
  agent_cmd:
    description: Path of C(seaf-backup-cmd) on the backup host.
    type: path
    default: /opt/seafbackup/venv/bin/seaf-backup-cmd
  replication:
    description: Whether to read the replication state at all (false on a promoted backup).
    type: bool
    default: true
  wait_synchronized:
    description: Wait until every library is synchronized and the queue is empty (or O(timeout) passes).
    type: bool
    default: false
  wait_paired:
    description:
      - Wait until the pairing is healthy seen from this host (on the backup, fresh evidence from the primary; on
        a primary, the backup reachable and taking its signatures), or O(timeout) passes.
      - Fails as soon as the pairing is stale (backup) or a problem is older than O(grace_seconds) (primary).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for O(wait_synchronized) or O(wait_paired).
    type: int
    default: 300
  fail_on_failed:
    description: Fail when any library failed to sync.
    type: bool
    default: false
  max_lag_seconds:
    description:
      - Fail when replication lags more than this many seconds, or a replication thread is stopped.
      - The lag is the larger of C(Seconds_Behind_Master) and the age of the newest heartbeat row that
        replication carried from the primary, so a stalled IO thread (which reads 0) does not pass.
    type: int
  max_staleness_seconds:
    description:
      - Fail when the backup's RPO bound (now minus the time it is provably current as of) is over this many
        seconds, or unknown.
    type: int
  fail_on_stale:
    description:
      - Fail when the pairing is stale or broken (no fresh evidence from the primary for longer than the agent's
        C(stale_after), or the primary reports that it cannot deliver), with the agent's reason.
      - While O(wait_synchronized) waits, a pairing still starting is waited for; on a primary, a problem is
        waited for until it is older than O(grace_seconds).
      - Set it to false to read the state of a pairing whose primary is gone (for example before a failover).
    type: bool
    default: true
  grace_seconds:
    description: On a primary, how long a problem may last while O(wait_synchronized) waits before the module fails.
    type: int
    default: 15
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
requirements:
  - PyMySQL on the backup host (for the replication state)
notes:
  - The agent must run on the host; when it does not, the module fails and says so.
"""

EXAMPLES = r"""
- name: Read the backup's state
  seafbackup_status:
    conf_dir: /opt/seafile/conf
    login_unix_socket: /run/mysqld/mysqld.sock
  register: backup_state

- name: Wait for the first sync, fail on failed libraries, on an RPO bound over a minute and on replication lag
  seafbackup_status:
    login_unix_socket: /run/mysqld/mysqld.sock
    wait_synchronized: true
    timeout: 600
    fail_on_failed: true
    max_staleness_seconds: 60
    max_lag_seconds: 30

- name: The primary's agent reaches the backup and its notifications are accepted
  seafbackup_status:
    replication: false
    wait_synchronized: true
    timeout: 60
  when: inventory_hostname in groups['seafile_primary']

- name: Read the state of a pairing whose primary may be dead (never fails on a stale pairing)
  seafbackup_status:
    replication: false
    fail_on_stale: false
  register: backup_state
"""

RETURN = r"""
mode:
  description: "C(backup) or C(primary), which side's agent answered."
  returned: always
  type: str
  sample: backup
freshness:
  description:
    - What the backup can prove (backup only). Times are unix seconds on the backup's clock.
    - C(state) is C(ok), C(starting) or C(stale); C(reason) says why when not C(ok).
    - C(rpo_bound_seconds) is now minus C(current_as_of), an upper bound of what a failover now would lose
      (never lower than the truth; null before the first evidence).
    - C(db_lag_seconds) is an upper bound of the database replication lag from the replicated heartbeat row.
    - C(primary_node) is the URL of the primary's node the backup talks to; C(primary_nodes) lists every node of
      C([backup] primary_url) (a Seafile cluster has several) with C(url), C(in_use), C(answers) (null before the
      first request), C(answered_at), C(failed_at) and C(error).
  returned: when mode is backup
  type: dict
  sample: {"state": "ok", "reason": null, "since": null, "current_as_of": 1796000000.5,
           "rpo_bound_seconds": 0.8, "primary_last_seen": 1796000001.1, "db_lag_seconds": 0.9}
primary:
  description: The primary agent's own report (primary only) - problems, pending changes, last delivery.
  returned: when mode is primary
  type: dict
unknown_libraries:
  description: Libraries last known synchronized while the pairing is stale (no fresh evidence backs them).
  returned: when mode is backup
  type: list
  elements: str
total:
  description: Number of libraries the agent knows (those on the primary).
  returned: always
  type: int
  sample: 42
counts:
  description: Libraries per state.
  returned: always
  type: dict
  sample: {"synchronized": 41, "waiting": 0, "syncing": 0, "failed": 1}
synchronized_libraries:
  description: Ids of synchronized libraries.
  returned: always
  type: list
  elements: str
waiting_libraries:
  description: Ids of libraries waiting for sync.
  returned: always
  type: list
  elements: str
syncing_libraries:
  description: Ids of libraries being synced.
  returned: always
  type: list
  elements: str
failed_libraries:
  description:
    - Libraries that failed to sync, with the reason and the number of attempts.
    - Not called C(failed), which Ansible reads as the task's own failure flag.
  returned: always
  type: list
  elements: dict
  sample: [{"repo_id": "3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2", "reason": "block object ... is corrupt", "attempts": 3}]
lag:
  description: For each library not synchronized, seconds since it fell behind.
  returned: always
  type: dict
  sample: {"3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2": 812.4}
replication:
  description: The backup's replication state (empty when O(replication=false)).
  returned: always
  type: dict
  sample: {"configured": true, "io_running": "Yes", "sql_running": "Yes", "seconds_behind": 0,
           "last_sql_errno": 0, "last_sql_error": "", "last_io_errno": 0, "last_io_error": ""}
progress:
  description:
    - How far the current batch of syncs has come (the batch is the libraries queued since the agent was idle;
      the first sync of a whole store is one batch), as C(seaf-backup-cmd status --json) shows it.
    - C(libraries_done) of C(libraries_total), C(objects) and C(bytes) copied, the rate over the last minute
      (C(objects_per_second), C(bytes_per_second)) and C(eta_seconds); C(active) is false once the batch is done.
    - C(libraries) lists each running library with its C(commits) of C(commits_total) (counted by the commit
      walk), its C(bytes) of C(estimated_bytes) (the primary's C(RepoSize) for a library new on the backup),
      its rate and ETA. C(estimate_basis) and C(eta_basis) say how the estimates are made.
  returned: when mode is backup
  type: dict
  sample: {"active": true, "libraries_done": 3, "libraries_total": 10, "libraries_remaining": 7,
           "objects": 51234, "bytes": 7340032000, "objects_per_second": 812.0, "bytes_per_second": 61865984.0,
           "eta_seconds": 420.5, "libraries": []}
waited:
  description: Seconds spent waiting for O(wait_synchronized).
  returned: always
  type: float
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.seafbackup_errors import ExitCode
from ansible.module_utils.seafbackup_login import LOGIN_ARGUMENT_SPEC, connect, read_server

STATUS_DOCUMENT_CODES = (ExitCode.OK, ExitCode.STALE, ExitCode.FAILED_LIBRARIES)
"""`seaf-backup-cmd status --json` prints its document with these exit codes (healthy, stale, failed libraries)."""


def agent_status(module):
    rc, out, err = module.run_command(
        [module.params["agent_cmd"], "status", "--json", "--conf-dir", module.params["conf_dir"]]
    )
    if rc not in STATUS_DOCUMENT_CODES or not out.strip():
        module.fail_json(
            msg="seaf-backup-cmd status failed: " + (err.strip() or out.strip()),
            rc=rc,
            agent_running=rc != ExitCode.AGENT_NOT_RUNNING,
        )
    return json.loads(out)


def replication_state(module):
    """The backup's replication state in flavour-neutral keys (module_utils.seafbackup_login.read_server), with
    `configured` saying whether it is a replica at all."""
    conn = connect(module, "the backup's database server")
    try:
        with conn.cursor() as cur:
            server = read_server(cur)
    finally:
        conn.close()
    if not server["flavour"].get("supported"):
        module.fail_json(msg=server["flavour"]["problem"])
    return {"configured": server["replica"] is not None, **(server["replica"] or {})}


def summarize(doc, now):
    by_state = {"synchronized_libraries": [], "waiting_libraries": [], "syncing_libraries": [],
                "failed_libraries": [], "unknown_libraries": []}
    lag = {}
    for lib in doc["libraries"]:
        state = lib["state"]
        if state == "failed":
            by_state["failed_libraries"].append(
                {"repo_id": lib["repo_id"], "reason": lib["reason"], "attempts": lib["attempts"]})
        else:
            by_state[f"{state}_libraries"].append(lib["repo_id"])
        if state not in ("synchronized", "unknown"):
            lag[lib["repo_id"]] = round(now - lib["since"], 1)
    return by_state, lag


def freshness(doc):
    pairing = doc.get("pairing") or {}
    db_lag = pairing.get("db_lag") or {}
    return {
        "state": pairing.get("state"),
        "reason": pairing.get("reason"),
        "since": pairing.get("since"),
        "current_as_of": pairing.get("current_as_of"),
        "rpo_bound_seconds": pairing.get("rpo_bound_seconds"),
        "primary_last_seen": pairing.get("primary_last_seen"),
        "db_lag_seconds": db_lag.get("seconds"),
        "db_lag_error": db_lag.get("error"),
        "primary_node": pairing.get("primary_node"),
        "primary_nodes": pairing.get("primary_nodes"),
    }


def primary_problem(doc, now, grace):
    """The primary's oldest problem once it is older than `grace` seconds (None while healthy or recent)."""
    old = [p for p in doc.get("problems", []) if now - p["since"] >= grace]
    return old[0] if old else None


def run_primary(module, doc, started):
    p = module.params
    while (p["wait_synchronized"] or p["wait_paired"]) and not doc["healthy"]:
        problem = primary_problem(doc, time.time(), p["grace_seconds"])
        if problem and p["fail_on_stale"]:
            module.fail_json(msg=f"the primary's agent: {problem['source']}: {problem['problem']}", mode="primary",
                             primary=doc)
        if time.monotonic() - started > p["timeout"]:
            module.fail_json(msg=f"the primary's agent is not healthy after {p['timeout']}s: {doc['problems']}",
                             mode="primary", primary=doc)
        time.sleep(0.5)
        doc = agent_status(module)
    if p["fail_on_stale"] and not doc["healthy"]:
        problem = doc["problems"][0]
        module.fail_json(msg=f"the primary's agent: {problem['source']}: {problem['problem']}", mode="primary",
                         primary=doc)
    module.exit_json(changed=False, mode="primary", primary=doc, waited=round(time.monotonic() - started, 2))


def main():
    module = AnsibleModule(
        argument_spec={
            "conf_dir": {"type": "path", "default": "/opt/seafile/conf"},
            "agent_cmd": {"type": "path", "default": "/opt/seafbackup/venv/bin/seaf-backup-cmd"},
            **LOGIN_ARGUMENT_SPEC,
            "replication": {"type": "bool", "default": True},
            "wait_synchronized": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 300},
            "fail_on_failed": {"type": "bool", "default": False},
            "max_lag_seconds": {"type": "int"},
            "max_staleness_seconds": {"type": "int"},
            "fail_on_stale": {"type": "bool", "default": True},
            "wait_paired": {"type": "bool", "default": False},
            "grace_seconds": {"type": "int", "default": 15},
        },
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    doc = agent_status(module)
    if doc.get("mode") == "primary":
        run_primary(module, doc, started)
    while p["wait_synchronized"] or p["wait_paired"]:
        state = doc["pairing"]["state"]
        if state == "stale" and p["fail_on_stale"]:
            break  # reported below with the agent's reason, not after the timeout
        done = doc["counts"]["synchronized"] + doc["counts"]["failed"] == doc["total"] and not doc["queue_depth"]
        if state == "ok" and (not p["wait_synchronized"] or (done and doc.get("last_poll"))):
            break
        if time.monotonic() - started > p["timeout"]:
            module.fail_json(msg=f"libraries not synchronized after {p['timeout']}s (pairing "
                             f"{doc['pairing']['state']}: {doc['pairing']['reason'] or 'no problem reported'})",
                             counts=doc["counts"], freshness=freshness(doc))
        time.sleep(0.5)
        doc = agent_status(module)
    by_state, lag = summarize(doc, time.time())
    replication = replication_state(module) if p["replication"] else {}
    fresh = freshness(doc)
    if replication.get("configured") and fresh["db_lag_seconds"] is not None:
        replication["heartbeat_lag_seconds"] = fresh["db_lag_seconds"]
    result = {
        "changed": False,
        "mode": "backup",
        "freshness": fresh,
        "total": doc["total"],
        "counts": doc["counts"],
        "lag": lag,
        "progress": doc.get("progress"),
        "replication": replication,
        "waited": round(time.monotonic() - started, 2),
        **by_state,
    }
    if p["fail_on_stale"] and fresh["state"] == "stale":
        module.fail_json(msg=f"the pairing is stale: {fresh['reason']}", **result)
    if p["max_staleness_seconds"] is not None:
        bound = fresh["rpo_bound_seconds"]
        if bound is None or bound > p["max_staleness_seconds"]:
            module.fail_json(msg=f"the backup is provably current only as of {bound if bound is None else round(bound)}"
                             f" s ago (more than {p['max_staleness_seconds']} s): {fresh['reason'] or 'syncing'}",
                             **result)
    failed = by_state["failed_libraries"]
    if p["fail_on_failed"] and failed:
        ids = ", ".join(f["repo_id"] for f in failed)
        module.fail_json(msg=f"{len(failed)} libraries failed to sync: {ids}", **result)
    if p["max_lag_seconds"] is not None and p["replication"]:
        behind = replication.get("seconds_behind")
        if not replication.get("configured"):
            module.fail_json(msg="the backup is not a replica", **result)
        if replication["io_running"] != "Yes" or replication["sql_running"] != "Yes" or behind is None:
            module.fail_json(
                msg=f"replication is not running (IO {replication['io_running']}, SQL {replication['sql_running']},"
                f" last error {replication['last_sql_errno'] or replication['last_io_errno']}:"
                f" {replication['last_sql_error'] or replication['last_io_error']})",
                **result,
            )
        heartbeat_lag = replication.get("heartbeat_lag_seconds")
        lag_bound = max(behind, heartbeat_lag) if heartbeat_lag is not None else behind
        if lag_bound > p["max_lag_seconds"]:
            module.fail_json(msg=f"replication lags {round(lag_bound, 1)}s (more than {p['max_lag_seconds']}s; "
                             f"Seconds_Behind_Master {behind}, heartbeat row age {heartbeat_lag})", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

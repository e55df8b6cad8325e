#!/usr/bin/python
"""Ansible module: the backup server's sync and replication state."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_status
short_description: Report (and gate on) the state of a seafbackup backup server
description:
  - Reads the sync agent's state on the backup host through C(seaf-backup-cmd status --json) (the agent's
    local control socket) and the replication state of the backup's MySQL/MariaDB server.
  - Returns the seed's counts (synchronized, waiting, syncing, failed), the lists of libraries in each
    state with the reason of each failure, how long each unsynchronized library has been behind, and
    the replication threads, lag and last errors.
  - Optionally waits until every library is synchronized, and fails when a library failed to sync or
    when replication lags more than a bound, so a playbook can gate on it (for example before a failover).
  - Never changes anything.
version_added: "0.1.0"
author: seafbackup developers
options:
  conf_dir:
    description: Seafile's conf directory on the backup (the one holding seafile.conf with C([backup])).
    type: path
    default: /opt/seafile/conf
  agent_cmd:
    description: Path of C(seaf-backup-cmd) on the backup host.
    type: path
    default: /opt/seafbackup/venv/bin/seaf-backup-cmd
  login_unix_socket:
    description: Unix socket of the backup's database server, used to read the replication state.
    type: path
  login_host:
    description: Host of the backup's database server when no socket is given.
    type: str
    default: localhost
  login_port:
    description: Port of the backup's database server.
    type: int
    default: 3306
  login_user:
    description: Database user allowed to run C(SHOW SLAVE STATUS) / C(SHOW REPLICA STATUS).
    type: str
    default: root
  login_password:
    description: Password of O(login_user); not needed for root over the unix socket.
    type: str
  replication:
    description: Whether to read the replication state at all (false on a promoted backup).
    type: bool
    default: true
  wait_synchronized:
    description: Wait until every library is synchronized and the queue is empty (or O(timeout) passes).
    type: bool
    default: false
  timeout:
    description: Seconds to wait for O(wait_synchronized).
    type: int
    default: 300
  fail_on_failed:
    description: Fail when any library failed to sync.
    type: bool
    default: false
  max_lag_seconds:
    description: Fail when replication lags more than this many seconds, or a replication thread is stopped.
    type: int
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
requirements:
  - PyMySQL on the backup host (for the replication state)
notes:
  - The agent must run on the backup host; when it does not, the module fails and says so.
"""

EXAMPLES = r"""
- name: Read the backup's state
  seafbackup_status:
    conf_dir: /opt/seafile/conf
    login_unix_socket: /run/mysqld/mysqld.sock
  register: backup_state

- name: Wait for the first sync, fail on failed libraries and on replication lag
  seafbackup_status:
    login_unix_socket: /run/mysqld/mysqld.sock
    wait_synchronized: true
    timeout: 600
    fail_on_failed: true
    max_lag_seconds: 30
"""

RETURN = r"""
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
waited:
  description: Seconds spent waiting for O(wait_synchronized).
  returned: always
  type: float
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule

try:
    from ansible.module_utils.seafbackup_flavour import describe
except ImportError:  # pragma: no cover - shipped with the collection of roles
    describe = None

from ansible.module_utils.seafbackup_login import LOGIN_ARGUMENT_SPEC, connect

AGENT_NOT_RUNNING = 4


def agent_status(module):
    rc, out, err = module.run_command(
        [module.params["agent_cmd"], "status", "--json", "--conf-dir", module.params["conf_dir"]]
    )
    if rc != 0:
        module.fail_json(
            msg="seaf-backup-cmd status failed: " + (err.strip() or out.strip()),
            rc=rc,
            agent_running=rc != AGENT_NOT_RUNNING,
        )
    return json.loads(out)


def replication_state(module):
    conn = connect(module, "the backup's database server")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION() AS v")
            flavour = describe(cur.fetchone()["v"]) if describe else None
            if not flavour or not flavour.get("supported"):
                module.fail_json(msg=(flavour or {}).get("problem", "seafbackup_flavour module_utils missing"))
            cur.execute(flavour["show_replica_status"])
            row = cur.fetchone()
    finally:
        conn.close()
    if not row:
        return {"configured": False}
    cols = flavour["columns"]
    return {
        "configured": True,
        "source_host": row.get(cols["source_host"]),
        "io_running": row.get(cols["io_running"]),
        "sql_running": row.get(cols["sql_running"]),
        "seconds_behind": row.get(cols["seconds_behind"]),
        "last_io_errno": row.get(cols["last_io_errno"]),
        "last_io_error": row.get(cols["last_io_error"]),
        "last_sql_errno": row.get(cols["last_sql_errno"]),
        "last_sql_error": row.get(cols["last_sql_error"]),
    }


def summarize(doc, now):
    by_state = {"synchronized_libraries": [], "waiting_libraries": [], "syncing_libraries": [],
                "failed_libraries": []}
    lag = {}
    for lib in doc["libraries"]:
        state = lib["state"]
        if state == "failed":
            by_state["failed_libraries"].append(
                {"repo_id": lib["repo_id"], "reason": lib["reason"], "attempts": lib["attempts"]})
        else:
            by_state[f"{state}_libraries"].append(lib["repo_id"])
        if state != "synchronized":
            lag[lib["repo_id"]] = round(now - lib["since"], 1)
    return by_state, lag


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
        },
        supports_check_mode=True,
    )
    p = module.params
    started = time.monotonic()
    doc = agent_status(module)
    while p["wait_synchronized"]:
        done = doc["counts"]["synchronized"] + doc["counts"]["failed"] == doc["total"] and not doc["queue_depth"]
        if done and doc.get("last_poll"):
            break
        if time.monotonic() - started > p["timeout"]:
            module.fail_json(msg=f"libraries not synchronized after {p['timeout']}s", counts=doc["counts"])
        time.sleep(0.5)
        doc = agent_status(module)
    by_state, lag = summarize(doc, time.time())
    replication = replication_state(module) if p["replication"] else {}
    result = {
        "changed": False,
        "total": doc["total"],
        "counts": doc["counts"],
        "lag": lag,
        "replication": replication,
        "waited": round(time.monotonic() - started, 2),
        **by_state,
    }
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
        if behind > p["max_lag_seconds"]:
            module.fail_json(msg=f"replication lags {behind}s (more than {p['max_lag_seconds']}s)", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

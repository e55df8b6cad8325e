#!/usr/bin/python
"""Ansible module: the database side of promoting a seafbackup backup server."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_failover
short_description: Promote a seafbackup backup's database to a standalone, writable primary
description:
  - Stops replication and forgets the old primary (the flavour's C(STOP SLAVE)/C(RESET SLAVE ALL) or
    C(STOP REPLICA)/C(RESET REPLICA ALL)), turns C(read_only) (and C(super_read_only) where it exists) off,
    and deletes the sync tokens (C(RepoUserToken), C(RepoTokenPeerInfo)) of the libraries that had failed
    to sync, so that their desktop clients resync instead of uploading onto stale history. Seafile caches
    tokens for two hours, so run this before Seafile starts on the promoted host.
  - Compares with the current state first and only runs what is needed; a second run changes nothing.
  - In check mode it runs nothing and returns the statements it would run.
version_added: "0.1.0"
author: seafbackup developers
extends_documentation_fragment:
  - seafbackup_login
options:
  login_user:
    description: An administrative user (replication admin, SUPER or equivalent).
    type: str
    default: root
  seafile_db:
    description: Name of Seafile's C(seafile) database.
    type: str
    default: seafile_db
  failed_libraries:
    description: Ids of the libraries whose sync tokens are deleted (those the backup could not bring up to date).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reads the state and returns the statements it would run, changing nothing.
  diff_mode:
    support: none
requirements:
  - PyMySQL on the host
"""

EXAMPLES = r"""
- name: Promote the backup's database
  seafbackup_failover:
    login_unix_socket: /run/mysqld/mysqld.sock
    seafile_db: seafile_db
    failed_libraries: "{{ backup_state.failed_libraries | map(attribute='repo_id') | list }}"
  register: promotion
"""

RETURN = r"""
queries:
  description: The statements run (or, in check mode, that would run), without their parameters' values.
  returned: always
  type: list
  elements: str
  sample: ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0",
           "DELETE FROM RepoTokenPeerInfo WHERE token IN (...)", "DELETE FROM RepoUserToken WHERE repo_id IN (...)"]
tokens_deleted:
  description: Number of sync tokens deleted (or to delete) per library.
  returned: always
  type: dict
  sample: {"3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2": 2}
replication_before:
  description: Replication state before the module ran.
  returned: always
  type: dict
  sample: {"configured": true, "source_host": "10.0.0.1", "io_running": "No", "sql_running": "Yes", "read_only": 1}
replication_after:
  description: Replication state afterwards (as it would be, in check mode).
  returned: always
  type: dict
  sample: {"configured": false, "read_only": 0}
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.seafbackup_login import LOGIN_ARGUMENT_SPEC, MySQLError, connect, read_server

REPO_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DB_NAME = re.compile(r"^[A-Za-z0-9_$]+$")


def replication_state(cur):
    """The flavour and what the promotion changes: replication (flavour-neutral keys, `configured` when the server
    is a replica) and read_only (and super_read_only on MySQL) as 0/1."""
    server = read_server(cur)
    state = {"configured": server["replica"] is not None, **(server["replica"] or {}),
             "read_only": int(server["read_only"])}
    if "super_read_only" in server:
        state["super_read_only"] = int(server["super_read_only"])
    return server["flavour"], state


def plan(cur, flavour, before, seafile_db, failed):
    """The statements the promotion needs, as (sql, params) pairs, and the tokens per library."""
    statements = []
    if before["configured"]:
        statements += [(flavour["stop_replica"], None), (flavour["reset_replica_all"], None)]
    if before.get("super_read_only"):
        statements.append(("SET GLOBAL super_read_only = 0", None))
    if before["read_only"]:
        statements.append(("SET GLOBAL read_only = 0", None))
    tokens_per_library = {}
    if failed:
        marks = ", ".join(["%s"] * len(failed))
        cur.execute(
            f"SELECT repo_id, token FROM `{seafile_db}`.RepoUserToken WHERE repo_id IN ({marks})", failed
        )
        rows = cur.fetchall()
        tokens = [r["token"] for r in rows]
        for r in rows:
            tokens_per_library[r["repo_id"]] = tokens_per_library.get(r["repo_id"], 0) + 1
        if tokens:
            token_marks = ", ".join(["%s"] * len(tokens))
            statements.append(
                (f"DELETE FROM `{seafile_db}`.RepoTokenPeerInfo WHERE token IN ({token_marks})", tokens)
            )
            statements.append((f"DELETE FROM `{seafile_db}`.RepoUserToken WHERE repo_id IN ({marks})", failed))
    return statements, tokens_per_library


def _shown(sql):
    return re.sub(r"\((%s(, )?)+\)", "(...)", sql)


def main():
    module = AnsibleModule(
        argument_spec={
            **LOGIN_ARGUMENT_SPEC,
            "seafile_db": {"type": "str", "default": "seafile_db"},
            "failed_libraries": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    if not DB_NAME.match(p["seafile_db"]):
        module.fail_json(msg=f"seafile_db {p['seafile_db']!r} is not a database name")
    bad = [r for r in p["failed_libraries"] if not REPO_ID.match(r)]
    if bad:
        module.fail_json(msg=f"malformed library ids: {', '.join(bad)}")
    failed = sorted(set(p["failed_libraries"]))
    conn = connect(module, "the backup's database server")
    try:
        with conn.cursor() as cur:
            flavour, before = replication_state(cur)
            if not flavour.get("supported"):
                module.fail_json(msg=flavour["problem"])
            statements, tokens = plan(cur, flavour, before, p["seafile_db"], failed)
            result = {
                "changed": bool(statements),
                "queries": [_shown(sql) for sql, _ in statements],
                "tokens_deleted": tokens,
                "replication_before": before,
            }
            if module.check_mode:
                after = {k: v for k, v in before.items() if k in ("read_only", "super_read_only")}
                after.update({k: 0 for k in after}, configured=False)
                module.exit_json(replication_after=after, **result)
            for sql, params in statements:
                try:
                    cur.execute(sql, params)
                except MySQLError as exc:
                    module.fail_json(msg=f"{_shown(sql)} failed: {exc}", **result)
            result["replication_after"] = replication_state(cur)[1]
    finally:
        conn.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()

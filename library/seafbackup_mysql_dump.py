#!/usr/bin/python
"""Ansible module: a consistent dump of the Seafile databases for seeding a replica."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_mysql_dump
short_description: Dump databases for seeding a replica, recording the binlog coordinates
description:
  - Dumps the given databases into a private file (mode 0600) on the managed host, leaving out the
    tables that replication ignores, and returns the primary's GTID position and binlog file/position
    at the instant of the snapshot.
  - C(online) (the default) takes one consistent snapshot with C(--single-transaction) and holds a global
    read lock only for the instant the coordinates are read, so Seafile keeps running.
  - C(locked) is the conservative variant (C(FLUSH TABLES WITH READ LOCK), read the coordinates,
    dump, C(UNLOCK TABLES)). Writes wait for the whole dump; stop Seafile first.
  - Statements and options come from the flavour table (C(module_utils/seafbackup_flavour.py)), so the
    same module serves MariaDB and MySQL 8.x.
  - The dump connects as the module does (O(login_unix_socket) or O(login_host)); O(login_password) reaches it
    through its environment, never its command line.
version_added: "0.1.0"
author: seafbackup developers
extends_documentation_fragment:
  - seafbackup_login
options:
  login_user:
    description: Account with C(SELECT), C(RELOAD), C(LOCK TABLES), C(SHOW VIEW), C(EVENT), C(TRIGGER).
    type: str
    default: root
  path:
    description: Where to write the dump. Its directory must exist; the file is created with mode 0600.
    type: path
    required: true
  databases:
    description: Databases to dump.
    type: list
    elements: str
    required: true
  ignore_tables:
    description: C(db.table) names left out of the dump (no data and no C(CREATE TABLE)).
    type: list
    elements: str
    default: []
  method:
    description: C(online) or C(locked), see above.
    type: str
    choices: [online, locked]
    default: online
  use_gtid:
    description: Record the GTID position (MariaDB C(--gtid), MySQL C(gtid_executed)).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    details: Reports the command it would run and changes nothing.
  diff_mode:
    support: none
  idempotent: false
notes:
  - Needs PyMySQL on the managed host (as community.mysql does) and the server's dump client.
"""

EXAMPLES = r"""
- name: Dump the Seafile databases
  seafbackup_mysql_dump:
    path: /var/tmp/seafbackup-seed/seed.sql
    databases: [ccnet_db, seafile_db, seahub_db]
    ignore_tables: [seafile_db.Repo, seafile_db.Branch, seafile_db.RepoHead]
    login_unix_socket: /run/mysqld/mysqld.sock
  register: dump
"""

RETURN = r"""
command:
  description: The dump command line (no password).
  returned: always
  type: list
  elements: str
gtid:
  description: GTID position of the snapshot (MariaDB gtid_binlog_pos / MySQL gtid_executed).
  returned: success, not in check mode
  type: str
log_file:
  description: Binary log file of the snapshot.
  returned: success, not in check mode
  type: str
log_pos:
  description: Position in I(log_file).
  returned: success, not in check mode
  type: int
size:
  description: Size of the dump in bytes.
  returned: success, not in check mode
  type: int
seconds:
  description: How long the dump took (seconds, with the lock for the C(locked) method).
  returned: success, not in check mode
  type: float
flavour:
  description: The server as the flavour table names it, e.g. C(MariaDB 10.11.6).
  returned: always
  type: str
"""

import os
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.seafbackup_flavour import FlavourError, dump_args, flavour, parse_dump_header
from ansible.module_utils.seafbackup_login import LOGIN_ARGUMENT_SPEC, connect

HEADER_BYTES = 64 * 1024


def _connection_args(params):
    """The dump client reaches the server the way the module did."""
    if params["login_unix_socket"]:
        return [f"--socket={params['login_unix_socket']}", f"--user={params['login_user']}"]
    return [f"--host={params['login_host']}", f"--port={params['login_port']}", f"--user={params['login_user']}"]


def _first(row):
    return next(iter(row.values())) if row else None


def _read_edges(path):
    """Coordinates are comments at the top (file/position) and bottom (MariaDB's GTID) of the dump."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(HEADER_BYTES)
        fh.seek(max(0, size - HEADER_BYTES))
        tail = fh.read()
    return (head + b"\n" + tail).decode("utf-8", "replace").splitlines()


def _run_dump(module, argv, params):
    env = dict(os.environ)
    if params["login_password"]:
        env["MYSQL_PWD"] = params["login_password"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        module.fail_json(msg=f"the dump failed (exit {result.returncode}): {result.stderr.strip()}",
                         command=argv)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "databases": {"type": "list", "elements": "str", "required": True},
            "ignore_tables": {"type": "list", "elements": "str", "default": []},
            "method": {"type": "str", "choices": ["online", "locked"], "default": "online"},
            "use_gtid": {"type": "bool", "default": True},
            **LOGIN_ARGUMENT_SPEC,
        },
        supports_check_mode=True,
    )
    params = module.params
    conn = connect(module, "the primary's database server")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION() AS version")
            flav = flavour(cur.fetchone()["version"])
        path = params["path"]
        argv = dump_args(flav, params["databases"], params["ignore_tables"], params["method"], params["use_gtid"],
                         result_file=path)
        argv = [argv[0], *_connection_args(params), *argv[1:]]
        if module.check_mode:
            module.exit_json(changed=True, command=argv, flavour=flav["label"])
        # The dump holds every row of the Seafile databases: private from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        coords = {"gtid": None, "log_file": None, "log_pos": None}
        started = time.monotonic()
        if params["method"] == "locked":
            with conn.cursor() as cur:
                cur.execute("FLUSH TABLES WITH READ LOCK")
                try:
                    cur.execute(flav["show_binlog_status"])
                    row = cur.fetchone()
                    if row:
                        coords["log_file"], coords["log_pos"] = row["File"], int(row["Position"])
                    cur.execute(flav["gtid_position_query"])
                    coords["gtid"] = _first(cur.fetchone())
                    _run_dump(module, argv, params)
                finally:
                    cur.execute("UNLOCK TABLES")
        else:
            _run_dump(module, argv, params)
            coords = parse_dump_header(flav, _read_edges(path))
            if params["use_gtid"] and coords["gtid"] is None:
                module.fail_json(msg="the dump records no GTID position; is the binary log enabled?", command=argv)
        if coords["log_file"] is None and not params["use_gtid"]:
            module.fail_json(msg="the dump records no binlog position; is the binary log enabled?", command=argv)
        module.exit_json(changed=True, command=argv, flavour=flav["label"], size=os.path.getsize(path),
                         seconds=round(time.monotonic() - started, 3), **coords)
    except FlavourError as exc:
        module.fail_json(msg=str(exc))
    finally:
        conn.close()


if __name__ == "__main__":
    main()

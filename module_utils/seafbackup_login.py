"""How the seafbackup modules log in to a MySQL/MariaDB server and read its state: one argument spec, one
connect, one reader of the flavour, the replication state and read_only."""

from __future__ import annotations

import os

try:
    import pymysql
    import pymysql.cursors

    HAS_PYMYSQL = True
except ImportError:  # pragma: no cover - reported by connect()
    HAS_PYMYSQL = False

from ansible.module_utils.basic import missing_required_lib
from ansible.module_utils.seafbackup_flavour import describe, replica_status

LOGIN_ARGUMENT_SPEC = {
    "login_unix_socket": {"type": "path"},
    "login_host": {"type": "str", "default": "localhost"},
    "login_port": {"type": "int", "default": 3306},
    "login_user": {"type": "str", "default": "root"},
    "login_password": {"type": "str", "no_log": True},
}


def connect(module, what="the database server"):
    """A connection with dict rows and autocommit, or fail_json saying what could not be reached (and, for a
    socket that is not there, which path was tried)."""
    if not HAS_PYMYSQL:
        module.fail_json(msg=missing_required_lib("PyMySQL"))
    p = module.params
    try:
        return pymysql.connect(
            unix_socket=p["login_unix_socket"],
            host=p["login_host"],
            port=p["login_port"],
            user=p["login_user"],
            password=p["login_password"] or "",
            connect_timeout=5,
            autocommit=True,
            cursorclass=pymysql.cursors.DictCursor,
        )
    except pymysql.MySQLError as exc:
        socket = p["login_unix_socket"]
        if socket and not os.path.exists(socket):
            module.fail_json(msg=f"cannot connect to {what}: there is no socket {socket}", socket=socket,
                             socket_missing=True)
        module.fail_json(msg=f"cannot connect to {what}: {exc}", socket=socket, socket_missing=False)


MySQLError = pymysql.MySQLError if HAS_PYMYSQL else Exception


def read_server(cur):
    """What the server is and does, through a dict cursor: its version, flavour (the flavour table, or
    {'supported': False, 'problem': ...}), server_id, log_bin, read_only (and super_read_only on MySQL), and its
    replication state in flavour-neutral keys (`replica_status`; None when it is not a replica)."""
    cur.execute("SELECT VERSION() AS version, @@GLOBAL.server_id AS server_id, @@GLOBAL.log_bin AS log_bin, "
                "@@GLOBAL.read_only AS read_only")
    row = cur.fetchone()
    flavour = describe(row["version"])
    info = {"version": row["version"], "flavour": flavour, "server_id": int(row["server_id"]),
            "log_bin": bool(int(row["log_bin"])), "read_only": bool(int(row["read_only"])), "replica": None}
    if flavour.get("name") == "mysql":
        cur.execute("SELECT @@GLOBAL.super_read_only AS sro")
        info["super_read_only"] = bool(int(cur.fetchone()["sro"]))
    if flavour.get("supported"):
        cur.execute(flavour["show_replica_status"])
        info["replica"] = replica_status(flavour, cur.fetchone())
    return info

"""How the seafbackup modules log in to a MySQL/MariaDB server: one argument spec, one connect."""

from __future__ import annotations

try:
    import pymysql
    import pymysql.cursors

    HAS_PYMYSQL = True
except ImportError:  # pragma: no cover - reported by connect()
    HAS_PYMYSQL = False

from ansible.module_utils.basic import missing_required_lib

LOGIN_ARGUMENT_SPEC = {
    "login_unix_socket": {"type": "path"},
    "login_host": {"type": "str", "default": "localhost"},
    "login_port": {"type": "int", "default": 3306},
    "login_user": {"type": "str", "default": "root"},
    "login_password": {"type": "str", "no_log": True},
}


def connect(module, what="the database server"):
    """A connection with dict rows and autocommit, or fail_json saying what could not be reached."""
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
        module.fail_json(msg=f"cannot connect to {what}: {exc}")


MySQLError = pymysql.MySQLError if HAS_PYMYSQL else Exception

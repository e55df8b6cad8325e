"""Connections to Seafile's database, from the `[database]` section."""

from __future__ import annotations

import ssl
import threading

import pymysql
import pymysql.cursors

from seafbackup_agent.config import DatabaseSettings
from seafbackup_agent.errors import DatabaseError


class _Connection(pymysql.connections.Connection):  # type: ignore[misc]  # PyMySQL ships no types
    """PyMySQL's connection with one TLS context per process for its default mode. Without TLS options PyMySQL
    (1.2) tries TLS if the server offers it, unverified, and builds a new context for each connection, loading
    the system's CA store each time (0.1-0.3 s of CPU on the lab's machine) for a context that verifies nothing.
    The context is the same each time, so it is built once; explicit TLS options still get their own."""

    _preferred: ssl.SSLContext | None = None
    _lock = threading.Lock()

    def _create_ssl_ctx(self, sslp: object) -> ssl.SSLContext:
        if not (isinstance(sslp, dict) and not sslp):
            return super()._create_ssl_ctx(sslp)
        with _Connection._lock:
            if _Connection._preferred is None:
                _Connection._preferred = super()._create_ssl_ctx(sslp)
            return _Connection._preferred


def connect(settings: DatabaseSettings, *, autocommit: bool = True) -> pymysql.connections.Connection:
    try:
        conn = _Connection(
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            database=settings.db_name,
            unix_socket=settings.unix_socket,
            charset=settings.charset,
            autocommit=autocommit,
            connect_timeout=5,
        )
    except pymysql.MySQLError as exc:
        where = settings.unix_socket or f"{settings.host}:{settings.port}"
        raise DatabaseError(
            f"cannot connect to database {settings.db_name} at {where} as {settings.user}: {exc.args[-1]}",
            hint="check that MariaDB/MySQL is running and the [database] section of seafile.conf",
        ) from exc
    causal_reads_on_galera(conn)
    return conn


def causal_reads_on_galera(conn: pymysql.connections.Connection) -> None:
    """On a Galera node (a Seafile cluster's database) this session's reads wait until the node has applied every
    write set the cluster committed before them (`wsrep_sync_wait = 1`): what an agent reads on one node (the
    library list, a head, the binlog's end) then holds every commit made through any node before the read.
    Elsewhere nothing (`wsrep_on` off, or unknown to the server)."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.wsrep_on")
            row = cur.fetchone()
            if row and int(row[0]):
                cur.execute("SET SESSION wsrep_sync_wait = 1")
    except (pymysql.MySQLError, TypeError, ValueError):
        pass


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a PyMySQL error (compare with `pymysql.constants.ER`), else None."""
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None

"""Connections to Seafile's database, from the `[database]` section."""

from __future__ import annotations

import pymysql
import pymysql.cursors

from seafbackup_agent.config import DatabaseSettings
from seafbackup_agent.errors import DatabaseError


def connect(settings: DatabaseSettings, *, autocommit: bool = True) -> pymysql.connections.Connection:
    try:
        return pymysql.connect(
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


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a PyMySQL error (compare with `pymysql.constants.ER`), else None."""
    if isinstance(exc, pymysql.MySQLError) and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None

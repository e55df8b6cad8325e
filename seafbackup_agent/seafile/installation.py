"""One Seafile installation: its seafile.conf, its object storage and its database."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pymysql

from seafbackup_agent.config import SeafileConf, load_seafile_conf
from seafbackup_agent.errors import ConfigError
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.seafile.library import LibraryRows
from seafbackup_agent.seafile.storage import FilesystemStore


@dataclass
class SeafileInstallation:
    conf: SeafileConf
    data_dir: Path
    store: FilesystemStore
    rows: LibraryRows

    @classmethod
    def open(cls, conf_dir: str | Path, data_dir: str | Path) -> SeafileInstallation:
        conf = load_seafile_conf(conf_dir)
        data = Path(data_dir)
        if not data.is_dir():
            raise ConfigError(f"seafile-data directory {data} does not exist", hint="pass --data-dir")
        conn = connect(conf.database)
        return cls(conf, data, FilesystemStore(data), LibraryRows(conn, keep_days=conf.history_keep_days))

    @staticmethod
    def open_rows(conf: SeafileConf) -> LibraryRows:
        """A new database connection to the same installation (one per thread)."""
        return LibraryRows(connect(conf.database), keep_days=conf.history_keep_days)

    def reconnect_if_gone(self) -> None:
        """Replace a database connection the server has closed (it restarted, or wait_timeout passed), so
        that a long-lived worker's next sync does not fail on it; DatabaseError if the server is down."""
        try:
            self.rows.conn.ping()
            return
        except pymysql.MySQLError:
            with contextlib.suppress(pymysql.MySQLError):
                self.rows.conn.close()
        self.rows.conn = connect(self.conf.database)

    def close(self) -> None:
        with contextlib.suppress(pymysql.MySQLError):  # already closed by a lost connection
            self.rows.conn.close()

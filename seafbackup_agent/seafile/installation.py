"""One Seafile installation: its seafile.conf, its object storage and its database."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pymysql

from seafbackup_agent.config import SeafileConf, load_seafile_conf
from seafbackup_agent.errors import ConfigError
from seafbackup_agent.objectstore.store import BackendStore, open_store
from seafbackup_agent.seafile.db import connect
from seafbackup_agent.seafile.library import LibraryRows
from seafbackup_agent.seafile.storage import FilesystemStore

INDEX_FILE = "object-index.sqlite"


@dataclass
class SeafileInstallation:
    conf: SeafileConf
    data_dir: Path
    store: FilesystemStore | BackendStore
    rows: LibraryRows

    @classmethod
    def open(cls, conf_dir: str | Path, data_dir: str | Path, *, index: bool = True) -> SeafileInstallation:
        """`index`: on object storage, answer "is this object here?" from the local index of what the store
        holds (objectstore/object_index.py) instead of asking the store (`verify` asks the store)."""
        conf = load_seafile_conf(conf_dir)
        data = Path(data_dir)
        if not data.is_dir():
            raise ConfigError(f"seafile-data directory {data} does not exist", hint="pass --data-dir")
        store = open_store(conf.backends, data, index_path=index_path(conf, data) if index else None)
        try:
            conn = connect(conf.database)
        except BaseException:
            store.close()
            raise
        return cls(conf, data, store, LibraryRows(conn, keep_days=conf.history_keep_days))

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
        self.store.close()


def index_path(conf: SeafileConf, data_dir: Path) -> Path:
    """Where the index of an object-storage target is kept: the agent's state directory, else seafile-data."""
    base = conf.backup.state_dir if conf.backup is not None else data_dir / ".seafbackup"
    return base / INDEX_FILE

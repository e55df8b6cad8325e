"""seafile.conf -> typed settings. The only place that reads seafile.conf."""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from seafbackup_agent.errors import ConfigError
from seafbackup_agent.objectstore.backend_conf import Backend, FsBackend, parse_backends
from seafbackup_agent.seafile.storage import ObjType

CONF_DIR_VARIABLE = "SEAFILE_CENTRAL_CONF_DIR"
DATA_DIR_VARIABLE = "SEAFILE_CONF_DIR"
"""Seafile's own scripts (seafile.sh, seaf-fsck.sh) export these: the conf directory and, despite its name, the
seafile-data directory."""


def default_conf_dir() -> Path:
    """Where seafile.conf is when --conf-dir is not given: as Seafile's scripts find it."""
    return Path(os.environ.get(CONF_DIR_VARIABLE) or "/opt/seafile/conf")


def default_data_dir() -> Path:
    """Where seafile-data is when --data-dir is not given: as Seafile's scripts find it."""
    return Path(os.environ.get(DATA_DIR_VARIABLE) or "/opt/seafile/seafile-data")


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Seafile's `[database]` section (MySQL/MariaDB)."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    db_name: str
    unix_socket: str | None = None
    charset: str = "utf8mb4"


DEFAULT_WORKERS = 8
"""Libraries the backup syncs side by side. A sync is a chain of requests, a round trip each: at 100 head moves a
second over a 20 ms link, 2 workers fell hours behind where 8 kept the RPO under half a second
(docs/benchmarks.md)."""


@dataclass(frozen=True, slots=True)
class BackupSettings:
    """The `[backup]` section: `backup_url` on the primary, `primary_url` on the backup."""

    primary_url: str | None
    backup_url: str | None
    sync_token: str = field(repr=False)
    sync_poll_interval_hours: float = 1.0
    listen: tuple[str, int] = ("0.0.0.0", 8090)
    """Where this host's agent listens (the primary's API, or the backup's notify endpoint)."""
    workers: int = DEFAULT_WORKERS
    state_dir: Path = Path("/var/lib/seafbackup")
    metrics_listen: tuple[str, int] | None = None
    ssl_cert: Path | None = None
    """Certificate and key this agent serves HTTPS with (the peer's URL then says https)."""
    ssl_key: Path | None = None
    ssl_ca_file: Path | None = None
    """CA file that signed the peer's certificate, when it is not one the system trusts."""
    heartbeat_interval: float = 1.0
    """Seconds between heartbeats: the backup pulls one from the primary's agent, the primary's agent writes the
    replicated heartbeat row and checks that the backup takes its signatures."""
    stale_after: float = 5.0
    """Seconds without fresh evidence from the primary after which the backup says it is stale."""
    heartbeat_database: str = "seafbackup"
    """Database of seafbackup's own holding the replicated `heartbeat` table (setup_backup.yml's marker database)."""
    binlog_server_id: int | None = None
    """Server id the primary agent reads the binlog under (None: derived from the host name, see
    `service.binlog.default_server_id`). Must differ from every replica's server-id and every other agent's."""

    @property
    def primary_urls(self) -> tuple[str, ...]:
        """The primary's nodes (a Seafile cluster lists each node's agent): `primary_url` split at commas and
        blanks, in the order given. The backup stays with one node while it answers and moves to the next at
        once when it does not."""
        return split_urls(self.primary_url)

    @property
    def mode(self) -> str:
        return "primary" if self.backup_url else "backup"


@dataclass(frozen=True, slots=True)
class SeafileConf:
    path: Path
    database: DatabaseSettings
    backup: BackupSettings | None
    history_keep_days: int | None = None
    """`[history] keep_days`: the global history limit when a library has no RepoHistoryLimit row."""
    backends: dict[ObjType, Backend] = field(default_factory=lambda: dict.fromkeys(ObjType, FsBackend()))
    """Where each object type is stored: `[commit_object_backend]`, `[fs_object_backend]`, `[block_backend]`."""

    @property
    def on_filesystem(self) -> bool:
        return all(isinstance(b, FsBackend) and b.dir is None for b in self.backends.values())


def _read(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist", hint=f"pass --conf-dir, or set {CONF_DIR_VARIABLE}, to the "
                          "directory that holds Seafile's seafile.conf") from exc
    except PermissionError as exc:
        raise ConfigError(f"{path} is not readable by this user", hint="run as the Seafile user or root") from exc
    except configparser.Error as exc:
        raise ConfigError(f"{path} is not a valid ini file: {exc}") from exc
    return parser


def _database(path: Path, parser: configparser.ConfigParser) -> DatabaseSettings:
    if not parser.has_section("database"):
        raise ConfigError(f"{path} has no [database] section", hint="seafbackup needs Seafile on MySQL/MariaDB")
    section = parser["database"]
    kind = section.get("type", "").strip().lower()
    if kind != "mysql":
        raise ConfigError(
            f"{path}: [database] type is {kind or 'missing'!r}", hint="seafbackup supports type = mysql only"
        )
    missing = [key for key in ("host", "user", "password", "db_name") if not section.get(key)]
    if missing and not (section.get("unix_socket") and missing == ["host"]):
        raise ConfigError(f"{path}: [database] lacks {', '.join(missing)}")
    try:
        port = int(section.get("port", "3306"))
    except ValueError as exc:
        raise ConfigError(f"{path}: [database] port is not a number") from exc
    return DatabaseSettings(
        host=section.get("host", "localhost"),
        port=port,
        user=section["user"],
        password=section["password"],
        db_name=section["db_name"],
        unix_socket=section.get("unix_socket") or None,
        charset=section.get("connection_charset", "utf8mb4") or "utf8mb4",
    )


def split_urls(value: str | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part for part in re.split(r"[\s,]+", value or "") if part))


def _backup(path: Path, parser: configparser.ConfigParser) -> BackupSettings | None:
    if not parser.has_section("backup"):
        return None
    section = parser["backup"]
    primary_url = section.get("primary_url", "").strip() or None
    backup_url = section.get("backup_url", "").strip() or None
    if primary_url and backup_url:
        raise ConfigError(
            f"{path}: [backup] sets both primary_url and backup_url",
            hint="the primary sets backup_url, the backup sets primary_url",
        )
    if not primary_url and not backup_url:
        raise ConfigError(f"{path}: [backup] sets neither primary_url nor backup_url")
    token = section.get("sync_token", "").strip()
    if len(token) < 32:
        raise ConfigError(
            f"{path}: [backup] sync_token is missing or shorter than 32 characters",
            hint="use the same 40-hex secret on both hosts (setup_backup.yml generates one)",
        )
    try:
        interval = float(section.get("sync_poll_interval", "1"))
    except ValueError as exc:
        raise ConfigError(f"{path}: [backup] sync_poll_interval is not a number of hours") from exc
    if interval <= 0:
        raise ConfigError(f"{path}: [backup] sync_poll_interval must be positive (hours)")
    if bool(section.get("ssl_cert", "").strip()) != bool(section.get("ssl_key", "").strip()):
        raise ConfigError(f"{path}: [backup] ssl_cert and ssl_key go together")
    default_port = 8090 if backup_url else 8091
    listen = _address(path, "listen", section.get("listen", f"0.0.0.0:{default_port}"))
    metrics = section.get("metrics_listen", "").strip()
    try:
        workers = int(section.get("workers", str(DEFAULT_WORKERS)))
    except ValueError as exc:
        raise ConfigError(f"{path}: [backup] workers is not a number") from exc
    if workers < 1:
        raise ConfigError(f"{path}: [backup] workers must be at least 1")
    heartbeat_interval = _seconds(path, section, "heartbeat_interval", 1.0)
    stale_after = _seconds(path, section, "stale_after", max(5.0, 5 * heartbeat_interval))
    if stale_after < 2 * heartbeat_interval:
        raise ConfigError(f"{path}: [backup] stale_after must be at least twice heartbeat_interval")
    heartbeat_database = section.get("heartbeat_database", "seafbackup").strip()
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", heartbeat_database):
        raise ConfigError(f"{path}: [backup] heartbeat_database must be a database name (letters, digits, _)")
    server_id = section.get("binlog_server_id", "").strip()
    if server_id and not (server_id.isdigit() and 0 < int(server_id) < 2**32):
        raise ConfigError(f"{path}: [backup] binlog_server_id must be a number from 1 to 4294967295")
    return BackupSettings(
        primary_url,
        backup_url,
        token,
        interval,
        listen=listen,
        workers=workers,
        state_dir=Path(section.get("state_dir", "/var/lib/seafbackup")),
        metrics_listen=_address(path, "metrics_listen", metrics) if metrics else None,
        ssl_cert=_optional_file(path, section, "ssl_cert"),
        ssl_key=_optional_file(path, section, "ssl_key"),
        ssl_ca_file=_optional_file(path, section, "ssl_ca_file"),
        binlog_server_id=int(server_id) if server_id else None,
        heartbeat_interval=heartbeat_interval,
        stale_after=stale_after,
        heartbeat_database=heartbeat_database,
    )


def _seconds(path: Path, section: configparser.SectionProxy, key: str, default: float) -> float:
    raw = section.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: [backup] {key} is not a number of seconds") from exc
    if not 0 < value <= 3600:
        raise ConfigError(f"{path}: [backup] {key} must be between 0 and 3600 seconds")
    return value


def _optional_file(path: Path, section: configparser.SectionProxy, key: str) -> Path | None:
    value = section.get(key, "").strip()
    if not value:
        return None
    if not Path(value).is_file():
        raise ConfigError(f"{path}: [backup] {key} = {value} does not exist")
    return Path(value)


def _address(path: Path, key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{path}: [backup] {key} = {value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_seafile_conf(conf_dir: str | Path) -> SeafileConf:
    path = Path(conf_dir) / "seafile.conf"
    parser = _read(path)
    keep_days = parser.get("history", "keep_days", fallback="").strip()
    try:
        history_keep_days = int(keep_days) if keep_days else None
    except ValueError as exc:
        raise ConfigError(f"{path}: [history] keep_days is not a number of days") from exc
    return SeafileConf(
        path=path,
        database=_database(path, parser),
        backup=_backup(path, parser),
        history_keep_days=history_keep_days,
        backends=parse_backends(path, parser),
    )

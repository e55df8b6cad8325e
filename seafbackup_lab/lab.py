"""Two Seafile "hosts" on one machine: a MariaDB server each, Seafile's databases, conf and data dirs."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from seafbackup_lab.mariadb import MariaDBPaths, MariaDBServer
from seafbackup_lab.services import UnitService
from seafbackup_lab.sshd import LabSSH

if TYPE_CHECKING:
    from seafbackup_agent.config import DatabaseSettings

DATABASES = ("ccnet_db", "seafile_db", "seahub_db")
SEAFILE_DB_USER = "seafile"
MARKER_DATABASE = "seafbackup"
"""setup_backup.yml's database of its own on the primary (replicated): the agents' heartbeat row lives there."""
DEFAULT_ADDRESSES = {"primary": "127.0.0.11", "backup": "127.0.0.12"}
SERVER_IDS = {"primary": 1, "backup": 2}
# The lab's replication password: a lab secret, committed on purpose (production keeps it in a vault).
LAB_REPLICATION_PASSWORD = "lab-replication-secret"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_lab_dir() -> Path:
    return Path(os.environ.get("SEAFBACKUP_LAB_DIR", REPO_ROOT / ".lab"))


def new_lab_dir(parent: Path | str, prefix: str) -> Path:
    """A fresh directory for a lab under `parent`, which the mysql user that MariaDB runs as must traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


@dataclass(frozen=True, slots=True)
class LabHost:
    """One lab host: `root` stands in for its filesystem."""

    name: str
    address: str
    root: Path

    @property
    def mariadb(self) -> MariaDBServer:
        return MariaDBServer(MariaDBPaths(self.root), self.address)

    @property
    def unit_services(self) -> list[UnitService]:
        """Services the playbooks installed on this host as systemd units (the sync agent)."""
        return [UnitService("seafbackup-agent", self.root)]

    @property
    def seafile_conf_dir(self) -> Path:
        return self.root / "opt/seafile/conf"

    @property
    def seafile_data_dir(self) -> Path:
        return self.root / "opt/seafile/seafile-data"

    def database(self) -> DatabaseSettings:
        from seafbackup_agent.config import load_seafile_conf  # the lab's CLI (run per service action) needs less

        return load_seafile_conf(self.seafile_conf_dir).database


class Lab:
    def __init__(self, lab_dir: Path, addresses: dict[str, str] | None = None) -> None:
        self.dir = Path(lab_dir)
        self._state_file = self.dir / "lab.json"
        state = self._load_state()
        self.addresses = dict(state.get("addresses") or addresses or DEFAULT_ADDRESSES)
        self.db_password: str = state.get("db_password") or secrets.token_hex(16)

    def _load_state(self) -> dict:
        try:
            return json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return {}

    def _save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"addresses": self.addresses, "db_password": self.db_password}))
        self._state_file.chmod(0o600)

    @property
    def hosts(self) -> dict[str, LabHost]:
        return {name: LabHost(name, address, self.dir / name) for name, address in self.addresses.items()}

    @property
    def primary(self) -> LabHost:
        return self.hosts["primary"]

    @property
    def backup(self) -> LabHost:
        return self.hosts["backup"]

    def up(self) -> None:
        """Create what is missing and start both servers. Safe to run twice."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # MariaDB drops to the mysql user: every directory above its datadir must be traversable.
        self.dir.chmod(0o755)
        self._save_state()
        for name, host in self.hosts.items():
            host.root.mkdir(exist_ok=True)
            host.root.chmod(0o755)
            server = host.mariadb
            server.initialize()
            if name == "primary":
                _write_primary_binlog_drop_in(host)
            server.start()
            self._provision_databases(host)
            self._write_seafile_conf(host)
            (host.root / "var/tmp").mkdir(parents=True, exist_ok=True)
        self.write_inventory(self.dir / "inventory.yml")

    def down(self) -> None:
        """Stop all the lab started: agents, MariaDB servers and the sshd of `seafbackup-lab sshd up` (whose PID
        files `reset` deletes: an sshd left running keeps its address and the next lab's sshd cannot start)."""
        for host in self.hosts.values():
            for service in host.unit_services:
                service.stop()
            host.mariadb.stop()
        LabSSH(self.dir, self.addresses).down()

    def reset(self) -> None:
        """Stop everything and delete the lab's state, then bring up a fresh lab."""
        self.down()
        addresses = self.addresses
        shutil.rmtree(self.dir, ignore_errors=True)
        self.__init__(self.dir, addresses)  # type: ignore[misc]
        self.up()

    def status(self) -> dict[str, dict[str, object]]:
        report: dict[str, dict[str, object]] = {}
        for name, host in self.hosts.items():
            server = host.mariadb
            report[name] = {
                "address": host.address,
                "mariadb_pid": server.pid(),
                "agent_pid": host.unit_services[0].pid(),
                "root": str(host.root),
                "seafile_conf": str(host.seafile_conf_dir / "seafile.conf"),
            }
        return report

    def _provision_databases(self, host: LabHost) -> None:
        from seafbackup_agent.service.heartbeat import DB_HEARTBEAT_SCHEMA  # not at the top: the CLI's calls stay light

        conn = host.mariadb.root_connection()
        try:
            with conn.cursor() as cur:
                for db in DATABASES:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4")
                    cur.execute(f"USE `{db}`")
                    for statement in _schema_statements(db):
                        cur.execute(statement)
                cur.execute(
                    "CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (SEAFILE_DB_USER, self.db_password)
                )
                for db in DATABASES:
                    cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'", (SEAFILE_DB_USER,))
                if self._is_binlog_source(host):
                    # What setup_backup.yml grants on the primary: the agent tails the binlog and writes the
                    # replicated heartbeat row into the marker database.
                    cur.execute(f"GRANT {PRIMARY_AGENT_PRIVILEGES} ON *.* TO %s@'%%'", (SEAFILE_DB_USER,))
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{MARKER_DATABASE}` CHARACTER SET utf8mb4")
                    cur.execute(DB_HEARTBEAT_SCHEMA.format(database=MARKER_DATABASE))
                    cur.execute(f"GRANT SELECT, INSERT, UPDATE ON `{MARKER_DATABASE}`.`heartbeat` TO %s@'%%'",
                                (SEAFILE_DB_USER,))
        finally:
            conn.close()

    def _is_binlog_source(self, host: LabHost) -> bool:
        """Hosts whose database the primary's agent reads the binlog of, with the marker database."""
        return host.name == "primary"

    def _write_seafile_conf(self, host: LabHost) -> None:
        conf = host.seafile_conf_dir
        conf.mkdir(parents=True, exist_ok=True)
        host.seafile_data_dir.mkdir(parents=True, exist_ok=True)
        seafile_conf = conf / "seafile.conf"
        if not seafile_conf.exists():
            _write_private(
                seafile_conf,
                "[fileserver]\nport = 8082\n\n"
                "[database]\ntype = mysql\n"
                f"host = {host.address}\nport = 3306\nuser = {SEAFILE_DB_USER}\npassword = {self.db_password}\n"
                "db_name = seafile_db\nconnection_charset = utf8mb4\n",
            )
        ccnet_conf = conf / "ccnet.conf"
        if not ccnet_conf.exists():
            _write_private(
                ccnet_conf,
                f"[General]\nSERVICE_URL = http://{host.address}\n\n"
                f"[Database]\nENGINE = mysql\nHOST = {host.address}\nPORT = 3306\nUSER = {SEAFILE_DB_USER}\n"
                f"PASSWD = {self.db_password}\nDB = ccnet_db\nCONNECTION_CHARSET = utf8mb4\n",
            )
        seahub_settings = conf / "seahub_settings.py"
        if not seahub_settings.exists():
            _write_private(
                seahub_settings,
                "DATABASES = {\n    'default': {\n        'ENGINE': 'django.db.backends.mysql',\n"
                f"        'NAME': 'seahub_db', 'USER': '{SEAFILE_DB_USER}', 'PASSWORD': '{self.db_password}',\n"
                f"        'HOST': '{host.address}', 'PORT': '3306',\n    }}\n}}\n",
            )

    def write_inventory(self, path: Path) -> None:
        path.write_text(render_inventory(self))


PRIMARY_AGENT_PRIVILEGES = "REPLICATION SLAVE, BINLOG MONITOR"
PRIMARY_BINLOG_DROP_IN = "50-lab-primary-binlog.cnf"


def _write_primary_binlog_drop_in(host: LabHost) -> None:
    """The lab's primary logs in ROW format from the start, as setup_backup.yml's drop-in makes it, so that tests
    pairing the agents without the playbook run the agent's binlog change detection."""
    (host.mariadb.paths.conf_d / PRIMARY_BINLOG_DROP_IN).write_text(
        "# seafbackup lab: binary logging on the primary (setup_backup.yml writes 60-seafbackup-primary.cnf).\n"
        f"[mysqld]\nserver-id = {SERVER_IDS[host.name]}\nlog-bin = mysql-bin\nbinlog_format = ROW\n"
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _schema_statements(db: str) -> list[str]:
    text = resources.files("seafbackup_lab").joinpath(f"schema/{db}.sql").read_text()
    lines = [line for line in text.splitlines() if not line.startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def inventory_head(lab_dir: str, *, local: bool) -> list[str]:
    """The vars every lab inventory (the pair's and the cluster's) starts with, up to `children:`."""
    return [
        "all:",
        "  vars:",
        *(["    ansible_connection: local"] if local else []),
        '    ansible_python_interpreter: "{{ ansible_playbook_python }}"',
        f'    seafbackup_lab_dir: "{lab_dir}"',
        '    seafbackup_lab_cmd: "{{ ansible_playbook_python | dirname }}/seafbackup-lab --lab-dir '
        '{{ seafbackup_lab_dir }}"',
        "    seafbackup_seafile_user: root",
        f"    seafbackup_replication_password: {LAB_REPLICATION_PASSWORD}",
        "    seafbackup_replication_seed_connect_retry: 1",
        "    seafbackup_agent_user: root",
        "  children:",
    ]


def render_inventory(lab: Lab, *, lab_dir_expr: str | None = None, connection: str = "local",
                     ssh_key: Path | None = None, ssh_port: int = 2222, swap: bool = False) -> str:
    """The Ansible inventory for a lab. `lab_dir_expr` lets the committed inventory stay relative.

    `swap` puts the host ``backup`` in group seafile_primary and ``primary`` in seafile_backup: the pair after a
    failover, for rebuilding the old primary as the new backup. Host names, paths and server ids stay per host.

    `connection` ``ssh`` or ``paramiko`` reaches each host through the lab's sshd (`seafbackup_lab.sshd`) with
    `ssh_key`; the connection settings are per host so that `localhost` (the control node) stays local.
    """
    lab_dir = lab_dir_expr or str(lab.dir)
    lines = [
        "# The lab's two hosts. Generated by seafbackup_lab.lab.render_inventory; the tests check it matches.",
        *inventory_head(lab_dir, local=connection == "local"),
    ]
    groups = (("seafile_primary", "primary"), ("seafile_backup", "backup"))
    if swap:
        groups = (("seafile_primary", "backup"), ("seafile_backup", "primary"))
    for group, name in groups:
        host = lab.hosts[name]
        lines += [
            f"    {group}:",
            "      hosts:",
            f"        {name}:",
            *(
                []
                if connection == "local"
                else [
                    f"          ansible_connection: {connection}",
                    f"          ansible_host: {host.address}",
                    f"          ansible_port: {ssh_port}",
                    "          ansible_user: root",
                    f"          ansible_ssh_private_key_file: {ssh_key}",
                ]
            ),
            f"          seafbackup_host_root: \"{{{{ seafbackup_lab_dir }}}}/{name}\"",
            f"          seafbackup_mysql_host: {host.address}",
            '          seafbackup_mysql_socket: "{{ seafbackup_host_root }}/run/mysqld/mysqld.sock"',
            '          seafbackup_mysql_conf_d: "{{ seafbackup_host_root }}/etc/mysql/conf.d"',
            '          seafbackup_seafile_conf_dir: "{{ seafbackup_host_root }}/opt/seafile/conf"',
            '          seafbackup_seafile_data_dir: "{{ seafbackup_host_root }}/opt/seafile/seafile-data"',
            f"          seafbackup_mysql_server_id: {SERVER_IDS[name]}",
            f'          seafbackup_service_command: "{{{{ seafbackup_lab_cmd }}}} service {name} {{name}} {{action}}"',
            '          seafbackup_tmp_dir: "{{ seafbackup_host_root }}/var/tmp"',
            '          seafbackup_agent_seafile_data_dir: "{{ seafbackup_seafile_data_dir }}"',
            '          seafbackup_agent_venv: "{{ seafbackup_host_root }}/opt/seafbackup/venv"',
            '          seafbackup_agent_state_dir: "{{ seafbackup_host_root }}/var/lib/seafbackup"',
            '          seafbackup_failover_marker_file: "{{ seafbackup_agent_state_dir }}/last-failover.json"',
            '          seafbackup_agent_unit_dir: "{{ seafbackup_host_root }}/etc/systemd/system"',
            '          seafbackup_agent_bin_dir: "{{ seafbackup_host_root }}/usr/local/bin"',
            f"          seafbackup_agent_listen_address: {host.address}",
        ]
    return "\n".join(lines) + "\n"


LAB_SYNC_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def _set_backup_section(conf_dir: Path, section: str) -> None:
    path = conf_dir / "seafile.conf"
    text = path.read_text().split("\n[backup]\n")[0].rstrip("\n") + "\n"
    path.write_text(text + ("\n[backup]\n" + section if section else ""))


def pair_agents(lab: Lab, *, state_dir: Path, poll_hours: float = 1.0, workers: int = 2,
                token: str = LAB_SYNC_TOKEN) -> None:
    """Write the `[backup]` sections that make the lab's hosts a pair, as setup_backup.yml would, for tests and
    benchmarks that run the agents by hand (primary agent on :8090, backup agent on :8091)."""
    p, b = lab.primary.address, lab.backup.address
    _set_backup_section(lab.primary.seafile_conf_dir, f"backup_url = http://{b}:8091\nsync_token = {token}\n"
                                                      f"listen = {p}:8090\nstate_dir = {state_dir}-primary\n")
    _set_backup_section(lab.backup.seafile_conf_dir,
                        f"primary_url = http://{p}:8090\nsync_token = {token}\nsync_poll_interval = {poll_hours}\n"
                        f"listen = {b}:8091\nstate_dir = {state_dir}\nworkers = {workers}\n")


def unpair_agents(lab: Lab) -> None:
    for host in lab.hosts.values():
        _set_backup_section(host.seafile_conf_dir, "")

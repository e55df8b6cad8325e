"""A Seafile cluster as the primary, on one machine: three nodes running MariaDB with Galera, two of them also
Seafile (sharing one `seafile-data`, as NFS would give them), and one backup host with its own MariaDB.

| host | what | address (prefix `127.0.8.`) |
| --- | --- | --- |
| `node1`, `node2` | a Galera node and a Seafile node (`[database]`: the local MariaDB), shared data | `.1`, `.2` |
| `node3` | a Galera node only | `.3` |
| `backup` | a plain MariaDB, Seafile's conf and data | `.4` |

Every Galera node logs every write set (`log_slave_updates`) under the same GTIDs (`wsrep_gtid_mode`, the same
`wsrep_gtid_domain_id` and `server_id` on each node, a `gtid_domain_id` of its own for local writes), so a
replica can move from one node to another by GTID. `node1` is the backup's replication source at first.

The nodes are started by hand, as the rest of the lab: `node1` bootstraps the cluster once, the other two start
from a copy of its datadir taken after a clean shutdown (the same cluster state, so they join without a state
transfer); later restarts join the running cluster (an incremental state transfer from the gcache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from seafbackup_lab.lab import (
    DATABASES,
    LAB_SYNC_TOKEN,
    Lab,
    LabHost,
    _set_backup_section,
    inventory_head,
)
from seafbackup_lab.mariadb import LabError, log_tails

CLUSTER_ADDR_PREFIX_VARIABLE = "SEAFBACKUP_CLUSTER_ADDR_PREFIX"
DEFAULT_CLUSTER_PREFIX = "127.0.8."
GALERA_NODES = ("node1", "node2", "node3")
SEAFILE_NODES = ("node1", "node2")
HOST_SUFFIXES = {"node1": 1, "node2": 2, "node3": 3, "backup": 4}
GALERA_SERVER_ID = 1
"""The same on every Galera node: with wsrep_gtid_mode the GTIDs of write sets then read alike on each node."""
WSREP_GTID_DOMAIN_ID = 1
LOCAL_GTID_DOMAIN_IDS = {"node1": 11, "node2": 12, "node3": 13}
"""Each node's own domain for writes that are not replicated by Galera (never the wsrep domain)."""
BACKUP_SERVER_ID = 2
GALERA_DROP_IN = "50-lab-galera.cnf"
CLUSTER_NAME = "seafbackup-lab"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
SYNC_TIMEOUT = 120.0


def cluster_addresses(prefix: str | None = None) -> dict[str, str]:
    """The cluster lab's addresses: `<prefix><n>` per host (n = 1 to 4), the prefix from
    SEAFBACKUP_CLUSTER_ADDR_PREFIX (default `127.0.8.`; the tests use `127.0.0.3`, i.e. .31 to .34)."""
    prefix = prefix or os.environ.get(CLUSTER_ADDR_PREFIX_VARIABLE) or DEFAULT_CLUSTER_PREFIX
    return {name: f"{prefix}{suffix}" for name, suffix in HOST_SUFFIXES.items()}


class GaleraNode:
    """One Galera node's MariaDB: joins the running cluster when started (see `ClusterLab.up` for the
    bootstrap)."""

    def __init__(self, host: LabHost, lab: ClusterLab) -> None:
        self.host = host
        self.lab = lab
        self.server = host.mariadb

    def pid(self) -> int | None:
        return self.server.pid()

    def start(self, *, bootstrap: bool = False) -> None:
        if self.server.is_running():
            return
        if bootstrap:
            _set_safe_to_bootstrap(self.server.paths.datadir)
        self.server.start(extra_args=["--wsrep-new-cluster"] if bootstrap else [])
        wait_synced(self.server)

    def stop(self) -> None:
        self.server.stop()

    def kill(self) -> None:
        self.server.kill()


def wait_synced(server, timeout: float = SYNC_TIMEOUT) -> None:
    """Until the node says Synced (a joiner answers connections before it has the cluster's state)."""
    import pymysql

    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        try:
            conn = server.root_connection()
            try:
                with conn.cursor() as cur:
                    cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_local_state_comment'")
                    row = cur.fetchone()
                    state = row[1] if row else None
                    cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
                    ready = cur.fetchone()
            finally:
                conn.close()
        except pymysql.MySQLError as exc:
            state = str(exc)
        else:
            if state == "Synced" and ready and ready[1] == "ON":
                return
        if not server.is_running():
            break
        time.sleep(0.1)
    raise LabError(f"Galera node at {server.address} is not Synced (last: {state})\n"
                   + log_tails([server.paths.error_log]))


def _set_safe_to_bootstrap(datadir: Path) -> None:
    grastate = datadir / "grastate.dat"
    if grastate.exists():
        text = grastate.read_text().replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1")
        grastate.write_text(text)


class ClusterLab(Lab):
    """The cluster lab (`seafbackup-lab --lab-dir DIR up --cluster`)."""

    kind = "cluster"

    def __init__(self, lab_dir: Path, addresses: dict[str, str] | None = None) -> None:
        super().__init__(lab_dir, addresses or cluster_addresses())

    def _save_state(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"kind": self.kind, "addresses": self.addresses,
                                                "db_password": self.db_password}))
        self._state_file.chmod(0o600)

    @property
    def galera_nodes(self) -> list[LabHost]:
        return [self.hosts[name] for name in GALERA_NODES]

    @property
    def seafile_nodes(self) -> list[LabHost]:
        return [self.hosts[name] for name in SEAFILE_NODES]

    @property
    def primary(self) -> LabHost:
        """The first Seafile node (what single-host code calls the primary)."""
        return self.hosts[SEAFILE_NODES[0]]

    @property
    def shared_data_dir(self) -> Path:
        """The one `seafile-data` both Seafile nodes mount."""
        return self.dir / "shared/seafile-data"

    def galera(self, name: str) -> GaleraNode:
        return GaleraNode(self.hosts[name], self)

    def up(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self._save_state()
        for host in self.hosts.values():
            host.root.mkdir(exist_ok=True)
            host.root.chmod(0o755)
        first = self.galera_nodes[0]
        fresh = not first.mariadb.paths.datadir.is_dir()
        for host in self.galera_nodes:
            host.mariadb.initialize(install=host.name == first.name)
            self._write_galera_drop_in(host)
        if fresh:
            # Bootstrap on the first node, provision, stop cleanly; the others start from copies of that state.
            self.galera(first.name).start(bootstrap=True)
            self._provision_databases(first)
            self.galera(first.name).stop()
            for host in self.galera_nodes[1:]:
                _copy_datadir(first.mariadb.paths.datadir, host.mariadb.paths.datadir)
        if not any(self.galera(name).pid() for name in GALERA_NODES):
            self.galera(first.name).start(bootstrap=True)
        for name in GALERA_NODES:
            self.galera(name).start()
        backup = self.backup
        backup.mariadb.initialize()
        (backup.mariadb.paths.conf_d / "50-lab-backup.cnf").write_text(
            f"[mysqld]\nserver-id = {BACKUP_SERVER_ID}\n")
        backup.mariadb.start()
        self._provision_databases(backup)
        self.shared_data_dir.mkdir(parents=True, exist_ok=True)
        for host in self.seafile_nodes:
            data = host.seafile_data_dir
            data.parent.mkdir(parents=True, exist_ok=True)
            if not data.is_symlink():
                shutil.rmtree(data, ignore_errors=True)
                data.symlink_to(self.shared_data_dir)
        for host in [*self.seafile_nodes, backup]:
            self._write_seafile_conf(host)
        for host in self.hosts.values():
            (host.root / "var/tmp").mkdir(parents=True, exist_ok=True)
        self.write_inventory(self.dir / "inventory.yml")

    def _write_galera_drop_in(self, host: LabHost) -> None:
        address = host.address
        peers = ",".join(f"{self.hosts[n].address}:4567" for n in GALERA_NODES)
        options = ";".join([
            f"gmcast.listen_addr=tcp://{address}:4567", f"ist.recv_addr={address}:4568", "gcache.size=32M",
            "evs.keepalive_period=PT0.5S", "evs.suspect_timeout=PT3S", "evs.inactive_timeout=PT5S",
            "evs.install_timeout=PT5S", "pc.wait_prim_timeout=PT10S",
        ])
        (host.mariadb.paths.conf_d / GALERA_DROP_IN).write_text(
            "# seafbackup lab: a MariaDB Galera node; binlog and GTIDs as a replication source needs them.\n"
            "[mysqld]\n"
            f"server-id = {GALERA_SERVER_ID}\n"
            "log-bin = mysql-bin\n"
            "binlog_format = ROW\n"
            "log_slave_updates = ON\n"
            f"gtid_domain_id = {LOCAL_GTID_DOMAIN_IDS[host.name]}\n"
            "default_storage_engine = InnoDB\n"
            "innodb_autoinc_lock_mode = 2\n"
            "wsrep_on = ON\n"
            f"wsrep_provider = {GALERA_PROVIDER}\n"
            f"wsrep_cluster_name = {CLUSTER_NAME}\n"
            f"wsrep_cluster_address = gcomm://{peers}\n"
            f"wsrep_node_name = {host.name}\n"
            f"wsrep_node_address = {address}\n"
            f"wsrep_node_incoming_address = {address}:3306\n"
            f'wsrep_provider_options = "{options}"\n'
            "wsrep_sst_method = rsync\n"
            f"wsrep_sst_receive_address = {address}:4444\n"
            "wsrep_gtid_mode = ON\n"
            f"wsrep_gtid_domain_id = {WSREP_GTID_DOMAIN_ID}\n"
            "wsrep_slave_threads = 1\n"
        )

    def _is_binlog_source(self, host: LabHost) -> bool:
        return host.name in GALERA_NODES

    def down(self) -> None:
        for host in [*self.seafile_nodes, self.backup]:
            for service in host.unit_services:
                service.stop()
        self.backup.mariadb.stop()
        # The last node stopped is the one to bootstrap from next time (Galera marks it safe_to_bootstrap).
        for name in reversed(GALERA_NODES):
            self.galera(name).stop()

    def status(self) -> dict[str, dict[str, object]]:
        report: dict[str, dict[str, object]] = {}
        for name, host in self.hosts.items():
            report[name] = {
                "address": host.address,
                "mariadb_pid": host.mariadb.pid(),
                "agent_pid": host.unit_services[0].pid(),
                "root": str(host.root),
                "seafile_conf": str(host.seafile_conf_dir / "seafile.conf") if name != "node3" else "",
            }
        return report

    def write_inventory(self, path: Path) -> None:
        path.write_text(render_cluster_inventory(self))


def open_lab(lab_dir: Path, *, cluster: bool = False) -> Lab:
    """The lab in `lab_dir`: a cluster lab if its state says so (or a new one when `cluster`)."""
    try:
        kind = json.loads((Path(lab_dir) / "lab.json").read_text()).get("kind")
    except FileNotFoundError:
        kind = ClusterLab.kind if cluster else None
    return ClusterLab(lab_dir) if kind == ClusterLab.kind else Lab(lab_dir)


def _copy_datadir(source: Path, target: Path) -> None:
    """A cleanly stopped node's datadir as another node's starting state (owner and modes kept); not its
    gvwstate.dat (the node's own identity in the cluster view)."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    (target / "gvwstate.dat").unlink(missing_ok=True)
    grastate = target / "grastate.dat"
    if grastate.exists():
        grastate.write_text(grastate.read_text().replace("safe_to_bootstrap: 1", "safe_to_bootstrap: 0"))


def row_checksums(server, databases=DATABASES) -> dict[str, int | None]:
    """CHECKSUM TABLE of every table of Seafile's databases on one server: `db.table` -> checksum."""
    conn = server.root_connection()
    try:
        with conn.cursor() as cur:
            sums = {}
            for db in databases:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (db,))
                for (table,) in cur.fetchall():
                    cur.execute(f"CHECKSUM TABLE `{db}`.`{table}`")
                    sums[f"{db}.{table}"] = cur.fetchone()[1]
            return sums
    finally:
        conn.close()


def pair_cluster_agents(lab: ClusterLab, *, state_dir: Path, poll_hours: float = 1.0, workers: int = 2,
                        token: str = LAB_SYNC_TOKEN) -> None:
    """The `[backup]` sections setup_backup.yml writes for a cluster, for tests that run the agents by hand:
    every Seafile node's agent on its address :8090 notifies the backup; the backup's agent (:8091) lists every
    node in `primary_url`."""
    backup = lab.backup.address
    for host in lab.seafile_nodes:
        _set_backup_section(host.seafile_conf_dir,
                            f"backup_url = http://{backup}:8091\nsync_token = {token}\n"
                            f"listen = {host.address}:8090\nstate_dir = {state_dir}-{host.name}\n")
    urls = ", ".join(f"http://{host.address}:8090" for host in lab.seafile_nodes)
    _set_backup_section(lab.backup.seafile_conf_dir,
                        f"primary_url = {urls}\nsync_token = {token}\nsync_poll_interval = {poll_hours}\n"
                        f"listen = {backup}:8091\nstate_dir = {state_dir}\nworkers = {workers}\n")


def render_cluster_inventory(lab: ClusterLab) -> str:
    """The Ansible inventory of the cluster lab: `seafile_primary` (the Seafile nodes), `seafile_primary_db` (every
    Galera node; the replication source is `seafbackup_replication_source`, by default the first) and
    `seafile_backup`."""
    lines = [
        "# The cluster lab. Generated by seafbackup_lab.cluster.render_cluster_inventory.",
        *inventory_head(str(lab.dir), local=True),
        "    seafile_primary:",
        "      hosts:",
        *(f"        {name}: {{}}" for name in SEAFILE_NODES),
        "    seafile_primary_db:",
        "      hosts:",
    ]
    for name in GALERA_NODES:
        lines += [f"        {name}:", *_host_vars(lab, name, GALERA_SERVER_ID, seafile=name in SEAFILE_NODES)]
    lines += ["    seafile_backup:", "      hosts:", "        backup:",
              *_host_vars(lab, "backup", BACKUP_SERVER_ID, seafile=True)]
    return "\n".join(lines) + "\n"


def _host_vars(lab: ClusterLab, name: str, server_id: int, *, seafile: bool) -> list[str]:
    host = lab.hosts[name]
    lines = [
        f"          seafbackup_host_root: \"{{{{ seafbackup_lab_dir }}}}/{name}\"",
        f"          seafbackup_mysql_host: {host.address}",
        '          seafbackup_mysql_socket: "{{ seafbackup_host_root }}/run/mysqld/mysqld.sock"',
        '          seafbackup_mysql_conf_d: "{{ seafbackup_host_root }}/etc/mysql/conf.d"',
        f"          seafbackup_mysql_server_id: {server_id}",
        f'          seafbackup_service_command: "{{{{ seafbackup_lab_cmd }}}} service {name} {{name}} {{action}}"',
        '          seafbackup_tmp_dir: "{{ seafbackup_host_root }}/var/tmp"',
    ]
    if seafile:
        lines += [
            '          seafbackup_seafile_conf_dir: "{{ seafbackup_host_root }}/opt/seafile/conf"',
            '          seafbackup_seafile_data_dir: "{{ seafbackup_host_root }}/opt/seafile/seafile-data"',
            '          seafbackup_agent_seafile_data_dir: "{{ seafbackup_seafile_data_dir }}"',
            '          seafbackup_agent_venv: "{{ seafbackup_host_root }}/opt/seafbackup/venv"',
            '          seafbackup_agent_state_dir: "{{ seafbackup_host_root }}/var/lib/seafbackup"',
            '          seafbackup_failover_marker_file: "{{ seafbackup_agent_state_dir }}/last-failover.json"',
            '          seafbackup_agent_unit_dir: "{{ seafbackup_host_root }}/etc/systemd/system"',
            '          seafbackup_agent_bin_dir: "{{ seafbackup_host_root }}/usr/local/bin"',
            f"          seafbackup_agent_listen_address: {host.address}",
        ]
    return lines

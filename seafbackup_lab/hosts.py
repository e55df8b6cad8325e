"""The "hosts" lab: two Debian 12 containers that boot systemd, reached over real SSH.

Where the ordinary lab (`seafbackup_lab.lab`) stands two hosts up as directories and hand-started servers, this
one boots a real Debian host per name under `systemd-nspawn --boot` with its own root filesystem (never systemd
on the machine itself), Debian's mariadb-server and openssh-server, and a Seafile-like layout: `/opt/seafile/conf`
with seafile.conf/ccnet.conf/seahub_settings.py, `seafile-data`, a `seafile` account, Seafile's three databases
with its schema, and stand-in `seafile`/`seahub` units. The playbooks reach the containers with ansible-playbook
over SSH and use the production defaults (systemctl, /etc/mysql, Debian's socket).

A root image is built once with debootstrap (the only step that needs the network: the Debian mirror) and kept in
a cache directory under the hash of its recipe; a changed recipe builds a new one. Each container runs on an
overlay of that image (a copy where overlayfs is missing), so starting a fresh pair takes seconds.
Containers join the machine through a bridge (`--network-bridge`), on addresses of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from seafbackup_lab.cached_builds import cached_build, run_logged
from seafbackup_lab.lab import DATABASES, LAB_REPLICATION_PASSWORD, REPO_ROOT, SEAFILE_DB_USER, SERVER_IDS
from seafbackup_lab.mariadb import LabError, _alive

SUITE = "bookworm"
MIRROR = os.environ.get("SEAFBACKUP_HOSTS_MIRROR", "http://deb.debian.org/debian")
# What a Seafile host has that seafbackup relies on: systemd, MariaDB, sshd, Python for Ansible and for the agent's
# venv, PyMySQL for the community.mysql modules (the production inventory names it as a requirement).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "mariadb-server", "mariadb-client", "openssh-server",
    "python3", "python3-venv", "python3-pymysql", "python3-packaging", "sudo", "procps", "less",
)
# The Seafile database account's password in the image: a lab secret, committed on purpose.
SEAFILE_DB_PASSWORD = "lab-seafile-db-secret"
DEFAULT_CACHE = Path(os.environ.get("SEAFBACKUP_HOSTS_CACHE", "/var/cache/seafbackup-hosts"))
DEFAULT_BRIDGE = os.environ.get("SEAFBACKUP_HOSTS_BRIDGE", "sbhosts-br0")
# First three numbers of the bridge's /24: the machine is .1, the hosts .11 and .12.
DEFAULT_NET = os.environ.get("SEAFBACKUP_HOSTS_NET", "10.241.0")
HOST_NUMBERS = {"primary": 11, "backup": 12}
BOOT_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0

# Run inside the image (systemd-nspawn without --boot) once debootstrap has installed the packages.
SETUP_SCRIPT = r"""set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get clean
rm -rf /var/lib/apt/lists/*
# Seafile's account and layout, as Seafile's installer leaves them.
useradd --system --home-dir /opt/seafile --shell /usr/sbin/nologin --user-group seafile
install -d -o seafile -g seafile -m 0755 /opt/seafile /opt/seafile/seafile-data
install -d -o seafile -g seafile -m 0700 /opt/seafile/conf
# Stand-ins for Seafile's two services: systemctl starts and stops them like the real ones.
for unit in seafile seahub; do
    cat > /etc/systemd/system/$unit.service <<EOF
[Unit]
Description=Seafile lab stand-in ($unit)
After=network.target mariadb.service

[Service]
User=seafile
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
EOF
    systemctl enable $unit.service
done
# The backup replicates from the primary's server over the network.
cat > /etc/mysql/mariadb.conf.d/55-seafile-network.cnf <<EOF
[mysqld]
bind-address = 0.0.0.0
skip-name-resolve
innodb_buffer_pool_size = 64M
performance_schema = OFF
EOF
# Seafile's databases, schema and account, created by Seafile's installer on a real host.
install -d -o mysql -g mysql /run/mysqld
mariadbd --user=mysql --skip-networking &
for i in $(seq 1 100); do [ -S /run/mysqld/mysqld.sock ] && break; sleep 0.1; done
mariadb < /opt/seafile-schema.sql
mariadb-admin shutdown
wait
# Networking by systemd-networkd (each container gets its address in /etc/systemd/network/).
systemctl enable systemd-networkd.service
# sshd: root logs in with the lab's key; each container gets host keys of its own.
rm -f /etc/ssh/ssh_host_*
printf 'PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n' > /etc/ssh/sshd_config.d/lab.conf
# A quick boot: nothing that waits for a network or a clock.
systemctl mask systemd-networkd-wait-online.service systemd-timesyncd.service e2scrub_reap.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer 2>/dev/null || true
: > /etc/machine-id
"""


def _schema_sql() -> str:
    lines = []
    for db in DATABASES:
        text = resources.files("seafbackup_lab").joinpath(f"schema/{db}.sql").read_text()
        lines += [f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4;", f"USE `{db}`;", text]
    lines.append(f"CREATE USER '{SEAFILE_DB_USER}'@'%' IDENTIFIED BY '{SEAFILE_DB_PASSWORD}';")
    lines += [f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{SEAFILE_DB_USER}'@'%';" for db in DATABASES]
    return "\n".join(lines) + "\n"


def _seafile_conf_files() -> dict[str, str]:
    """Seafile's configuration as its installer writes it for a local MariaDB."""
    db = f"host = 127.0.0.1\nport = 3306\nuser = {SEAFILE_DB_USER}\npassword = {SEAFILE_DB_PASSWORD}\n"
    return {
        "seafile.conf": "[fileserver]\nport = 8082\n\n[database]\ntype = mysql\n" + db
                        + "db_name = seafile_db\nconnection_charset = utf8mb4\n",
        "ccnet.conf": "[General]\nSERVICE_URL = http://127.0.0.1\n\n[Database]\nENGINE = mysql\nHOST = 127.0.0.1\n"
                      f"PORT = 3306\nUSER = {SEAFILE_DB_USER}\nPASSWD = {SEAFILE_DB_PASSWORD}\nDB = ccnet_db\n"
                      "CONNECTION_CHARSET = utf8mb4\n",
        "seahub_settings.py": "DATABASES = {\n    'default': {\n        'ENGINE': 'django.db.backends.mysql',\n"
                              f"        'NAME': 'seahub_db', 'USER': '{SEAFILE_DB_USER}', "
                              f"'PASSWORD': '{SEAFILE_DB_PASSWORD}',\n"
                              "        'HOST': '127.0.0.1', 'PORT': '3306',\n    }\n}\n",
    }


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def base_hash() -> str:
    """What debootstrap installs (the slow step that downloads)."""
    return _hash(SUITE, " ".join(PACKAGES))


def recipe_hash() -> str:
    """Everything the image is made of: a change to any of it builds a new image (on the cached base)."""
    return _hash(base_hash(), SETUP_SCRIPT, _schema_sql(), json.dumps(_seafile_conf_files()))


def build_image(cache: Path = DEFAULT_CACHE) -> Path:
    """The cached root image for the current recipe, built first if missing. Returns its root directory.

    Two cached steps: `base-<hash>` is what debootstrap downloaded and installed; `image-<hash>` is a copy of it
    with Seafile's layout and databases (a changed layout does not download again)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits for the first one and then uses its image
        base = cache / f"base-{base_hash()}"
        with cached_build(cache, base.name) as (work, log):
            if work is not None:
                run_logged(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                            str(work / "root"), MIRROR], log=log)
        with cached_build(cache, f"image-{recipe_hash()}") as (work, log):
            if work is not None:
                root = work / "root"
                run_logged(["cp", "-a", "--reflink=auto", str(base / "root"), str(root)], log=log)
                (root / "opt/seafile-schema.sql").write_text(_schema_sql())
                conf = root / "opt/seafile-conf.tmp"
                conf.mkdir()
                for name, text in _seafile_conf_files().items():
                    (conf / name).write_text(text)
                script = SETUP_SCRIPT + (
                    "install -o seafile -g seafile -m 0600 /opt/seafile-conf.tmp/* /opt/seafile/conf/\n"
                    "rm -r /opt/seafile-conf.tmp /opt/seafile-schema.sql\n"
                )
                # Not --boot: the script runs as the container's only process; anything it starts dies with it.
                run_logged(["systemd-nspawn", "-q", "-D", str(root), "--register=no", "--keep-unit",
                            "--private-network", "--as-pid2", "/bin/sh", "-c", script], log=log, timeout=600)
    return cache / f"image-{recipe_hash()}" / "root"


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    address: str
    dir: Path

    @property
    def machine(self) -> str:
        return f"sbh-{self.name}"  # short: the machine's veth is "vb-" + this and has at most 15 characters

    @property
    def root(self) -> Path:
        """The container's filesystem as the machine sees it (while the lab is up)."""
        return self.dir / "root"

    @property
    def seafile_conf_dir(self) -> Path:
        return self.root / "opt/seafile/conf"

    @property
    def seafile_data_dir(self) -> Path:
        return self.root / "opt/seafile/seafile-data"

    @property
    def pid_file(self) -> Path:
        return self.dir / "nspawn.pid"

    @property
    def log(self) -> Path:
        return self.dir / "console.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None


class HostsLab:
    def __init__(self, lab_dir: Path, *, cache: Path = DEFAULT_CACHE, bridge: str = DEFAULT_BRIDGE,
                 net: str = DEFAULT_NET) -> None:
        self.dir = Path(lab_dir)
        self.cache = cache
        self.bridge = bridge
        self.net = net
        self.hosts = {name: Container(name, f"{net}.{n}", self.dir / name) for name, n in HOST_NUMBERS.items()}

    @property
    def primary(self) -> Container:
        return self.hosts["primary"]

    @property
    def backup(self) -> Container:
        return self.hosts["backup"]

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.dir / "inventory.yml"

    # --- bring-up --------------------------------------------------------------------------------------------

    def up(self) -> dict[str, float]:
        """Build the image if needed, prepare what is missing and boot both containers. Returns timings."""
        timings: dict[str, float] = {}
        start = time.monotonic()
        image = build_image(self.cache)
        timings["image"] = time.monotonic() - start
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "seafbackup-hosts-lab",
                            "-f", str(self.key)], check=True)
        self._bridge()
        for host in self.hosts.values():
            self._prepare(host, image)
            self._boot(host)
        for host in self.hosts.values():
            self.wait_booted(host)
        timings["boot"] = time.monotonic() - start - timings["image"]
        self.inventory.write_text(render_hosts_inventory(self))
        return timings

    def _bridge(self) -> None:
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode != 0:
            run_logged(["ip", "link", "add", self.bridge, "type", "bridge"])
        if f" {self.net}.1/24 " not in subprocess.run(["ip", "-o", "addr", "show", "dev", self.bridge],
                                                       capture_output=True, text=True).stdout:
            run_logged(["ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge])
        run_logged(["ip", "link", "set", self.bridge, "up"])

    def _prepare(self, host: Container, image: Path) -> None:
        """The container's root: an overlay of the image (a copy where overlayfs is missing), then what is its own:
        address, host keys, the lab's key for root."""
        host.dir.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(host.root) and not (host.dir / "copy").exists():
            upper, work = host.dir / "upper", host.dir / "work"
            for d in (upper, work, host.root):
                d.mkdir(exist_ok=True)
            mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                                      f"lowerdir={image},upperdir={upper},workdir={work}", str(host.root)],
                                     capture_output=True).returncode == 0
            if not mounted:
                host.root.rmdir()
                run_logged(["cp", "-a", "--reflink=auto", str(image), str(host.root)])
                (host.dir / "copy").write_text("")
        root = host.root
        network = root / "etc/systemd/network/10-lab.network"
        network.write_text(f"[Match]\nName=host0\n\n[Network]\nAddress={host.address}/24\nLinkLocalAddressing=no\n")
        (root / "etc/hostname").write_text(f"{host.name}\n")
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}",
                            "-f", str(root / "etc/ssh/ssh_host_ed25519_key")], check=True)
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())

    def _boot(self, host: Container) -> None:
        if host.pid():
            return
        with host.log.open("a") as log:
            proc = subprocess.Popen(
                ["systemd-nspawn", "-q", "-D", str(host.root), "--boot", "--register=no", "--keep-unit",
                 f"--machine={host.machine}", f"--network-bridge={self.bridge}", "--console=passive"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        host.pid_file.write_text(f"{proc.pid}\n")

    def wait_booted(self, host: Container, timeout: float = BOOT_TIMEOUT) -> str:
        """Wait until the container's systemd has finished booting; returns `systemctl is-system-running`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.pid() is None:
                raise LabError(f"container {host.name} stopped while booting; {host.log}")
            result = self.ssh(host.name, "systemctl is-system-running --wait", timeout=timeout, check=False)
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise LabError(f"container {host.name} did not boot within {timeout:.0f} s; {host.log}")

    # --- use -------------------------------------------------------------------------------------------------

    def ssh_command(self, name: str) -> list[str]:
        return ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=2",
                f"root@{self.hosts[name].address}"]

    def ssh(self, name: str, command: str, *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on a host over SSH, as an admin would."""
        result = subprocess.run([*self.ssh_command(name), command], capture_output=True, text=True,
                                timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise LabError(f"{name}: `{command}` failed (exit {result.returncode}): {result.stderr}{result.stdout}")
        return result

    def sql(self, name: str, statement: str) -> list[dict[str, str]]:
        """A statement as root over the host's socket (the `mariadb` client on the host); rows as dicts."""
        out = self.ssh(name, f"mariadb --batch -e {_quote(statement)}").stdout.splitlines()
        if not out:
            return []
        names = out[0].split("\t")
        return [dict(zip(names, line.split("\t"), strict=True)) for line in out[1:]]

    # --- stop ------------------------------------------------------------------------------------------------

    def stop(self, name: str) -> None:
        """Shut the container down as a power button would: SIGTERM to nspawn makes its systemd power off."""
        host = self.hosts[name]
        pid = host.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        host.pid_file.unlink(missing_ok=True)

    def restart(self, name: str) -> float:
        """A reboot of one host (the container is powered off and booted again); returns its seconds."""
        start = time.monotonic()
        self.stop(name)
        self._boot(self.hosts[name])
        self.wait_booted(self.hosts[name])
        return time.monotonic() - start

    def start(self, name: str) -> None:
        self._boot(self.hosts[name])
        self.wait_booted(self.hosts[name])

    def down(self, *, remove: bool = False) -> None:
        """Power both containers off; `remove` also deletes their filesystems (the image stays cached)."""
        for name in self.hosts:
            self.stop(name)
        for host in self.hosts.values():
            if os.path.ismount(host.root):
                subprocess.run(["umount", str(host.root)], check=False)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def status(self) -> dict[str, dict[str, object]]:
        return {name: {"address": h.address, "nspawn_pid": h.pid(), "root": str(h.root)}
                for name, h in self.hosts.items()}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@contextlib.contextmanager
def seafile_writer_conf(lab: HostsLab, name: str) -> Iterator[Path]:
    """A conf dir on the machine for `seafbackup_lab.writer.SeafileServer` writing into a container: the host's
    seafile.conf with its database reached over the bridge instead of 127.0.0.1."""
    host = lab.hosts[name]
    with tempfile.TemporaryDirectory(prefix=f"seafile-conf-{name}-") as tmp:
        text = (host.seafile_conf_dir / "seafile.conf").read_text().replace("host = 127.0.0.1",
                                                                             f"host = {host.address}")
        (Path(tmp) / "seafile.conf").write_text(text)
        yield Path(tmp)


def render_hosts_inventory(lab: HostsLab) -> str:
    """The hosts lab's inventory: what a user writes for two real hosts (production defaults for everything else)."""
    lines = [
        "# The hosts lab's two containers. Generated by seafbackup_lab.hosts.render_hosts_inventory.",
        "all:",
        "  vars:",
        "    ansible_user: root",
        "    ansible_python_interpreter: /usr/bin/python3",
        f"    ansible_ssh_private_key_file: {lab.key}",
        "    ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        f"    seafbackup_replication_password: {LAB_REPLICATION_PASSWORD}",
        "    seafbackup_replication_seed_connect_retry: 1",
        "    # The containers have no internet: the agent is installed from a wheelhouse the control node builds.",
        "    seafbackup_agent_offline: true",
        "  children:",
    ]
    for group, name in (("seafile_primary", "primary"), ("seafile_backup", "backup")):
        host = lab.hosts[name]
        lines += [
            f"    {group}:",
            "      hosts:",
            f"        {name}:",
            f"          ansible_host: {host.address}",
            f"          seafbackup_mysql_host: {host.address}",
            f"          seafbackup_mysql_server_id: {SERVER_IDS[name]}",
        ]
    return "\n".join(lines) + "\n"


def default_hosts_lab_dir() -> Path:
    return Path(os.environ.get("SEAFBACKUP_HOSTS_LAB_DIR", REPO_ROOT / ".lab-hosts"))

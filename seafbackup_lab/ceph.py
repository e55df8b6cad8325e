"""A single-node Ceph cluster by hand (no systemd, no cephadm): one mon, one mgr, one bluestore OSD on a
sparse file, and radosgw (the S3 gateway), all on one loopback address, in one directory.

Debian 12's Ceph 16.2 (`ceph-mon ceph-mgr ceph-osd radosgw ceph-common`, see scripts/system-packages.sh).
The daemons run in the foreground (`-f`) as children of this process, so they are stopped by their PIDs
and never become orphans of PID 1. Ports on the address: mon 3300/6789, OSD and mgr 6800+, radosgw 7480:
one cluster per address.

    cluster = CephCluster(Path("/var/tmp/ceph"), "127.0.6.1")
    cluster.up()            # about 15-25 s on 2 cores
    cluster.s3_endpoint     # http://127.0.6.1:7480, with cluster.access_key / cluster.secret_key
    cluster.create_pool("seafile-blocks")
    cluster.down()
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seafbackup_agent.objectstore.librados import load_rados
from seafbackup_lab.mariadb import LabError, log_tails

RGW_PORT = 7480
START_TIMEOUT = 300.0
RGW_POOLS = (".rgw.root", "default.rgw.log", "default.rgw.control", "default.rgw.meta",
             "default.rgw.buckets.index", "default.rgw.buckets.data", "default.rgw.buckets.non-ec")
"""Made before radosgw starts (it would make them one by one, with a stall each): start-up 17 -> 11.5 s."""


def render_ceph_conf(root: Path, address: str, fsid: str) -> str:
    return f"""[global]
fsid = {fsid}
mon_host = v2:{address}:3300,v1:{address}:6789
public_addr = {address}
mon_initial_members = a
run_dir = {root}/run
admin_socket = {root}/run/$cluster-$name.asok
pid_file = {root}/run/$cluster-$name.pid
log_file = {root}/log/$cluster-$name.log
log_to_stderr = false
err_to_stderr = true
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
osd_crush_chooseleaf_type = 0
auth_allow_insecure_global_id_reclaim = false
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
ms_bind_ipv6 = false

[mon]
mon_data = {root}/mon/$cluster-$id

[mgr]
mgr_data = {root}/mgr/$cluster-$id
keyring = {root}/mgr/$cluster-$id/keyring
mgr_disabled_modules = dashboard prometheus restful

[osd]
osd_data = {root}/osd/$cluster-$id
keyring = {root}/osd/$cluster-$id/keyring
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = 8589934592
osd_memory_target = 1073741824
bluestore_cache_autotune = true

[client]
keyring = {root}/keyring

[client.rgw.lab]
rgw_frontends = beast endpoint={address}:{RGW_PORT} tcp_nodelay=1
rgw_data = {root}/rgw
keyring = {root}/rgw/keyring
rgw_enable_usage_log = false
"""


class CephCluster:
    """One lab cluster in `root` on `address` (see the module's doc)."""

    def __init__(self, root: Path, address: str) -> None:
        self.root = Path(root)
        self.address = address
        self.conf = self.root / "ceph.conf"
        self.admin_keyring = self.root / "keyring"
        self.access_key = ""
        self.secret_key = ""
        self._procs: dict[str, subprocess.Popen] = {}
        self._cluster: Any = None

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.address}:{RGW_PORT}"

    @property
    def s3_host(self) -> str:
        """`host` as Seafile's seafile.conf gives it (`address:port`)."""
        return f"{self.address}:{RGW_PORT}"

    # --- bring-up --------------------------------------------------------------------------------

    def up(self) -> None:
        started = time.monotonic()
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self.started_in = time.monotonic() - started

    def _up(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for sub in ("run", "log", "mon", "mgr/ceph-x", "osd/ceph-0", "rgw"):
            (self.root / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(render_ceph_conf(self.root, self.address, fsid))
        mon_keyring = self.root / "mon.keyring"
        self._run("ceph-authtool", "--create-keyring", mon_keyring, "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        self._run("ceph-authtool", "--create-keyring", self.admin_keyring, "--gen-key", "-n", "client.admin",
                  "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *",
                  "--cap", "mds", "allow *")
        self._run("ceph-authtool", mon_keyring, "--import-keyring", self.admin_keyring)
        monmap = self.root / "monmap"
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                  f"[v2:{self.address}:3300,v1:{self.address}:6789]", monmap)
        self._run("ceph-mon", "-c", self.conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", mon_keyring)
        self._start("mon", "ceph-mon", "-i", "a")
        cluster = self._connect()

        # Keys of the other daemons, made by the mon (as `ceph auth get-or-create` does).
        osd_uuid = str(uuid.uuid4())
        osd_secret = self._capture("ceph-authtool", "--gen-print-key").strip()
        self._mon(cluster, {"prefix": "auth get-or-create", "entity": "mgr.x",
                            "caps": ["mon", "allow profile mgr", "osd", "allow *", "mds", "allow *"]},
                  out=self.root / "mgr/ceph-x/keyring")
        self._mon(cluster, {"prefix": "auth get-or-create", "entity": "client.rgw.lab",
                            "caps": ["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"]},
                  out=self.root / "rgw/keyring")
        self._mon(cluster, {"prefix": "osd new", "uuid": osd_uuid, "id": 0},
                  inbuf=json.dumps({"cephx_secret": osd_secret}).encode())
        (self.root / "osd/ceph-0/keyring").write_text(f"[osd.0]\n\tkey = {osd_secret}\n")
        self._start("mgr", "ceph-mgr", "-i", "x")
        self._run("ceph-osd", "-c", self.conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._start("osd", "ceph-osd", "-i", "0")
        for pool in RGW_POOLS:
            self._create_pool(cluster, pool, application="rgw")
        self._wait(lambda: self._osd_up(cluster), "the OSD to come up")
        self.access_key = secrets.token_hex(10).upper()
        self.secret_key = secrets.token_hex(20)
        self._run("radosgw-admin", "-c", self.conf, "-n", "client.admin", "user", "create", "--uid", "lab",
                  "--display-name", "seafbackup lab", "--access-key", self.access_key, "--secret", self.secret_key)
        self._start("rgw", "radosgw", "-n", "client.rgw.lab")
        self._wait(self._rgw_answers, "radosgw to answer")

    def down(self) -> None:
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.shutdown()
            self._cluster = None
        for name in ("rgw", "osd", "mgr", "mon"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self) -> None:
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> CephCluster:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # --- what tests use --------------------------------------------------------------------------

    def rados(self) -> Any:
        """The lab's own connected `rados.Rados` (client.admin)."""
        return self._connect()

    def create_pool(self, name: str, *, pg_num: int = 1) -> None:
        """A replicated pool of size 1 (one PG: test pools are small and many)."""
        cluster = self._connect()
        self._create_pool(cluster, name, pg_num=pg_num)
        self._wait(lambda: cluster.pool_exists(name), f"pool {name}")

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self._procs.items() if proc.poll() is None}

    def client_conf(self, directory: Path, client: str = "admin") -> Path:
        """A ceph.conf and keyring for a client host, as an admin copies them from /etc/ceph."""
        directory.mkdir(parents=True, exist_ok=True)
        keyring = directory / f"ceph.client.{client}.keyring"
        shutil.copyfile(self.admin_keyring, keyring)
        conf = directory / "ceph.conf"
        conf.write_text(f"[global]\nmon_host = v2:{self.address}:3300,v1:{self.address}:6789\n"
                        f"keyring = {keyring}\nlog_file = /dev/null\nadmin_socket =\n")
        return conf

    # --- pieces ----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._cluster is None:
            rados = load_rados()
            cluster = rados.Rados(conffile=str(self.conf), rados_id="admin")
            cluster.conf_set("log_file", "/dev/null")
            cluster.conf_set("admin_socket", "")
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                self._check_alive()
                try:
                    cluster.connect(timeout=5)
                    break
                except (rados.TimedOut, rados.Error):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            self._cluster = cluster
        return self._cluster

    def _mon(self, cluster: Any, cmd: dict, *, inbuf: bytes = b"", out: Path | None = None) -> bytes:
        cmd = {**cmd, "format": "plain" if out else "json"}
        ret, outbuf, outs = cluster.mon_command(json.dumps(cmd), inbuf, timeout=60)
        if ret != 0:
            raise LabError(f"ceph {cmd['prefix']}: {outs} (error {ret})")
        if out is not None:
            out.write_bytes(outbuf)
        return bytes(outbuf)

    def _create_pool(self, cluster: Any, name: str, *, pg_num: int = 8, application: str = "rgw") -> None:
        self._mon(cluster, {"prefix": "osd pool create", "pool": name, "pg_num": pg_num, "pgp_num": pg_num,
                            "autoscale_mode": "off"})
        self._mon(cluster, {"prefix": "osd pool application enable", "pool": name, "app": application,
                            "yes_i_really_mean_it": True})

    def _osd_up(self, cluster: Any) -> bool:
        doc = json.loads(self._mon(cluster, {"prefix": "osd stat"}))
        return int(doc.get("num_up_osds", 0)) >= 1

    def _rgw_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.s3_endpoint, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise LabError(f"Ceph lab at {self.address}: timed out waiting for {what}\n{self._logs()}")
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise LabError(f"Ceph lab at {self.address}: {name} exited with {proc.returncode}\n{self._logs()}")

    def _logs(self) -> str:
        return log_tails(sorted((self.root / "log").glob("*")))

    def _start(self, name: str, *cmd: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the daemon's until it exits
        try:
            self._procs[name] = subprocess.Popen([cmd[0], "-f", "-c", str(self.conf), *cmd[1:]],
                                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                 start_new_session=True)
        finally:
            out.close()

    def _run(self, *cmd: str | Path) -> None:
        result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LabError(f"{' '.join(map(str, cmd))} failed ({result.returncode}): {result.stderr.strip()}")

    def _capture(self, *cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


@contextlib.contextmanager
def running_cluster(root: Path, address: str) -> Iterator[CephCluster]:
    cluster = CephCluster(root, address)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.remove()


"""Run the real ansible-playbook against a lab and read what it reported; inspect the lab's servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from seafbackup_lab.lab import REPO_ROOT, Lab
from seafbackup_lab.wheelhouse import pip_environment

BIN = Path(sys.executable).parent


@dataclass
class Run:
    """A playbook run as Ansible's JSON callback reported it: `doc` the whole report (None when the playbook did
    not get as far as reporting), `output` its text and stderr (for messages and for people)."""

    rc: int
    output: str
    seconds: float
    doc: dict | None = field(default=None, repr=False)

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        """The play recap per host: ok, changed, unreachable, failures, skipped, rescued, ignored."""
        return (self.doc or {}).get("stats", {})

    def changed(self, host: str) -> int:
        return self.recap[host]["changed"]

    def results(self, task_name: str) -> dict[str, dict]:
        """Each host's result of the tasks named `task_name` (without the `role : ` prefix Ansible gives a role's
        tasks; the last one run, for a task run more than once)."""
        found: dict[str, dict] = {}
        for play in (self.doc or {}).get("plays", []):
            for task in play["tasks"]:
                if task["task"]["name"].split(" : ", 1)[-1] == task_name:
                    found.update(task["hosts"])
        return found


def run_playbook(inventory: Path, *args: str, playbook: str = "playbooks/setup_backup.yml") -> Run:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_HOST_KEY_CHECKING="False",
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1", PATH=f"{BIN}:{env.get('PATH', '')}",
               **pip_environment())
    start = time.monotonic()
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), playbook, *args], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    try:  # with -v, "Using ... as config file" comes before the report
        doc = json.loads(result.stdout[0 if result.stdout.startswith("{") else result.stdout.find("\n{") + 1:])
    except ValueError:
        doc = None
    return Run(result.returncode, result.stdout + result.stderr, time.monotonic() - start, doc)


def query(lab: Lab, host: str, sql: str, args=None) -> list[dict]:
    conn = lab.hosts[host].mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        conn.close()


def replica_status(lab: Lab) -> dict | None:
    rows = query(lab, "backup", "SHOW SLAVE STATUS")
    return rows[0] if rows else None


USER_TABLES = ("SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) AS t FROM information_schema.TABLES WHERE TABLE_SCHEMA "
               "NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY t")


def _markers(lab: Lab, host: str) -> list[dict]:
    exists = query(lab, host, "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA='seafbackup' "
                              "AND TABLE_NAME='marker'")
    return query(lab, host, "SELECT id, written_at FROM seafbackup.marker ORDER BY id") if exists else []


def snapshot(lab: Lab) -> dict:
    """What a failed or check-mode run must leave exactly as it was: files and server state."""
    state: dict = {}
    for name, host in lab.hosts.items():
        files = {}
        for path in sorted((host.root / "etc/mysql").rglob("*")) + sorted(host.seafile_conf_dir.glob("*")):
            if path.is_file():
                files[str(path.relative_to(host.root))] = (path.read_bytes(), path.stat().st_mode)
        files["var/tmp"] = sorted(p.name for p in (host.root / "var/tmp").iterdir())
        state[name] = {
            "files": files,
            "pid": host.mariadb.pid(),
            # Not the binlog position: the primary's agent writes its heartbeat row every second.
            "server": query(lab, name, "SELECT @@server_id AS id, @@log_bin AS log_bin"),
            "tables": query(lab, name, USER_TABLES),
            "markers": _markers(lab, name),
            "users": query(lab, name, "SELECT User, Host FROM mysql.user ORDER BY User, Host"),
            "grants": query(lab, name, "SELECT * FROM mysql.global_priv ORDER BY User, Host"),
            "databases": query(lab, name, "SHOW DATABASES"),
        }
    status = replica_status(lab)
    state["replica"] = None if status is None else {
        k: status[k] for k in ("Master_Host", "Master_Port", "Master_User", "Slave_IO_Running", "Slave_SQL_Running",
                               "Replicate_Ignore_Table", "Using_Gtid")
    }
    return state


def run_module(inventory: Path, host: str, module: str, args: dict) -> tuple[int, dict]:
    """One module on one host through the real `ansible` command; returns (rc, the module's JSON result)."""
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
               ANSIBLE_STDOUT_CALLBACK="json", PATH=f"{BIN}:{env.get('PATH', '')}")
    result = subprocess.run([str(BIN / "ansible"), "-i", str(inventory), host, "-m", module, "-a", json.dumps(args)],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    doc = json.loads(result.stdout)
    return result.returncode, doc["plays"][0]["tasks"][0]["hosts"][host]

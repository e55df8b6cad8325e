"""The lab's two agents as real processes, and what tests ask of them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from seafbackup_lab.lab import _set_backup_section, pair_agents, unpair_agents
from tests.helpers import root_sql


class Agents:
    def __init__(self, lab, tmp: Path, *, poll_hours: float = 0.002):
        self.lab = lab
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        pair_agents(lab, state_dir=tmp / "state", poll_hours=poll_hours, workers=2)

    def start(self, name: str, *, journal: bool = False, verbose: bool = False) -> None:
        """`journal`: as systemd starts it with its stderr on the journal (JOURNAL_STREAM names that stream);
        `verbose`: `-v`, which also logs each HTTP request served (DEBUG)."""
        host = self.lab.hosts[name]
        log = open(self.tmp / f"{name}-agent.log", "ab")  # noqa: SIM115
        st = os.fstat(log.fileno())
        env = dict(os.environ, **({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"} if journal else {}))
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "seafbackup_agent.cli.main", *(["-v"] if verbose else []), "agent", "--conf-dir",
             str(host.seafile_conf_dir), "--data-dir", str(host.seafile_data_dir)],
            stdout=log, stderr=log, env=env)
        log.close()
        if name == "backup":
            deadline = time.monotonic() + 15
            while not (self.tmp / "state/agent.sock").exists():
                assert time.monotonic() < deadline, self.log("backup")
                time.sleep(0.02)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def cmd(self, *args: str, check: bool = True, host: str = "backup") -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "seafbackup_agent.cli.main", *args, "--conf-dir",
                                 str(self.lab.hosts[host].seafile_conf_dir)], capture_output=True, text=True)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def status(self, host: str = "backup") -> dict:
        """`status --json` (exit 0 healthy, 5 stale pairing, 6 failed libraries: each still prints the document)."""
        result = self.cmd("status", "--json", check=False, host=host)
        assert result.returncode in (0, 5, 6), result.stderr
        doc = json.loads(result.stdout)
        doc["exit_code"] = result.returncode
        return doc

    def wait_synchronized(self, expected_total: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.cmd("status", "--json", check=False)
            if result.returncode == 0:
                doc = json.loads(result.stdout)
                if doc["total"] == expected_total and doc["counts"]["synchronized"] == expected_total:
                    return doc
            time.sleep(0.1)
        raise AssertionError(f"not synchronized in {timeout}s: {self.cmd('status', check=False).stdout}")

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}-agent.log").read_text()

    def __enter__(self) -> Agents:
        return self

    def __exit__(self, *exc: object) -> None:
        """Kill what still runs and take the [backup] sections away again."""
        for name in list(self.procs):
            self.stop(name, signal.SIGKILL)
        unpair_agents(self.lab)


def backup_head(lab, repo):
    rows = root_sql(lab.backup, f"SELECT commit_id FROM seafile_db.Branch WHERE repo_id='{repo}'")
    return rows[0][0] if rows else None


def primary_url(lab) -> str:
    return f"http://{lab.primary.address}:8090"


def wait_ready(url: str) -> None:
    async def probe() -> None:
        deadline = time.monotonic() + 15
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url + "/v1/health") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "the primary agent did not come up"
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.1)  # past the second it started in (requests signed then are refused)

    asyncio.run(probe())


class ClusterAgents(Agents):
    """The cluster lab's agents as processes: one per Seafile node, and the backup's (its state in tmp/state)."""

    def __init__(self, lab, tmp: Path, *, poll_hours: float = 0.002):
        from seafbackup_lab.cluster import pair_cluster_agents

        self.lab = lab
        self.tmp = tmp
        self.procs = {}
        pair_cluster_agents(lab, state_dir=tmp / "state", poll_hours=poll_hours, workers=2)

    def __exit__(self, *exc: object) -> None:
        for name in list(self.procs):
            self.stop(name, signal.SIGKILL)
        for host in [*self.lab.seafile_nodes, self.lab.backup]:
            _set_backup_section(host.seafile_conf_dir, "")

"""The end-to-end story on real hosts: two Debian containers that boot systemd, reached over SSH.

setup_backup.yml from scratch with the production defaults (systemctl, /etc/mysql, Debian's socket), the agent
as its hardened unit, a change written on the primary reaching the backup, what an admin checks (systemctl,
journalctl, seaf-backup-cmd.sh), a reboot of each host, then the failover drill with the primary powered off.
The tests share one pair and run in file order; each builds on the state the previous one left.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from seafbackup_lab.hosts import HostsLab, seafile_writer_conf
from seafbackup_lab.writer import SeafileServer
from tests.helpers import wait_for
from tests.playbooks import run_playbook
from tests.seafile_checks import check_closure

UNIT = "/etc/systemd/system/seafbackup-agent.service"
AGENT_CMD = "/usr/local/bin/seaf-backup-cmd.sh"


def _write(lab: HostsLab, name: str, files: dict[str, bytes], repo_id: str | None = None) -> tuple[str, str]:
    """Write files as Seafile would on a host (its seafile-data and database); returns (library id, head)."""
    host = lab.hosts[name]
    with seafile_writer_conf(lab, name) as conf, \
            SeafileServer(conf, host.seafile_data_dir, block_size=64 * 1024) as seafile:
        repo_id = repo_id or seafile.create_library("Story", "alice@example.com")
        return repo_id, seafile.put_files(repo_id, files)


def _head(lab: HostsLab, name: str, repo_id: str) -> str | None:
    rows = lab.sql(name, f"SELECT commit_id FROM seafile_db.Branch WHERE repo_id='{repo_id}' AND name='master'")
    return rows[0]["commit_id"] if rows else None


def _replica(lab: HostsLab) -> dict[str, str]:
    rows = lab.sql("backup", "SHOW SLAVE STATUS")
    return rows[0] if rows else {}


def _active(lab: HostsLab, name: str, unit: str = "seafbackup-agent") -> str:
    return lab.ssh(name, f"systemctl is-active {unit}", check=False).stdout.strip()


def _status(lab: HostsLab, name: str) -> dict:
    result = lab.ssh(name, f"{AGENT_CMD} status --json", check=False)
    assert result.returncode in (0, 5, 6), result.stderr
    return json.loads(result.stdout)


def _replicating(lab: HostsLab) -> bool:
    status = _replica(lab)
    return status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"


def _reaches_backup(lab: HostsLab, state: dict, content: bytes) -> None:
    """A change written on the primary: its rows through replication, its objects through the agents."""
    repo_id, head = _write(lab, "primary", {"notes.txt": content, "big.bin": os.urandom(300_000)},
                           state.get("repo_id"))
    state["repo_id"], state["head"] = repo_id, head
    wait_for(lambda: _head(lab, "backup", repo_id) == head, timeout=60, interval=0.5)
    check_closure(lab.backup.seafile_data_dir, repo_id, repo_id, head)
    # RepoOwner is replicated (Branch is the agent's, written once the objects are there).
    assert lab.sql("backup", f"SELECT owner_id FROM seafile_db.RepoOwner WHERE repo_id='{repo_id}'") == [
        {"owner_id": "alice@example.com"}]


@pytest.mark.timeout(900)  # includes a cold start: the root image is built first on a fresh machine
def test_setup_backup_from_scratch(hosts_lab, story_timings):
    lab = hosts_lab
    assert lab.ssh("primary", "test -d /opt/seafile/conf && test -d /opt/seafile/seafile-data && id -u seafile",
                   check=False).returncode == 0
    assert _active(lab, "primary", "mariadb") == "active" and _active(lab, "backup", "seafile") == "active"
    assert _active(lab, "primary") == "inactive"  # nothing of seafbackup yet
    run = run_playbook(lab.inventory)
    story_timings["setup_backup.yml"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    for name in lab.hosts:
        assert _active(lab, name) == "active"
        assert lab.ssh(name, "systemctl is-enabled seafbackup-agent").stdout.strip() == "enabled"
    assert _replicating(lab)
    assert _replica(lab)["Master_Host"] == lab.primary.address


def test_the_unit_verifies_and_reports_its_exposure(hosts_lab, story_timings):
    for name in hosts_lab.hosts:
        verify = hosts_lab.ssh(name, f"systemd-analyze verify {UNIT} 2>&1", check=False)
        assert (verify.returncode, verify.stdout) == (0, ""), verify.stdout
    security = hosts_lab.ssh("backup", "systemd-analyze security --no-pager seafbackup-agent.service").stdout
    exposure = re.search(r"Overall exposure level for seafbackup-agent.service: ([\d.]+) (\w+)", security)
    assert exposure, security
    print(f"\nsystemd-analyze security: {exposure.group(1)} {exposure.group(2)}")
    assert float(exposure.group(1)) <= 3.0, security  # 'OK' or better


def test_systemctl_journalctl_and_seaf_backup_cmd_show_the_agent(hosts_lab):
    lab = hosts_lab
    for name, mode in (("primary", "primary"), ("backup", "backup")):
        status = lab.ssh(name, "systemctl status --no-pager seafbackup-agent", check=False).stdout
        assert "active (running)" in status and f"seafbackup sync agent ({mode} mode)" in status
        [docs] = re.findall(r"Docs: file:(\S+)", status)
        assert lab.ssh(name, f"head -1 {docs}").stdout.startswith("#")
        user = lab.ssh(name, "ps -o user= -p $(systemctl show -P MainPID seafbackup-agent)").stdout
        assert user.strip() == "seafile"
        journal = lab.ssh(name, "journalctl --no-pager -u seafbackup-agent").stdout
        assert "Started seafbackup-agent.service" in journal, journal
        assert lab.ssh(name, f"{AGENT_CMD} status").returncode == 0
    primary, backup = _status(lab, "primary"), _status(lab, "backup")
    assert (primary["mode"], primary["healthy"], primary["change_detector"]) == ("primary", True, "binlog"), primary
    assert (backup["mode"], backup["healthy"], backup["pairing"]["state"]) == ("backup", True, "ok"), backup


def test_a_change_on_the_primary_reaches_the_backup(hosts_lab, state, story_timings):
    start = time.monotonic()
    _reaches_backup(hosts_lab, state, b"first change")
    story_timings["change reaches backup"] = time.monotonic() - start


@pytest.mark.parametrize("name", ["backup", "primary"])
def test_a_reboot_brings_replication_and_both_agents_back(hosts_lab, state, story_timings, name):
    lab = hosts_lab
    story_timings[f"reboot {name}"] = lab.restart(name)
    # Nothing is started by hand: systemd brings MariaDB, replication and the agents back.
    wait_for(lambda: all(_active(lab, h) == "active" for h in lab.hosts), timeout=60, interval=0.5)
    wait_for(lambda: _replicating(lab), timeout=60, interval=0.5)
    _reaches_backup(lab, state, f"after rebooting the {name}".encode())


def test_failover_drill_with_the_primary_powered_off(hosts_lab, state, story_timings, tmp_path):
    lab = hosts_lab
    lab.stop("primary")
    hook = tmp_path / "fence-hook.env"
    run = run_playbook(lab.inventory, "-e", "seafbackup_failover_confirm=true", "-e",
                       json.dumps({"seafbackup_failover_fence_hook": f"env > {hook}"}),
                       playbook="playbooks/failover.yml")
    story_timings["failover.yml"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    assert "FAILED_HOST=primary" in hook.read_text()
    # The backup is the primary now: no replica, writable, Seafile running, [backup] gone.
    assert _replica(lab) == {}
    assert lab.sql("backup", "SELECT @@read_only AS ro") == [{"ro": "0"}]
    assert _active(lab, "backup", "seafile") == "active"
    assert "[backup]" not in lab.ssh("backup", "cat /opt/seafile/conf/seafile.conf").stdout
    # Everything the backup had synced is whole on the new primary.
    assert _head(lab, "backup", state["repo_id"]) == state["head"]
    check_closure(lab.backup.seafile_data_dir, state["repo_id"], state["repo_id"], state["head"])
    # A rebooted new primary stays one (the replica drop-ins are gone).
    lab.restart("backup")
    assert _replica(lab) == {} and lab.sql("backup", "SELECT @@read_only AS ro") == [{"ro": "0"}]


def test_report_timings(story_timings):
    print("\nhosts story timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in story_timings.items()))

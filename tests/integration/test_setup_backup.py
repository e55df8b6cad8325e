"""setup_backup.yml, run by the real ansible-playbook against a lab of two real MariaDB servers.

The tests share one lab (`playbook_lab`) and run in file order: check mode on a fresh lab, the fresh run,
the second run (over paramiko), bad input on the seeded pair, then the lock-and-dump variant over real SSH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql
import pytest

from seafbackup_lab.lab import LAB_REPLICATION_PASSWORD, PRIMARY_AGENT_PRIVILEGES, render_inventory
from seafbackup_lab.services import UnitService
from seafbackup_lab.sshd import LabSSH
from seafbackup_lab.writer import SeafileServer
from tests.helpers import wait_for
from tests.playbooks import query, replica_status, run_module, run_playbook, snapshot

# A whole setup_backup.yml run, agents installed, is one step of these tests: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)
IGNORED = [
    "seafile_db.Repo", "seafile_db.Branch", "seafile_db.RepoHead", "seahub_db.base_userlastlogin",
    "seahub_db.django_session", "seahub_db.sysadmin_extra_userloginlog", "seahub_db.UserTrafficStat",
    "seahub_db.FileAudit", "seahub_db.FileUpdate", "seahub_db.PermAudit", "seahub_db.Event", "seahub_db.UserEvent",
    "seahub_db.avatar_avatar", "seahub_db.avatar_groupavatar", "seahub_db.avatar_uploaded",
]


def _inventory(lab):
    return lab.dir / "inventory.yml"


def _seafile_conf(lab, host):
    return (lab.hosts[host].seafile_conf_dir / "seafile.conf").read_text()


def _backup_section(text):
    return dict(re.findall(r"^(\w+) = (.*)$", text.split("[backup]", 1)[1], re.M)) if "[backup]" in text else {}


def _assert_no_secrets(run, lab, state):
    for secret in (LAB_REPLICATION_PASSWORD, lab.db_password, *(s for s in [state.get("token")] if s)):
        assert secret not in run.output


@pytest.fixture(scope="module")
def fresh(playbook_lab, state):
    """A fresh lab, its seafile.conf texts before the playbook, then the first real run."""
    playbook_lab.reset()
    # A primary as Seafile leaves it: the lab grants what setup_backup.yml grants, take it back to see the role do it.
    query(playbook_lab, "primary", f"REVOKE {PRIMARY_AGENT_PRIVILEGES} ON *.* FROM 'seafile'@'%'")
    state["conf_before"] = {h: _seafile_conf(playbook_lab, h) for h in playbook_lab.hosts}
    return playbook_lab


@pytest.fixture(scope="module")
def seeded(fresh, state, timings):
    if "first_run" not in state:
        run = run_playbook(_inventory(fresh))
        assert run.rc == 0, run.output[-4000:]
        timings["fresh run"] = run.seconds
        state["first_run"] = run
        state["token"] = _backup_section(_seafile_conf(fresh, "primary"))["sync_token"]
    return fresh


def test_check_mode_on_a_fresh_lab_reports_changes_and_changes_nothing(fresh, state, timings):
    assert "first_run" not in state, "check mode must run on a fresh lab"
    before = snapshot(fresh)
    run = run_playbook(_inventory(fresh), "--check", "--diff")
    timings["check mode"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert run.changed("primary") > 0 and run.changed("backup") > 0
    assert "backup" in run.results("Show the dump that would be taken")  # run for the backup, on the primary
    [drop_in] = run.results("Write the binary logging drop-in").values()
    assert "log-bin = mysql-bin" in drop_in["diff"][0]["after"] and drop_in["changed"]
    assert snapshot(fresh) == before
    _assert_no_secrets(run, fresh, state)


def test_fresh_run_starts_replication_with_exactly_the_seeds_filters(seeded, state):
    status = replica_status(seeded)
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
    assert status["Master_Host"] == seeded.primary.address and status["Using_Gtid"] == "Slave_Pos"
    assert sorted(status["Replicate_Ignore_Table"].split(",")) == sorted(IGNORED)
    _assert_no_secrets(state["first_run"], seeded, state)
    # The seed's marker row arrived; the session row written to an ignored table did not (and is gone).
    assert len(query(seeded, "backup", "SELECT id FROM seafbackup.marker")) == 1
    assert query(seeded, "primary", "SELECT COUNT(*) AS n FROM seahub_db.django_session") == [{"n": 0}]


def test_replicated_rows_arrive_and_ignored_rows_do_not(seeded):
    query(seeded, "primary", "INSERT INTO seafile_db.RepoOwner (repo_id, owner_id) VALUES ('r1', 'alice')")
    query(seeded, "primary", "INSERT INTO seafile_db.Repo (repo_id) VALUES ('r1')")
    query(seeded, "primary", "INSERT INTO seahub_db.django_session VALUES ('s1', '', NOW())")
    pos = query(seeded, "primary", "SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert query(seeded, "backup", "SELECT MASTER_GTID_WAIT(%s, 20) AS w", (pos,)) == [{"w": 0}]
    assert query(seeded, "backup", "SELECT owner_id FROM seafile_db.RepoOwner WHERE repo_id='r1'") == [
        {"owner_id": "alice"}]
    assert query(seeded, "backup", "SELECT COUNT(*) AS n FROM seafile_db.Repo") == [{"n": 0}]
    assert query(seeded, "backup", "SELECT COUNT(*) AS n FROM seahub_db.django_session") == [{"n": 0}]
    for table in ("seafile_db.RepoOwner", "seafile_db.Repo", "seahub_db.django_session"):
        query(seeded, "primary", f"DELETE FROM {table}")


def test_the_agents_account_can_write_on_the_backup_without_binlogging(seeded):
    backup = seeded.backup
    conn = pymysql.connect(host=backup.address, user="seafile", password=seeded.db_password, database="seafile_db",
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SET SESSION sql_log_bin = 0")
        cur.execute("INSERT INTO Repo (repo_id) VALUES ('agent-row')")
        cur.execute("DELETE FROM Repo WHERE repo_id = 'agent-row'")
    conn.close()
    grants = " ".join(r[next(iter(r))] for r in query(seeded, "primary", "SHOW GRANTS FOR 'seafile'@'%'"))
    assert "BINLOG ADMIN" not in grants  # local to the backup, never replicated


def test_the_agents_account_can_read_the_binlog_on_the_primary_only(seeded):
    def grants(host):
        return " ".join(r[next(iter(r))] for r in query(seeded, host, "SHOW GRANTS FOR 'seafile'@'%'"))

    assert "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.*" in grants("primary")
    assert "REPLICATION SLAVE" not in grants("backup")  # granted with sql_log_bin=0: not replicated
    # The primary's agent (started by the playbook) is reading the binlog.
    wait_for(lambda: query(seeded, "primary", "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST "
                           "WHERE USER = 'seafile' AND COMMAND = 'Binlog Dump'") == [{"n": 1}],
             timeout=20, interval=0.1)
    assert "Falling back to polling" not in (seeded.primary.root / "var/log/seafbackup-agent.log").read_text()


def test_seafile_conf_gets_backup_sections_with_one_token_and_keeps_the_rest(seeded, state):
    primary, backup = (_backup_section(_seafile_conf(seeded, h)) for h in ("primary", "backup"))
    assert re.fullmatch(r"[0-9a-f]{40}", primary["sync_token"]) and primary["sync_token"] == backup["sync_token"]
    assert primary == {"backup_url": f"http://{seeded.backup.address}:8091", "sync_token": primary["sync_token"],
                       "listen": f"{seeded.primary.address}:8090",
                       "state_dir": str(seeded.primary.root / "var/lib/seafbackup")}
    assert backup == {"primary_url": f"http://{seeded.primary.address}:8090", "sync_token": primary["sync_token"],
                      "sync_poll_interval": "1", "listen": f"{seeded.backup.address}:8091",
                      "state_dir": str(seeded.backup.root / "var/lib/seafbackup"), "workers": "8"}
    for host in seeded.hosts:
        text = _seafile_conf(seeded, host)
        before = state["conf_before"][host]
        assert text.startswith(before) and "[backup]" not in before  # other sections byte for byte
        mode = (seeded.hosts[host].seafile_conf_dir / "seafile.conf").stat().st_mode & 0o777
        assert mode == 0o600


def test_the_dump_is_gone_and_the_seeding_drop_in_removed(seeded):
    for host in seeded.hosts.values():
        assert list((host.root / "var/tmp").iterdir()) == []
        assert not (host.root / "etc/mysql/conf.d/61-seafbackup-seeding.cnf").exists()


def test_the_play_prints_the_seed_dumps_size_and_duration(seeded, state):
    found = re.findall(r"seed dump: (\d+) bytes \(([\d.]+) MiB\) in ([\d.]+) s", state["first_run"].output)
    assert len(found) == 1, state["first_run"].output[-4000:]
    size, mib, seconds = found[0]
    # A dump of the three Seafile databases with their schemas: tens of kilobytes at least, never empty.
    assert int(size) > 10_000 and float(mib) == round(int(size) / 2**20, 1) and float(seconds) > 0


def test_a_wrong_backup_url_in_the_inventory_fails_the_play_within_a_minute_naming_it(seeded, timings):
    wrong = f"http://{seeded.backup.address}:8099"  # nothing listens there
    run = run_playbook(_inventory(seeded), "-e", f"seafbackup_seafile_conf_backup_url={wrong}")
    assert run.rc != 0
    # The pairing check fails within its minute, not after seafbackup_agent_wait_timeout (30 minutes). The bound
    # is relative to the first run (which installed the agents and seeded the backup), measured on the same
    # machine, with room for a loaded machine: still far below the 30 minutes.
    assert run.seconds < timings["fresh run"] + 120, (run.seconds, timings["fresh run"])
    text = " ".join(run.output.split())
    assert f"the backup at {wrong} is unreachable" in text, run.output[-4000:]
    assert "Check the pairing from this side" in text


def test_a_playbook_run_puts_a_hand_edited_token_right_and_the_agents_follow(seeded, state):
    conf = seeded.backup.seafile_conf_dir / "seafile.conf"
    conf.write_text(re.sub(r"^sync_token = .*$", "sync_token = " + "d" * 40, conf.read_text(), flags=re.M))
    agents = {name: UnitService("seafbackup-agent", host.root) for name, host in seeded.hosts.items()}
    pids = {name: unit.pid() for name, unit in agents.items()}
    run = run_playbook(_inventory(seeded))
    assert run.rc == 0, run.output[-4000:]
    assert _backup_section(_seafile_conf(seeded, "backup"))["sync_token"] == state["token"]
    assert agents["backup"].pid() not in (None, pids["backup"])  # restarted with the token put right
    _a_new_library_reaches_the_backup(seeded, "after the token was put right")
    # This run also put right the previous test's wrong backup URL; the next test's run, right after this one,
    # changes nothing.


def test_second_run_over_paramiko_changes_nothing_and_keeps_the_token(seeded, state, timings):
    """The second run, from a control node without OpenSSH: every module of the playbook works over paramiko (one
    connection per task), and a run on the paired hosts changes nothing."""
    run = run_playbook(_ssh_inventory(seeded, "paramiko"), "-v")
    timings["second run over paramiko"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert run.changed("primary") == 0 and run.changed("backup") == 0, run.output[-6000:]
    assert _backup_section(_seafile_conf(seeded, "backup"))["sync_token"] == state["token"]
    _assert_no_secrets(run, seeded, state)


def test_a_tag_runs_that_part_only_after_the_preflight(seeded, timings):
    run = run_playbook(_inventory(seeded), "--tags", "seafbackup_agent_configure")
    timings["--tags seafbackup_agent_configure"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert set(run.results("Write the agent's settings into seafile.conf [backup]")) == {"primary", "backup"}
    assert set(run.results("Read the database server (flavour, version, replication, read_only)")) == {
        "primary", "backup"}  # the preflight always runs
    assert run.results("Install seafbackup with the dependencies its wheel names, at the pinned versions") == {}
    assert run.results("Write the [backup] URLs and settings") == {}
    assert run.changed("primary") == 0 and run.changed("backup") == 0


def test_the_agents_run_from_a_hardened_unit_that_systemd_accepts(seeded):
    for host in seeded.hosts.values():
        unit = host.root / "etc/systemd/system/seafbackup-agent.service"
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
        text = unit.read_text()
        for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure",
                          f"ReadWritePaths={host.seafile_data_dir}"):
            assert hardening in text
        assert UnitService("seafbackup-agent", host.root).pid() is not None
    wrapper = seeded.backup.root / "usr/local/bin/seaf-backup-cmd.sh"
    status = subprocess.run([str(wrapper), "status"], capture_output=True, text=True, check=True).stdout
    assert status.startswith("Total number of libraries: ")


def test_the_lab_runs_status_on_either_host_as_a_newcomer_would(seeded):
    """`seafbackup-lab cmd HOST status` (what `make status` runs): the host's seafile.conf is found through
    SEAFILE_CENTRAL_CONF_DIR, as Seafile's own scripts find it, with no --conf-dir."""
    lab_cmd = [str(Path(sys.executable).parent / "seafbackup-lab"), "--lab-dir", str(seeded.dir), "cmd"]
    backup = subprocess.run([*lab_cmd, "backup", "status"], capture_output=True, text=True, check=False)
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert backup.stdout.startswith("Total number of libraries: ") and "Pairing: ok" in backup.stdout
    primary = subprocess.run([*lab_cmd, "primary", "status"], capture_output=True, text=True, check=False)
    assert primary.returncode == 0, primary.stdout + primary.stderr
    assert primary.stdout.startswith("Mode: primary") and "reachable, accepts our signatures" in primary.stdout


def _a_new_library_reaches_the_backup(lab, name: str) -> str:
    host = lab.primary
    with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir) as server:
        repo = server.create_library(name, "alice@example.com")
        head = server.put_files(repo, {"a.txt": f"written: {name}".encode()})
    wait_for(lambda: query(lab, "backup", "SELECT commit_id FROM seafile_db.Branch WHERE repo_id=%s",
                           (repo,)) == [{"commit_id": head}], timeout=20, interval=0.1)
    return repo


def test_a_change_on_the_primary_reaches_the_backup_and_seafbackup_status_gates(seeded):
    repo = _a_new_library_reaches_the_backup(seeded, "after setup")
    args = {"conf_dir": str(seeded.backup.seafile_conf_dir),
            "agent_cmd": str(seeded.backup.root / "opt/seafbackup/venv/bin/seaf-backup-cmd"),
            "login_unix_socket": str(seeded.backup.mariadb.paths.socket)}
    rc, result = run_module(_inventory(seeded), "backup", "seafbackup_status",
                            {**args, "wait_synchronized": True, "timeout": 60, "max_lag_seconds": 30,
                             "fail_on_failed": True})
    assert rc == 0, result
    assert repo in result["synchronized_libraries"] and result["failed_libraries"] == [] and not result["changed"]
    assert result["replication"]["io_running"] == "Yes" and result["replication"]["last_sql_errno"] == 0
    query(seeded, "backup", "STOP SLAVE SQL_THREAD")
    try:
        rc, result = run_module(_inventory(seeded), "backup", "seafbackup_status", {**args, "max_lag_seconds": 30})
        assert rc != 0 and "replication is not running" in result["msg"]
    finally:
        query(seeded, "backup", "START SLAVE SQL_THREAD")


def _status_args(lab, host="backup"):
    return {"conf_dir": str(lab.hosts[host].seafile_conf_dir),
            "agent_cmd": str(lab.hosts[host].root / "opt/seafbackup/venv/bin/seaf-backup-cmd")}


def test_seafbackup_status_reports_freshness_and_a_stalled_replication_lag(seeded):
    args = {**_status_args(seeded), "login_unix_socket": str(seeded.backup.mariadb.paths.socket)}
    rc, result = run_module(_inventory(seeded), "backup", "seafbackup_status",
                            {**args, "max_staleness_seconds": 10, "max_lag_seconds": 10})
    assert rc == 0, result
    fresh = result["freshness"]
    assert fresh["state"] == "ok" and 0 <= fresh["rpo_bound_seconds"] < 10 and 0 <= fresh["db_lag_seconds"] < 10
    rc, result = run_module(_inventory(seeded), "primary", "seafbackup_status",
                            {**_status_args(seeded, "primary"), "replication": False})
    assert rc == 0 and result["mode"] == "primary" and result["primary"]["healthy"], result
    # A primary database that hangs (as behind a dead link): the replica's IO thread still says Yes and
    # Seconds_Behind_Master 0, but the replicated heartbeat row stops: the lag shows, and so does the staleness.
    mariadbd = seeded.primary.mariadb.pid()
    os.kill(mariadbd, signal.SIGSTOP)
    try:
        time.sleep(8)
        rc, result = run_module(_inventory(seeded), "backup", "seafbackup_status",
                                {**args, "max_lag_seconds": 5, "fail_on_stale": False})
    finally:
        os.kill(mariadbd, signal.SIGCONT)
    assert rc != 0 and "replication lags" in result["msg"], result
    assert result["replication"]["io_running"] == "Yes" and result["replication"]["seconds_behind"] == 0
    assert result["replication"]["heartbeat_lag_seconds"] > 5
    wait_for(lambda: run_module(_inventory(seeded), "backup", "seafbackup_status",
                                {**args, "max_lag_seconds": 5})[0] == 0, timeout=30, interval=0.1)


def test_a_limited_run_says_the_pair_goes_together(seeded, state):
    """A token or URL given to one host alone (`--limit`) would break the pairing: the play refuses, plainly."""
    run = run_playbook(_inventory(seeded), "--limit", "backup", "-e", f"seafbackup_seafile_conf_sync_token={'e' * 40}")
    assert run.rc != 0
    assert "configures the pair together" in " ".join(run.output.split()), run.output[-4000:]
    assert _backup_section(_seafile_conf(seeded, "backup"))["sync_token"] == state["token"]


def _sabotage_other_primary(lab):
    query(lab, "backup", "STOP SLAVE")
    query(lab, "backup", "CHANGE MASTER TO MASTER_HOST='198.18.0.1'")


def _restore_primary(lab):
    query(lab, "backup", "STOP SLAVE")
    query(lab, "backup", "CHANGE MASTER TO MASTER_HOST=%s", (lab.primary.address,))
    query(lab, "backup", "START SLAVE")
    wait_for(lambda: replica_status(lab)["Slave_IO_Running"] == "Yes", timeout=20, interval=0.1)


@pytest.mark.parametrize(
    ("case", "args", "message"),
    [
        ("wrong replication password", ["-e", "seafbackup_replication_password=not-the-password"],
         "cannot log in to the primary"),
        ("same server id on both", ["-e", "seafbackup_mysql_server_id=7"], "different on primary"),
        ("database missing on the primary",
         ["-e", '{"seafbackup_databases": {"ccnet": "ccnet_db", "seafile": "seafile_db", "seahub": "seahub_gone"}}'],
         "seahub_gone missing on the primary"),
        ("backup replicates from another primary", [], "already replicates from 198.18.0.1"),
        ("wrong socket", ["-e", "seafbackup_mysql_socket=/nonexistent/mysqld.sock"],
         "There is no socket /nonexistent/mysqld.sock on primary (seafbackup_mysql_socket)"),
    ],
)
def test_bad_input_fails_clearly_and_changes_nothing(seeded, case, args, message, state):
    if case == "backup replicates from another primary":
        _sabotage_other_primary(seeded)
    try:
        before = snapshot(seeded)
        run = run_playbook(_inventory(seeded), *args)
        assert run.rc != 0
        assert message in " ".join(run.output.split()), run.output[-4000:]
        assert snapshot(seeded) == before
        _assert_no_secrets(run, seeded, state)
    finally:
        if case == "backup replicates from another primary":
            _restore_primary(seeded)


def _ssh_inventory(lab, connection):
    ssh = LabSSH(lab.dir, lab.addresses)
    ssh.up()
    inventory = lab.dir / f"inventory-{connection}.yml"
    inventory.write_text(render_inventory(lab, connection=connection, ssh_key=ssh.client_key))
    return inventory


def test_a_locked_reseed_over_real_ssh_moves_the_dump_through_the_control_node(seeded, state, timings):
    """The lock-and-dump variant (Seafile stopped for the dump, then started again) over real SSH: each host's files
    are reached only through its own SSH connection (fetch, then copy), and a host-local table missing on the
    backup is created again (structure only)."""
    query(seeded, "backup", "DROP TABLE seahub_db.avatar_avatar")
    log = seeded.primary.root / "var/log/seafile-service.log"
    actions_before = log.read_text().split() if log.exists() else []
    markers = len(query(seeded, "backup", "SELECT id FROM seafbackup.marker"))
    run = run_playbook(_ssh_inventory(seeded, "ssh"), "-e", "seafbackup_replication_seed_method=locked",
                       "-e", "seafbackup_replication_reseed=true", "-v")
    timings["locked reseed over ssh"] = run.seconds
    assert run.rc == 0, run.output[-4000:]
    assert "Bring the dump to the control node" in run.output
    assert log.read_text().split()[len(actions_before):] == ["stop", "start"]
    status = replica_status(seeded)
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
    assert len(query(seeded, "backup", "SELECT id FROM seafbackup.marker")) == markers + 1
    assert query(seeded, "backup", "SHOW TABLES FROM seahub_db LIKE 'avatar_avatar'")
    _assert_no_secrets(run, seeded, state)


def test_report_timings(timings):
    print("\nsetup_backup.yml timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

"""The failover drill: failover.yml on a lab paired by setup_backup.yml, then the reverse pair rebuilt.

One lab (`playbook_lab`, reset first), tests in file order: the pair is set up with three libraries (two with
sync tokens) and one library made to fail on the backup; the gates refuse while replication is behind and
without confirmation, a failing pre-hook aborts; the primary's database and agent die; check mode shows the plan
and changes nothing (also with the old primary unreachable over SSH); the failover promotes the backup; a second
run changes nothing; the old primary comes back and setup_backup.yml with the groups swapped makes it the new
backup, which replicates and syncs.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import signal
import subprocess

import pymysql
import pytest
import yaml

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.objectstore.backend_conf import render_sections
from seafbackup_lab.lab import render_inventory
from seafbackup_lab.mariadb import log_tails
from seafbackup_lab.services import UnitService
from seafbackup_lab.writer import Put, SeafileServer
from tests import backup_storage
from tests.helpers import wait_for
from tests.playbooks import BIN, query, replica_status, run_playbook, snapshot
from tests.seafile_checks import check_closure

# A whole setup_backup.yml run, agents installed, is one step of these tests: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)
FAILOVER = "playbooks/failover.yml"
CONFIRM = ("-e", "seafbackup_failover_confirm=true")


def _seaf(host):
    return SeafileServer(host.seafile_conf_dir, host.seafile_data_dir, block_size=64 * 1024)


def _agent_cmd(host, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(host.root / "opt/seafbackup/venv/bin/seaf-backup-cmd"), *args, "--conf-dir",
                           str(host.seafile_conf_dir)], capture_output=True, text=True, check=False)


def _agent_status(lab, host=None) -> dict | None:
    """`status --json` (exit 0 healthy, 5 stale pairing, 6 failed libraries all print it), None if not running."""
    result = _agent_cmd(host or lab.backup, "status", "--json")
    return json.loads(result.stdout) if result.returncode in (0, 5, 6) else None


def _lab_cmd(lab, *args):
    subprocess.run([str(BIN / "seafbackup-lab"), "--lab-dir", str(lab.dir), *args],
                   check=True, capture_output=True)


def _tokens(lab, host, repo_id):
    return query(lab, host, "SELECT token FROM seafile_db.RepoUserToken WHERE repo_id=%s", (repo_id,))


def _seafile_state(host):
    path = host.root / "run/seafile.state"
    return path.read_text().strip() if path.exists() else "never started"


def _agents_story(lab, log_lines: int = 60) -> str:
    """Each host's agent as `status --json` sees it and the end of its log."""
    parts = []
    for name, host in lab.hosts.items():
        status = _agent_cmd(host, "status", "--json")
        parts.append(f"== {name}: status exit {status.returncode}\n{status.stdout[-4000:]}{status.stderr[-1000:]}\n"
                     + log_tails([UnitService("seafbackup-agent", host.root).log_file], lines=log_lines))
    return "\n".join(parts)


def _backup_head(lab, host, repo_id):
    rows = query(lab, host, "SELECT commit_id FROM seafile_db.Branch WHERE repo_id=%s AND name='master'", (repo_id,))
    return rows[0]["commit_id"] if rows else None


def _files_and_backup_server(lab) -> dict:
    """What check mode must leave alone once the primary's database is dead: every file, the backup's server."""
    state: dict = {}
    for name, host in lab.hosts.items():
        files = {}
        for path in sorted((host.root / "etc/mysql").rglob("*")) + sorted(host.seafile_conf_dir.glob("*")) + sorted(
                (host.root / "var/lib/seafbackup").glob("*.json")) + sorted((host.root / "run").glob("*")):
            if path.is_file():
                files[str(path.relative_to(host.root))] = (path.read_bytes(), path.stat().st_mode)
        state[name] = files
    state["backup server"] = (
        query(lab, "backup", "SELECT @@read_only AS ro, @@server_id AS id, @@gtid_binlog_pos AS pos"),
        query(lab, "backup", "SELECT repo_id, token FROM seafile_db.RepoUserToken ORDER BY token"),
        lab.backup.mariadb.pid(),
    )
    status = replica_status(lab)
    state["replica"] = status and {k: status[k] for k in ("Master_Host", "Slave_SQL_Running", "Exec_Master_Log_Pos")}
    return state


def _backup_on_s3(request, lab) -> dict:
    """With `--backup-storage=s3`: three new buckets on the lab Ceph for the backup, given to setup_backup.yml as
    an admin would, in the backup's host_vars with the secret key in a vault. The backends as the backup's
    seafile.conf must then name them; {} on the filesystem."""
    if request.config.getoption("backup_storage") != "s3":
        return {}
    s3, ceph = request.getfixturevalue("s3"), request.getfixturevalue("ceph")
    backends = backup_storage.create_s3_backends(s3, ceph, backup_storage.bucket_prefix(request))
    password = lab.dir / "vault-password"
    password.write_text(secrets.token_hex(16))
    os.environ["ANSIBLE_VAULT_PASSWORD_FILE"] = str(password)  # for every playbook run of the drill

    def remove():
        os.environ.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
        shutil.rmtree(lab.dir / "host_vars", ignore_errors=True)
        backup_storage.unregister(lab.backup.seafile_data_dir)
    request.addfinalizer(remove)
    vaulted = subprocess.run([str(BIN / "ansible-vault"), "encrypt_string", "--stdin-name", "vault_backup_s3_key"],
                             input=ceph.secret_key, capture_output=True, text=True, check=True).stdout
    sections = {kind: {**values, "key": "{{ vault_backup_s3_key }}"} for kind, values in zip(
        ("commits", "fs", "blocks"), render_sections(backends).values(), strict=True)}
    (lab.dir / "host_vars").mkdir()
    (lab.dir / "host_vars/backup.yml").write_text(
        yaml.safe_dump({"seafbackup_seafile_conf_backup_backends": sections}) + vaulted)
    backup_storage.register(lab.backup.seafile_data_dir, s3, backends)
    return backends


@pytest.fixture(scope="module")
def drill(playbook_lab, state, timings, request):
    """setup_backup.yml on a fresh lab with libraries; one of them then fails to sync on the backup."""
    lab = playbook_lab
    lab.reset()
    state["backends"] = _backup_on_s3(request, lab)
    state["conf_before"] = (lab.backup.seafile_conf_dir / "seafile.conf").read_bytes()
    with _seaf(lab.primary) as primary:
        good = primary.create_library("Good library", "alice@example.com")
        primary.put_files(good, {"a.txt": b"alpha", "docs/b.bin": os.urandom(150_000)})
        bad = primary.create_library("Broken library", "bob@example.com")
        primary.put_files(bad, {"ok.txt": b"fine"})
        plain = primary.create_library("Plain library", "carol@example.com")
        primary.put_files(plain, {"c.txt": b"gamma"})
        state["tokens"] = {good: primary.add_sync_token(good, "alice@example.com"),
                           bad: primary.add_sync_token(bad, "bob@example.com")}
    for token in state["tokens"].values():  # the desktop client that uses each token
        query(lab, "primary", "INSERT INTO seafile_db.RepoTokenPeerInfo (token, peer_id, peer_ip, peer_name, sync_time,"
              " client_ver) VALUES (%s, %s, '10.0.0.9', 'laptop', UNIX_TIMESTAMP(), '9.0.0')", (token, token))
    run = run_playbook(lab.dir / "inventory.yml")
    assert run.rc == 0, run.output[-4000:]
    timings["setup_backup.yml"] = run.seconds
    written = load_seafile_conf(lab.backup.seafile_conf_dir).backends
    assert render_sections(written) == render_sections(state["backends"])
    assert not any(backend.key in run.output for backend in state["backends"].values())
    # A change on the primary whose block is corrupt: the backup's agent is away while it is made, and its
    # first poll when it comes back finds the new head and fails on the block.
    _lab_cmd(lab, "service", "backup", "agent", "stop")
    with _seaf(lab.primary) as primary:
        primary.commit(bad, [Put("broken.bin", b"will be corrupted on disk")])
    [block] = [p for p in (lab.primary.seafile_data_dir / "storage/blocks" / bad).rglob("*")
               if p.is_file() and p.read_bytes() == b"will be corrupted on disk"]
    block.write_bytes(b"corrupted")
    _lab_cmd(lab, "service", "backup", "agent", "start")
    doc = wait_for(lambda: (d := _agent_status(lab)) and d["counts"]["failed"] == 1 and d, timeout=60)
    assert [lib["repo_id"] for lib in doc["libraries"] if lib["state"] == "failed"] == [bad]
    state["libraries"] = {"good": good, "bad": bad, "plain": plain}
    return lab


def test_gates_refuse_while_the_sql_thread_is_behind(drill):
    query(drill, "backup", "STOP SLAVE SQL_THREAD")
    try:
        query(drill, "primary", "INSERT INTO seafbackup.marker (id, written_at) VALUES ('behind', NOW(6))")
        written = query(drill, "primary", "SHOW MASTER STATUS")[0]
        # The primary agent's heartbeat keeps writing, so the IO thread may read past the marker before a poll.
        wait_for(lambda: _read_through(replica_status(drill)) >= (written["File"], written["Position"]))
        before = snapshot(drill)
        run = run_playbook(drill.dir / "inventory.yml", *CONFIRM, "-e", "seafbackup_failover_gates_apply_timeout=2",
                           playbook=FAILOVER)
        assert run.rc != 0
        text = " ".join(run.output.split())
        assert "Replication on backup is behind" in text and "seafbackup_failover_gates_allow_behind=true" in text
        assert snapshot(drill) == before
    finally:
        query(drill, "backup", "START SLAVE SQL_THREAD")
    pos = query(drill, "primary", "SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert query(drill, "backup", "SELECT MASTER_GTID_WAIT(%s, 20) AS w", (pos,)) == [{"w": 0}]


def test_without_confirmation_it_lists_the_libraries_behind_and_changes_nothing(drill, state):
    before = snapshot(drill)
    run = run_playbook(drill.dir / "inventory.yml", playbook=FAILOVER)
    assert run.rc != 0
    text = " ".join(run.output.split())
    assert "-e seafbackup_failover_confirm=true" in text
    assert f"{state['libraries']['bad']} (Broken library): failed" in text
    assert snapshot(drill) == before


def _read_through(status: dict) -> tuple[str, int]:
    """Where the replica's IO thread has read the primary's binlog to (binlog file names sort in order)."""
    return status["Master_Log_File"], status["Read_Master_Log_Pos"]


def _sections(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def _env_file(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_a_failing_pre_hook_aborts_before_anything_changes(drill, state):
    seen = drill.dir / "pre-hook.env"
    before = snapshot(drill)
    run = run_playbook(drill.dir / "inventory.yml", *CONFIRM, "-e",
                       json.dumps({"seafbackup_failover_pre_hook": f"env > {seen}; exit 3"}), playbook=FAILOVER)
    assert run.rc != 0 and "Run the pre-failover hook" in run.output
    env = _env_file(seen)
    assert (env["FAILED_HOST"], env["NEW_PRIMARY"], env["FAILED_LIBRARIES"]) == (
        "primary", "backup", state["libraries"]["bad"])
    assert snapshot(drill) == before


def test_check_mode_with_the_old_primary_up_says_what_it_would_fence_and_sets_nothing(drill, timings):
    before = snapshot(drill)
    run = run_playbook(drill.dir / "inventory.yml", "--check", playbook=FAILOVER)
    timings["check mode, primary up"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    text = " ".join(run.output.split())
    assert "Fenced primary: reachable yes, database would set read-only" in text
    assert "Fenced primary: reachable yes, database read-only" not in text
    assert query(drill, "primary", "SELECT @@read_only AS ro") == [{"ro": 0}]
    assert snapshot(drill) == before


def test_the_primary_dies_and_check_mode_shows_the_plan_and_changes_nothing(drill, state, timings):
    drill.primary.mariadb.kill()
    drill.primary.unit_services[0].stop(sig=signal.SIGKILL)
    before = _files_and_backup_server(drill)
    run = run_playbook(drill.dir / "inventory.yml", "--check", playbook=FAILOVER)
    timings["check mode"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    assert "Failover plan (check mode: nothing changes)" in run.output
    assert "STOP SLAVE" in run.output and "RESET SLAVE ALL" in run.output
    assert _files_and_backup_server(drill) == before
    state["check output"] = run.output
    print("\n" + run.output)


def test_an_unreachable_old_primary_is_reported_and_left_to_the_fence_hook(drill):
    inventory = drill.dir / "inventory-unreachable.yml"
    text = (drill.dir / "inventory.yml").read_text()
    inventory.write_text(text.replace("        primary:\n", "        primary:\n          ansible_connection: ssh\n"
                                      f"          ansible_host: {drill.primary.address}\n          ansible_port: 9\n"))
    before = _files_and_backup_server(drill)
    run = run_playbook(inventory, "--check", "-e", "seafbackup_failover_fence_hook=/usr/local/bin/power-off",
                       playbook=FAILOVER)
    assert run.rc == 0, run.output[-6000:]
    text = " ".join(run.output.split())
    assert "unreachable: primary, fence hook: /usr/local/bin/power-off" in text
    assert "Fenced primary: reachable no, database host unreachable - NOT FENCED COMPLETELY" in text
    assert _files_and_backup_server(drill) == before


def test_failover_promotes_the_backup(drill, state, timings):
    libs = state["libraries"]
    hooks = {"seafbackup_failover_fence_hook": f"env > {drill.dir / 'fence-hook.env'}",
             "seafbackup_failover_post_hook": f"env > {drill.dir / 'post-hook.env'}"}
    run = run_playbook(drill.dir / "inventory.yml", *CONFIRM, "-e", json.dumps(hooks), playbook=FAILOVER)
    timings["failover"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    print("\n" + run.output[-5000:])
    backup = drill.backup
    # Writable and no longer a replica, also after the restart that dropped the replica drop-ins.
    assert replica_status(drill) is None
    assert query(drill, "backup", "SELECT @@read_only AS ro") == [{"ro": 0}]
    conn = pymysql.connect(host=backup.address, user="seafile", password=drill.db_password, database="seafile_db",
                           autocommit=True)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO RepoOwner (repo_id, owner_id) VALUES ('after-failover', 'x')")
        cur.execute("DELETE FROM RepoOwner WHERE repo_id = 'after-failover'")
    conn.close()
    conf_d = backup.root / "etc/mysql/conf.d"
    assert not (conf_d / "60-seafbackup-replica.cnf").exists() and not (conf_d / "61-seafbackup-seeding.cnf").exists()
    # The failed library's tokens are gone (before Seafile started again), the others' kept.
    assert _tokens(drill, "backup", libs["bad"]) == []
    assert _tokens(drill, "backup", libs["good"]) == [{"token": state["tokens"][libs["good"]]}]
    peers = query(drill, "backup", "SELECT token FROM seafile_db.RepoTokenPeerInfo")
    assert peers == [{"token": state["tokens"][libs["good"]]}]
    # [backup] is gone; what seafile.conf held before setup_backup.yml is there byte for byte, followed only by
    # the object storage sections setup_backup.yml wrote (with --backup-storage=s3), which the new primary's
    # Seafile reads its objects from. 0600.
    conf = backup.seafile_conf_dir / "seafile.conf"
    assert "[backup]" not in conf.read_text()
    assert conf.read_bytes().startswith(state["conf_before"].rstrip(b"\n"))
    assert _sections(conf.read_text()) == _sections(state["conf_before"].decode()) | render_sections(
        state["backends"])
    assert conf.stat().st_mode & 0o777 == 0o600
    # Fenced: the old primary's Seafile and agent stopped; the new primary's Seafile runs, its agent does not.
    assert _seafile_state(drill.primary) == "stopped" and drill.primary.unit_services[0].pid() is None
    assert _seafile_state(backup) == "running" and backup.unit_services[0].pid() is None
    marker = json.loads((backup.root / "var/lib/seafbackup/last-failover.json").read_text())
    assert marker["new_primary"] == "backup" and marker["tokens_deleted"] == {libs["bad"]: 1}
    text = " ".join(run.output.split())
    assert "database does not answer: (2003" in text and f"{libs['bad']} (Broken library): failed" in text
    assert "swap seafile_primary and seafile_backup" in text
    # What the backup could prove when the primary died, and the window nobody can know about.
    assert "Freshness: the backup holds every library at least as new as the primary had it at" in text
    assert "head moves on the old primary after that cannot be known" in text
    assert marker.get("libraries_behind") == [libs["bad"]]
    # The database did not answer: the fence hook ran for the old primary; the post hook ran at the end.
    assert _env_file(drill.dir / "fence-hook.env")["FAILED_HOST"] == "primary"
    assert _env_file(drill.dir / "post-hook.env")["FAILED_LIBRARIES"] == libs["bad"]
    # Every synchronized library's whole closure is on the new primary.
    for name in ("good", "plain"):
        head = _backup_head(drill, "backup", libs[name])
        assert head, name
        check_closure(backup.seafile_data_dir, libs[name], libs[name], head)


def test_a_second_run_changes_nothing(drill, timings):
    run = run_playbook(drill.dir / "inventory.yml", *CONFIRM, playbook=FAILOVER)
    timings["second run"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    assert run.changed("backup") == 0 and run.changed("primary") == 0, run.output[-6000:]
    assert "already the primary" in run.output


def test_the_old_primary_rebuilt_as_the_new_backup_replicates_and_syncs(drill, state, timings):
    drill.primary.mariadb.start()
    swapped = drill.dir / "inventory-swapped.yml"
    swapped.write_text(render_inventory(drill, swap=True))
    run = run_playbook(swapped)
    timings["setup_backup.yml swapped"] = run.seconds
    assert run.rc == 0, run.output[-6000:]
    status = query(drill, "primary", "SHOW SLAVE STATUS")[0]
    assert status["Master_Host"] == drill.backup.address
    assert status["Slave_IO_Running"] == "Yes" and status["Slave_SQL_Running"] == "Yes"
    # Replicates: a row written on the new primary arrives on the new backup.
    query(drill, "backup", "INSERT INTO seafile_db.RepoOwner (repo_id, owner_id) VALUES ('swapped', 'dave')")
    pos = query(drill, "backup", "SELECT @@gtid_binlog_pos AS p")[0]["p"]
    assert query(drill, "primary", "SELECT MASTER_GTID_WAIT(%s, 20) AS w", (pos,)) == [{"w": 0}]
    assert query(drill, "primary", "SELECT owner_id FROM seafile_db.RepoOwner WHERE repo_id='swapped'") == [
        {"owner_id": "dave"}]
    # Syncs: a library created on the new primary appears, whole, on the new backup.
    with _seaf(drill.backup) as new_primary:
        fresh = new_primary.create_library("After failover", "alice@example.com")
        head = new_primary.put_files(fresh, {"new.txt": b"written on the new primary", "big.bin": os.urandom(200_000)})
    wait_for(lambda: _backup_head(drill, "primary", fresh) == head, timeout=120, explain=lambda: _agents_story(drill))
    check_closure(drill.primary.seafile_data_dir, fresh, fresh, head)
    # The library that was behind at the failover is newer (and broken) on the rebuilt backup than on the new
    # primary: the agent refuses to move its head back until told to (the runbook's `sync --force`).
    bad = state["libraries"]["bad"]

    def failed_now():
        return {lib["repo_id"]: lib["reason"] for lib in _agent_status(drill, drill.primary)["libraries"]
                if lib["state"] == "failed"}

    failed = wait_for(failed_now, timeout=60, explain=lambda: _agents_story(drill))
    assert list(failed) == [bad] and "does not descend" in failed[bad]
    forced = _agent_cmd(drill.primary, "sync", "--force", bad)
    assert forced.returncode == 0, forced.stderr
    assert _backup_head(drill, "primary", bad) == _backup_head(drill, "backup", bad)
    assert run.changed("backup") > 0


def test_report_timings(timings):
    print("\nfailover drill timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))

"""The lab: two real MariaDB servers, Seafile's databases, conf and data dirs, and its inventory."""

import shutil
import socket

import pytest

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import DatabaseError
from seafbackup_agent.seafile.db import connect
from seafbackup_lab.cli import main as lab_main
from seafbackup_lab.lab import Lab
from seafbackup_lab.mariadb import LabError
from seafbackup_lab.sshd import SSH_PORT, LabSSH
from tests.helpers import LIFECYCLE_ADDRESSES, make_lab_dir

SEAFILE_TABLES = {
    "Repo", "Branch", "RepoHead", "RepoOwner", "RepoInfo", "RepoSize", "RepoFileCount", "VirtualRepo",
    "RepoHistoryLimit", "RepoValidSince", "GCID", "LastGCID", "GarbageRepos", "RepoTrash", "RepoStorageId",
    "RepoUserToken", "RepoTokenPeerInfo", "RepoSyncError", "SharedRepo", "RepoGroup", "InnerPubRepo", "OrgRepo",
}
SEAHUB_IGNORED = {
    "base_userlastlogin", "django_session", "sysadmin_extra_userloginlog", "UserTrafficStat", "FileAudit",
    "FileUpdate", "PermAudit", "Event", "UserEvent", "avatar_avatar", "avatar_groupavatar", "avatar_uploaded",
}


def _tables(settings, db):
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (db,))
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["primary", "backup"])
def test_each_host_is_reachable_with_the_credentials_in_its_seafile_conf(lab, host):
    h = lab.hosts[host]
    settings = load_seafile_conf(h.seafile_conf_dir).database
    assert settings.host == h.address
    assert _tables(settings, "seafile_db") >= SEAFILE_TABLES
    assert {"EmailUser", "Group", "GroupUser", "Binding"} <= _tables(settings, "ccnet_db")
    assert SEAHUB_IGNORED | {"share_fileshare", "profile_profile"} <= _tables(settings, "seahub_db")
    assert oct((h.seafile_conf_dir / "seafile.conf").stat().st_mode & 0o777) == "0o600"


def test_the_two_hosts_are_separate_servers(lab):
    ids = set()
    for host in lab.hosts.values():
        conn = connect(host.database())
        with conn.cursor() as cur:
            cur.execute("SELECT @@hostname, @@bind_address, @@datadir")
            ids.add(cur.fetchone())
        conn.close()
    assert len(ids) == 2


def test_lab_lifecycle_up_is_idempotent_down_stops_reset_empties():
    lab_dir = make_lab_dir("seafbackup-test-lifecycle-")
    addresses = LIFECYCLE_ADDRESSES
    args = ["--lab-dir", str(lab_dir)]
    try:
        lab = Lab(lab_dir, addresses)
        lab.up()
        password = Lab(lab_dir).db_password
        assert lab_main([*args, "up"]) == 0  # twice: nothing breaks, same credentials
        assert Lab(lab_dir).db_password == password
        conn = connect(lab.primary.database())
        with conn.cursor() as cur:
            cur.execute("INSERT INTO Repo (repo_id) VALUES ('x')")
        conn.close()

        assert lab_main([*args, "service", "primary", "mysql", "restart"]) == 0
        assert lab_main([*args, "service", "primary", "mysql", "status"]) == 0

        assert lab_main([*args, "reset"]) == 0
        conn = connect(Lab(lab_dir).primary.database())
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM Repo")
            assert cur.fetchone() == (0,)
        conn.close()

        assert lab_main([*args, "down"]) == 0
        assert all(info["mariadb_pid"] is None for info in Lab(lab_dir).status().values())
        with pytest.raises(DatabaseError, match="is running"):
            connect(Lab(lab_dir).primary.database()).close()
    finally:
        Lab(lab_dir).down()
        shutil.rmtree(lab_dir, ignore_errors=True)


def test_reset_and_down_stop_the_labs_sshd_so_the_next_one_can_listen(fresh_lab):
    fresh_lab.up()
    LabSSH(fresh_lab.dir, fresh_lab.addresses).up()
    fresh_lab.reset()  # deletes the lab's directory, sshd's PID files with it
    LabSSH(fresh_lab.dir, fresh_lab.addresses).up()
    fresh_lab.down()
    for address in fresh_lab.addresses.values():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, SSH_PORT), timeout=5).close()


def test_an_sshd_address_taken_by_another_process_is_reported(fresh_lab):
    other = LabSSH(make_lab_dir("seafbackup-test-other-ssh-"), fresh_lab.addresses)
    other.up()
    try:
        with pytest.raises(LabError, match=rf"{fresh_lab.primary.address}:{SSH_PORT} is taken by a process"):
            LabSSH(fresh_lab.dir, fresh_lab.addresses).up()
    finally:
        other.down()
        shutil.rmtree(other.dir.parent, ignore_errors=True)

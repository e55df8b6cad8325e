"""The database side of a failover (library/seafbackup_failover.py) and the failover filters, without a server."""

from tests.ansible_files import ROOT, load

# The modules import their module_utils as Ansible ships them: ansible.module_utils.<name>.
flavour_mod = load("ansible.module_utils.seafbackup_flavour", ROOT / "module_utils/seafbackup_flavour.py")
load("ansible.module_utils.seafbackup_login", ROOT / "module_utils/seafbackup_login.py")
failover = load("seafbackup_failover_under_test", ROOT / "library/seafbackup_failover.py")
filters = load("seafbackup_filters_for_failover", ROOT / "filter_plugins/seafbackup.py")

BAD = "3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2"


class Cursor:
    """Answers the token lookup; records every statement."""

    def __init__(self, tokens):
        self.tokens = tokens
        self.executed = []

    def execute(self, sql, params=None):
        self.executed.append((sql, params))

    def fetchall(self):
        return [{"repo_id": repo, "token": token} for repo, token in self.tokens]


def test_a_replica_is_detached_made_writable_and_loses_the_tokens_of_the_libraries_behind():
    flav = flavour_mod.flavour("10.11.6-MariaDB")
    cur = Cursor([(BAD, "t1"), (BAD, "t2")])
    before = {"configured": True, "read_only": 1}
    statements, tokens = failover.plan(cur, flav, before, "seafile_db", [BAD])
    assert [sql for sql, _ in statements][:3] == ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"]
    assert statements[3] == ("DELETE FROM `seafile_db`.RepoTokenPeerInfo WHERE token IN (%s, %s)", ["t1", "t2"])
    assert statements[4] == ("DELETE FROM `seafile_db`.RepoUserToken WHERE repo_id IN (%s)", [BAD])
    assert tokens == {BAD: 2}
    assert failover._shown(statements[3][0]) == "DELETE FROM `seafile_db`.RepoTokenPeerInfo WHERE token IN (...)"


def test_an_already_promoted_server_needs_nothing():
    flav = flavour_mod.flavour("8.4.3")
    statements, tokens = failover.plan(Cursor([]), flav, {"configured": False, "read_only": 0,
                                                           "super_read_only": 0}, "seafile_db", [BAD])
    assert statements == [] and tokens == {}


def test_mysql_turns_super_read_only_off_first():
    flav = flavour_mod.flavour("8.4.3")
    statements, _ = failover.plan(Cursor([]), flav, {"configured": True, "read_only": 1, "super_read_only": 1},
                                  "seafile_db", [])
    assert [sql for sql, _ in statements] == ["STOP REPLICA", "RESET REPLICA ALL", "SET GLOBAL super_read_only = 0",
                                              "SET GLOBAL read_only = 0"]


def test_libraries_behind_carry_their_names_and_states():
    status = {"failed_libraries": [{"repo_id": BAD, "reason": "block is corrupt", "attempts": 3}],
              "waiting_libraries": ["w"], "syncing_libraries": []}
    behind = filters.seafbackup_libraries_behind(status, [{"repo_id": BAD, "name": "Broken"}])
    assert behind == [{"repo_id": BAD, "state": "failed", "reason": "block is corrupt", "name": "Broken"},
                      {"repo_id": "w", "state": "waiting", "reason": "", "name": "?"}]
    assert filters.seafbackup_library_line(behind[0]) == f"{BAD} (Broken): failed: block is corrupt"


def test_the_sql_thread_has_applied_all_only_when_positions_match():
    flav = flavour_mod.flavour("10.11.6-MariaDB")
    row = {"Slave_IO_Running": "Connecting", "Slave_SQL_Running": "Yes", "Master_Log_File": "mysql-bin.000002",
           "Read_Master_Log_Pos": 900, "Relay_Master_Log_File": "mysql-bin.000002", "Exec_Master_Log_Pos": 900}
    assert flavour_mod.replica_status(flav, row)["applied_all"]
    row["Exec_Master_Log_Pos"] = 700
    assert not flavour_mod.replica_status(flav, row)["applied_all"]

"""The flavour table (module_utils/seafbackup_flavour.py): every supported server, statement by statement."""

import pytest

from tests.ansible_files import ROOT, load

flavour_mod = load("seafbackup_flavour_under_test", ROOT / "module_utils/seafbackup_flavour.py")
filters = load("seafbackup_filters_under_test", ROOT / "filter_plugins/seafbackup.py")

MARIADB = ["10.5.23-MariaDB", "10.11.6-MariaDB-0+deb12u1", "5.5.5-10.6.18-MariaDB-log", "11.4.3-MariaDB-ubu2404"]
MYSQL_80_OLD = "8.0.21"
MYSQL_80_NEW = "8.0.36-0ubuntu0.22.04.1"
MYSQL_84 = "8.4.3"


@pytest.mark.parametrize(
    ("version", "name", "numbers"),
    [
        ("10.11.6-MariaDB-0+deb12u1", "mariadb", (10, 11, 6)),
        ("5.5.5-10.6.18-MariaDB-log", "mariadb", (10, 6, 18)),
        ("11.4.3-MariaDB", "mariadb", (11, 4, 3)),
        ("8.0.36-0ubuntu0.22.04.1", "mysql", (8, 0, 36)),
        ("8.4.3", "mysql", (8, 4, 3)),
    ],
)
def test_versions_are_read_from_the_servers_own_version_string(version, name, numbers):
    assert flavour_mod.parse_version(version) == (name, numbers)


@pytest.mark.parametrize("version", ["10.4.32-MariaDB", "5.7.44", "10.1.48-MariaDB", "not a version"])
def test_old_or_unknown_servers_are_refused_with_a_reason(version):
    with pytest.raises(flavour_mod.FlavourError):
        flavour_mod.flavour(version)
    described = flavour_mod.describe(version)
    assert described["supported"] is False
    assert described["problem"]


@pytest.mark.parametrize("version", MARIADB)
def test_mariadb_uses_master_slave_statements_gtid_slave_pos_and_binlog_admin(version):
    f = flavour_mod.flavour(version)
    assert f["supported"] and f["name"] == "mariadb"
    assert f["change_source"] == "CHANGE MASTER TO"
    assert f["show_replica_status"] == "SHOW SLAVE STATUS"
    assert (f["start_replica"], f["stop_replica"], f["reset_replica_all"]) == ("START SLAVE", "STOP SLAVE",
                                                                              "RESET SLAVE ALL")
    assert f["show_binlog_status"] == "SHOW MASTER STATUS"
    assert f["gtid_source_option"] == "MASTER_USE_GTID = slave_pos"
    assert f["set_replica_gtid"] == "SET GLOBAL gtid_slave_pos = %s"
    assert f["columns"]["io_running"] == "Slave_IO_Running"
    assert f["columns"]["seconds_behind"] == "Seconds_Behind_Master"
    assert f["binlog_expire"]["variable"] == "expire_logs_days"
    assert f["sql_log_bin_privilege"] == "BINLOG ADMIN"
    assert f["binlog_reader_privileges"] == ["REPLICATION SLAVE", "BINLOG MONITOR"]
    assert f["replica_config"]["skip_replica_start_option"] == "skip-slave-start"
    assert "--gtid" in f["dump_gtid_args"] and f["dump"] == "mariadb-dump"


def test_mysql_8_0_before_8_0_22_still_speaks_master_slave():
    f = flavour_mod.flavour(MYSQL_80_OLD)
    assert f["change_source"] == "CHANGE MASTER TO"
    assert f["show_replica_status"] == "SHOW SLAVE STATUS"
    assert f["columns"]["io_running"] == "Slave_IO_Running"
    assert f["dump_coordinates_arg"] == "--master-data=2"
    assert f["binlog_expire"]["variable"] == "expire_logs_days"


def test_mysql_8_0_recent_uses_replica_source_but_keeps_master_status_and_expire_days():
    f = flavour_mod.flavour(MYSQL_80_NEW)
    assert f["change_source"] == "CHANGE REPLICATION SOURCE TO"
    assert f["show_replica_status"] == "SHOW REPLICA STATUS"
    assert f["start_replica"] == "START REPLICA"
    assert f["columns"]["io_running"] == "Replica_IO_Running"
    assert f["columns"]["seconds_behind"] == "Seconds_Behind_Source"
    assert f["show_binlog_status"] == "SHOW MASTER STATUS"
    assert f["dump_coordinates_arg"] == "--source-data=2"
    assert f["binlog_expire"]["variable"] == "expire_logs_days"
    assert f["gtid_source_option"] == "SOURCE_AUTO_POSITION = 1"
    assert f["sql_log_bin_privilege"] == "SYSTEM_VARIABLES_ADMIN"
    assert f["binlog_reader_privileges"] == ["REPLICATION SLAVE", "REPLICATION CLIENT"]
    assert f["pre_import_statements"] == ["RESET MASTER"]


def test_mysql_8_4_has_no_master_statements_and_no_expire_logs_days():
    f = flavour_mod.flavour(MYSQL_84)
    assert f["show_binlog_status"] == "SHOW BINARY LOG STATUS"
    assert f["binlog_expire"]["variable"] == "binlog_expire_logs_seconds"
    assert f["pre_import_statements"] == ["RESET BINARY LOGS AND GTIDS"]
    assert f["replica_config"]["skip_replica_start_option"] == "skip-replica-start"
    assert f["primary_config"]["gtid_mode"] == "ON"
    assert flavour_mod.binlog_expire_setting(f, 7) == ("binlog_expire_logs_seconds", 7 * 86400)
    statements = [f[k] for k in ("show_replica_status", "start_replica", "stop_replica", "reset_replica_all",
                                  "show_binlog_status", "change_source", "gtid_source_option")]
    statements += [*f["source_options"].values(), *f["extra_source_options"], *f["columns"].values()]
    assert [s for s in statements if "MASTER" in s or "SLAVE" in s] == []


@pytest.mark.parametrize("version", [*MARIADB, MYSQL_80_OLD, MYSQL_80_NEW, MYSQL_84])
def test_change_source_sets_host_credentials_and_position_in_one_parameterized_statement(version):
    f = flavour_mod.flavour(version)
    sql, params = flavour_mod.change_source_sql(f, "10.0.0.1", 3306, "repl", "s'cret", 5, use_gtid=True)
    assert sql.startswith(f["change_source"] + " ")
    assert "s'cret" not in sql and params == ["10.0.0.1", 3306, "repl", "s'cret", 5]
    assert sql.count("%s") == len(params)
    assert f["gtid_source_option"] in sql
    sql, params = flavour_mod.change_source_sql(f, "10.0.0.1", "3306", "repl", "pw", use_gtid=False,
                                                log_file="mysql-bin.000002", log_pos="42")
    assert f["source_options"]["log_file"] in sql and f["source_options"]["log_pos"] in sql
    assert params[-2:] == ["mysql-bin.000002", 42] and sql.count("%s") == len(params)
    with pytest.raises(flavour_mod.FlavourError):
        flavour_mod.change_source_sql(f, "h", 3306, "u", "p", use_gtid=False)


@pytest.mark.parametrize("version", [*MARIADB, MYSQL_80_NEW, MYSQL_84])
def test_dump_arguments_leave_ignored_tables_out(version):
    f = flavour_mod.flavour(version)
    argv = flavour_mod.dump_args(f, ["ccnet_db", "seafile_db"], ["seafile_db.Repo"], "online", True, "/x/seed.sql")
    assert argv[0] == f["dump"]
    assert "--single-transaction" in argv and f["dump_coordinates_arg"] in argv
    assert "--ignore-table=seafile_db.Repo" in argv and "--result-file=/x/seed.sql" in argv
    assert argv[-3:] == ["--databases", "ccnet_db", "seafile_db"]
    locked = flavour_mod.dump_args(f, ["seafile_db"], [], "locked")
    assert f["dump_coordinates_arg"] not in locked and "--skip-lock-tables" in locked
    with pytest.raises(flavour_mod.FlavourError):
        flavour_mod.dump_args(f, ["seafile_db"], [], "offline")


def test_mariadb_dump_coordinates_are_read_from_header_and_footer():
    f = flavour_mod.flavour("10.11.6-MariaDB")
    lines = [
        "-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;",
        "-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=834;",
        "INSERT INTO x VALUES (1);",
        "-- SET GLOBAL gtid_slave_pos='0-1-3';",
    ]
    assert flavour_mod.parse_dump_header(f, lines) == {"gtid": "0-1-3", "log_file": "mysql-bin.000001",
                                                       "log_pos": 834}


def test_mysql_dump_coordinates_are_read_from_its_comments():
    f = flavour_mod.flavour(MYSQL_84)
    lines = [
        "-- SET @@GLOBAL.GTID_PURGED=/*!80000 '+'*/ '3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5';",
        "-- CHANGE REPLICATION SOURCE TO SOURCE_LOG_FILE='binlog.000003', SOURCE_LOG_POS=157;",
    ]
    found = flavour_mod.parse_dump_header(f, lines)
    assert found == {"gtid": "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5", "log_file": "binlog.000003",
                     "log_pos": 157}


@pytest.mark.parametrize("version", ["10.11.6-MariaDB", MYSQL_84])
def test_replica_status_rows_become_flavour_neutral(version):
    f = flavour_mod.flavour(version)
    cols = f["columns"]
    row = {cols["io_running"]: "Yes", cols["sql_running"]: "Yes", cols["source_host"]: "10.0.0.1",
           cols["source_port"]: 3306, cols["ignore_tables"]: "b.t,a.t", cols["last_sql_errno"]: 0}
    status = flavour_mod.replica_status(f, row)
    assert status["running"] and status["source_host"] == "10.0.0.1"
    assert status["ignore_tables"] == ["a.t", "b.t"]
    assert flavour_mod.replica_status(f, None) is None
    row[cols["io_running"]] = "Connecting"
    assert not flavour_mod.replica_status(f, row)["running"]


def test_filters_expose_the_table_and_read_ini_values():
    assert filters.seafbackup_flavour("10.11.6-MariaDB")["name"] == "mariadb"
    assert filters.seafbackup_flavour("5.7.1")["supported"] is False
    change = filters.seafbackup_change_source(filters.seafbackup_flavour("8.4.0"), "h", 3306, "u", "p")
    assert change["sql"].startswith("CHANGE REPLICATION SOURCE TO") and change["params"][0] == "h"
    assert filters.seafbackup_binlog_expire(filters.seafbackup_flavour("10.11.6-MariaDB"), 7) == ["expire_logs_days", 7]
    text = "[database]\nuser = seafile\n\n[backup]\nsync_token = abc\n"
    assert filters.seafbackup_ini_value(text, "backup", "sync_token") == "abc"
    assert filters.seafbackup_ini_value(text, "backup", "primary_url") == ""
    assert filters.seafbackup_ini_value("not ini", "backup", "x", "d") == "d"

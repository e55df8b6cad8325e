"""The one place that knows how MariaDB and MySQL differ for replication.

Given the server's ``SELECT VERSION()`` string, ``flavour()`` returns every statement, variable name,
status column and command-line option that seafbackup's roles and modules need. Pure functions, no I/O:
custom modules import it as ``ansible.module_utils.seafbackup_flavour``; the ``seafbackup_flavour``
filter plugin exposes it to the roles; the unit tests cover every flavour.

Supported: MariaDB 10.5 and later (10.x, 11.x), MySQL 8.0 and later (8.0, 8.4 LTS, 9.x).
"""

from __future__ import annotations

import re

MIN_MARIADB = (10, 5)  # BINLOG ADMIN (needed for SET sql_log_bin on the backup) exists from 10.5.2
MIN_MYSQL = (8, 0)


class FlavourError(ValueError):
    """The server is not one seafbackup supports; the message says what was found and what is needed."""


def parse_version(version):
    """``'10.11.6-MariaDB-0+deb12u1'`` -> ``('mariadb', (10, 11, 6))``; ``'8.4.3'`` -> ``('mysql', (8, 4, 3))``."""
    text = str(version).strip()
    # MariaDB 10.x behind a MySQL 5.5 compatibility prefix: "5.5.5-10.11.6-MariaDB".
    text = re.sub(r"^5\.5\.5-", "", text)
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise FlavourError(f"cannot read a server version from {version!r}")
    numbers = tuple(int(n) for n in match.groups())
    name = "mariadb" if "mariadb" in text.lower() else "mysql"
    return name, numbers


def check_supported(name, version):
    if name == "mariadb" and version[:2] < MIN_MARIADB:
        raise FlavourError(f"MariaDB {_dotted(version)} is too old: seafbackup needs MariaDB 10.5 or later")
    if name == "mysql" and version[:2] < MIN_MYSQL:
        raise FlavourError(f"MySQL {_dotted(version)} is too old: seafbackup needs MySQL 8.0 or later")


def _dotted(version):
    return ".".join(str(n) for n in version)


def flavour(version):
    """Everything that differs between servers, as one plain dict (JSON-safe, usable from Jinja)."""
    name, numbers = parse_version(version)
    check_supported(name, numbers)
    table = _mariadb(numbers) if name == "mariadb" else _mysql(numbers)
    table["supported"] = True
    return table


def describe(version):
    """Like `flavour`, but an unsupported or unreadable version gives {'supported': False, 'problem': ...}."""
    try:
        return flavour(version)
    except FlavourError as exc:
        return {"supported": False, "problem": str(exc), "version": str(version)}


def _mariadb(v):
    return {
        "name": "mariadb",
        "version": _dotted(v),
        "label": f"MariaDB {_dotted(v)}",
        "client": "mariadb",
        "dump": "mariadb-dump",
        "show_replica_status": "SHOW SLAVE STATUS",
        "start_replica": "START SLAVE",
        "stop_replica": "STOP SLAVE",
        "reset_replica_all": "RESET SLAVE ALL",
        "show_binlog_status": "SHOW MASTER STATUS",
        "change_source": "CHANGE MASTER TO",
        "source_options": {
            "host": "MASTER_HOST",
            "port": "MASTER_PORT",
            "user": "MASTER_USER",
            "password": "MASTER_PASSWORD",
            "connect_retry": "MASTER_CONNECT_RETRY",
            "log_file": "MASTER_LOG_FILE",
            "log_pos": "MASTER_LOG_POS",
        },
        "gtid_source_option": "MASTER_USE_GTID = slave_pos",
        "extra_source_options": [],
        "columns": {
            "io_running": "Slave_IO_Running",
            "sql_running": "Slave_SQL_Running",
            "source_host": "Master_Host",
            "source_port": "Master_Port",
            "source_user": "Master_User",
            "seconds_behind": "Seconds_Behind_Master",
            "last_io_errno": "Last_IO_Errno",
            "last_io_error": "Last_IO_Error",
            "last_sql_errno": "Last_SQL_Errno",
            "last_sql_error": "Last_SQL_Error",
            "ignore_tables": "Replicate_Ignore_Table",
            # What the IO thread received and what the SQL thread applied (the failover gate compares them).
            "received_log_file": "Master_Log_File",
            "received_log_pos": "Read_Master_Log_Pos",
            "applied_log_file": "Relay_Master_Log_File",
            "applied_log_pos": "Exec_Master_Log_Pos",
        },
        # The GTID position the primary has written, and how the backup waits for it.
        "gtid_position_query": "SELECT @@GLOBAL.gtid_binlog_pos",
        "set_replica_gtid": "SET GLOBAL gtid_slave_pos = %s",
        "pre_import_statements": [],
        "wait_for_gtid": "SELECT MASTER_GTID_WAIT(%s, %s)",
        "dump_gtid_args": ["--gtid"],
        "dump_coordinates_arg": "--master-data=2",
        "dump_gtid_header": r"^-- SET GLOBAL gtid_slave_pos='(?P<gtid>[^']*)';",
        "dump_position_header": r"^-- CHANGE MASTER TO MASTER_LOG_FILE='(?P<file>[^']+)', MASTER_LOG_POS=(?P<pos>\d+);",
        "binlog_expire": {"variable": "expire_logs_days", "unit": "days"},
        "primary_config": {"binlog_format": "ROW"},
        "replica_config": {"skip_replica_start_option": "skip-slave-start"},
        # SET SESSION sql_log_bin needs this privilege (10.5.2+); what the agent's DB user gets on the backup.
        "sql_log_bin_privilege": "BINLOG ADMIN",
        "replication_privilege": "REPLICATION SLAVE",
        # The primary agent tails the binlog (COM_BINLOG_DUMP) and reads SHOW MASTER STATUS (10.5.2+).
        "binlog_reader_privileges": ["REPLICATION SLAVE", "BINLOG MONITOR"],
        "ignore_table_option": "replicate-ignore-table",
        "relay_log_option": "relay-log",
    }


def _mysql(v):
    modern = v >= (8, 0, 22)  # SHOW REPLICA STATUS, START REPLICA, Replica_*/Source_* columns
    source = v >= (8, 0, 23)  # CHANGE REPLICATION SOURCE TO, SOURCE_* options
    no_master = v >= (8, 4, 0)  # MASTER/SLAVE statements removed; SHOW BINARY LOG STATUS
    source_data = v >= (8, 0, 26)  # mysqldump --source-data replaces --master-data
    no_expire_days = v >= (8, 2, 0)  # expire_logs_days removed
    return {
        "name": "mysql",
        "version": _dotted(v),
        "label": f"MySQL {_dotted(v)}",
        "client": "mysql",
        "dump": "mysqldump",
        "show_replica_status": "SHOW REPLICA STATUS" if modern else "SHOW SLAVE STATUS",
        "start_replica": "START REPLICA" if modern else "START SLAVE",
        "stop_replica": "STOP REPLICA" if modern else "STOP SLAVE",
        "reset_replica_all": "RESET REPLICA ALL" if modern else "RESET SLAVE ALL",
        "show_binlog_status": "SHOW BINARY LOG STATUS" if no_master else "SHOW MASTER STATUS",
        "change_source": "CHANGE REPLICATION SOURCE TO" if source else "CHANGE MASTER TO",
        "source_options": {
            key: (f"SOURCE_{suffix}" if source else f"MASTER_{suffix}")
            for key, suffix in (
                ("host", "HOST"),
                ("port", "PORT"),
                ("user", "USER"),
                ("password", "PASSWORD"),
                ("connect_retry", "CONNECT_RETRY"),
                ("log_file", "LOG_FILE"),
                ("log_pos", "LOG_POS"),
            )
        },
        "gtid_source_option": "SOURCE_AUTO_POSITION = 1" if source else "MASTER_AUTO_POSITION = 1",
        # caching_sha2_password without TLS: the replica must fetch the source's RSA key.
        "extra_source_options": ["GET_SOURCE_PUBLIC_KEY = 1" if source else "GET_MASTER_PUBLIC_KEY = 1"],
        "columns": {
            "io_running": "Replica_IO_Running" if modern else "Slave_IO_Running",
            "sql_running": "Replica_SQL_Running" if modern else "Slave_SQL_Running",
            "source_host": "Source_Host" if modern else "Master_Host",
            "source_port": "Source_Port" if modern else "Master_Port",
            "source_user": "Source_User" if modern else "Master_User",
            "seconds_behind": "Seconds_Behind_Source" if modern else "Seconds_Behind_Master",
            "last_io_errno": "Last_IO_Errno",
            "last_io_error": "Last_IO_Error",
            "last_sql_errno": "Last_SQL_Errno",
            "last_sql_error": "Last_SQL_Error",
            "ignore_tables": "Replicate_Ignore_Table",
            "received_log_file": "Source_Log_File" if modern else "Master_Log_File",
            "received_log_pos": "Read_Source_Log_Pos" if modern else "Read_Master_Log_Pos",
            "applied_log_file": "Relay_Source_Log_File" if modern else "Relay_Master_Log_File",
            "applied_log_pos": "Exec_Source_Log_Pos" if modern else "Exec_Master_Log_Pos",
        },
        "gtid_position_query": "SELECT @@GLOBAL.gtid_executed",
        "set_replica_gtid": "SET GLOBAL gtid_purged = %s",
        # gtid_purged can only be set on a replica whose own GTID history is empty.
        "pre_import_statements": ["RESET BINARY LOGS AND GTIDS" if no_master else "RESET MASTER"],
        "wait_for_gtid": "SELECT WAIT_FOR_EXECUTED_GTID_SET(%s, %s)",
        "dump_gtid_args": ["--set-gtid-purged=COMMENTED"],
        "dump_coordinates_arg": "--source-data=2" if source_data else "--master-data=2",
        "dump_gtid_header": r"^-- SET @@GLOBAL.GTID_PURGED=/\*!80000 '\+'\*/ '(?P<gtid>[^']*)';",
        "dump_position_header": (
            r"^-- CHANGE (?:REPLICATION SOURCE|MASTER) TO (?:SOURCE|MASTER)_LOG_FILE='(?P<file>[^']+)', "
            r"(?:SOURCE|MASTER)_LOG_POS=(?P<pos>\d+);"
        ),
        "binlog_expire": (
            {"variable": "binlog_expire_logs_seconds", "unit": "seconds"}
            if no_expire_days
            else {"variable": "expire_logs_days", "unit": "days"}
        ),
        "primary_config": {"binlog_format": "ROW", "gtid_mode": "ON", "enforce_gtid_consistency": "ON"},
        "replica_config": {
            "skip_replica_start_option": "skip-replica-start" if modern else "skip-slave-start",
            "gtid_mode": "ON",
            "enforce_gtid_consistency": "ON",
        },
        "sql_log_bin_privilege": "SYSTEM_VARIABLES_ADMIN",
        "replication_privilege": "REPLICATION SLAVE",
        "binlog_reader_privileges": ["REPLICATION SLAVE", "REPLICATION CLIENT"],
        "ignore_table_option": "replicate-ignore-table",
        "relay_log_option": "relay-log",
    }


def binlog_expire_setting(flav, days):
    """The my.cnf line that keeps binlogs for `days` days, in the server's own variable."""
    expire = flav["binlog_expire"]
    if expire["unit"] == "days":
        return expire["variable"], int(days)
    return expire["variable"], int(days) * 86400


def change_source_sql(flav, host, port, user, password, connect_retry=60, use_gtid=True, log_file=None,
                      log_pos=None):
    """One parameterized CHANGE ... TO statement that sets everything at once.

    Setting host, credentials and position in the same statement avoids the pitfall of a later
    ``CHANGE MASTER TO MASTER_HOST=...`` resetting coordinates a dump had set.
    Returns ``(sql, params)`` for a DB-API cursor (``%s`` placeholders).
    """
    opts = flav["source_options"]
    parts = [f"{opts['host']} = %s", f"{opts['port']} = %s", f"{opts['user']} = %s", f"{opts['password']} = %s",
             f"{opts['connect_retry']} = %s"]
    params = [host, int(port), user, password, int(connect_retry)]
    if use_gtid:
        parts.append(flav["gtid_source_option"])
    else:
        if not log_file or log_pos is None:
            raise FlavourError("binlog file and position are needed when GTID is not used")
        parts += [f"{opts['log_file']} = %s", f"{opts['log_pos']} = %s"]
        params += [log_file, int(log_pos)]
    parts += flav["extra_source_options"]
    return f"{flav['change_source']} " + ", ".join(parts), params


def dump_args(flav, databases, ignore_tables, method="online", use_gtid=True, result_file=None):
    """The dump command line (without connection options): argv list.

    `method` ``online``: one consistent snapshot with ``--single-transaction`` and the coordinates
    written as comments in the header. ``locked``: the caller holds ``FLUSH TABLES WITH READ LOCK`` and
    reads the coordinates itself, so the dump takes no locks and records nothing.
    """
    if method not in ("online", "locked"):
        raise FlavourError(f"unknown dump method {method!r} (online or locked)")
    argv = [flav["dump"], "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
            "--default-character-set=utf8mb4"]
    if method == "online":
        argv.append(flav["dump_coordinates_arg"])
        if use_gtid:
            argv += flav["dump_gtid_args"]
    else:
        argv.append("--skip-lock-tables")
        if flav["name"] == "mysql":
            argv.append("--set-gtid-purged=OFF")
    argv += [f"--ignore-table={table}" for table in ignore_tables]
    if result_file:
        argv.append(f"--result-file={result_file}")
    argv += ["--databases", *databases]
    return argv


def parse_dump_header(flav, lines):
    """Coordinates from the comments an online dump writes at its top: {'gtid', 'log_file', 'log_pos'}."""
    found = {"gtid": None, "log_file": None, "log_pos": None}
    gtid_re = re.compile(flav["dump_gtid_header"])
    pos_re = re.compile(flav["dump_position_header"])
    for line in lines:
        match = gtid_re.match(line)
        if match:
            found["gtid"] = match.group("gtid")
        match = pos_re.match(line)
        if match:
            found["log_file"], found["log_pos"] = match.group("file"), int(match.group("pos"))
    return found


def replica_status(flav, row):
    """A status row (dict from SHOW SLAVE/REPLICA STATUS) in flavour-neutral keys; None when not a replica."""
    if not row:
        return None
    cols = flav["columns"]
    status = {key: row.get(column) for key, column in cols.items()}
    ignore = status.get("ignore_tables") or ""
    status["ignore_tables"] = sorted(t for t in ignore.split(",") if t)
    status["io_running"] = str(status["io_running"] or "")
    status["sql_running"] = str(status["sql_running"] or "")
    status["running"] = status["io_running"] == "Yes" and status["sql_running"] == "Yes"
    # The SQL thread has applied everything the IO thread received (nothing left in the relay log).
    status["applied_all"] = (status.get("received_log_file"), str(status.get("received_log_pos"))) == (
        status.get("applied_log_file"), str(status.get("applied_log_pos")))
    return status

"""Filters that expose the flavour table (module_utils/seafbackup_flavour.py) and small helpers to the roles."""

from __future__ import annotations

import configparser
import importlib.util
import sys
from pathlib import Path

_FLAVOUR_PATH = Path(__file__).resolve().parents[1] / "module_utils" / "seafbackup_flavour.py"


def _load_flavour():
    name = "seafbackup_flavour_for_filters"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _FLAVOUR_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_flavour = _load_flavour()


def seafbackup_flavour(version):
    """`SELECT VERSION()` text -> the flavour table (or {'supported': False, 'problem': ...})."""
    return _flavour.describe(version)


def seafbackup_change_source(flav, host, port, user, password, connect_retry=60, use_gtid=True, log_file=None,
                             log_pos=None):
    """-> {'sql': ..., 'params': [...]} for community.mysql.mysql_query (query + positional_args)."""
    sql, params = _flavour.change_source_sql(flav, host, port, user, password, connect_retry, use_gtid, log_file,
                                             log_pos)
    return {"sql": sql, "params": params}


def seafbackup_replica_status(rows, flav):
    """The first row of SHOW SLAVE/REPLICA STATUS (as mysql_query returns it) in flavour-neutral keys."""
    row = rows[0] if isinstance(rows, list) and rows else rows
    return _flavour.replica_status(flav, row or None)


def seafbackup_binlog_expire(flav, days):
    """-> [variable, value] for the primary's drop-in."""
    return list(_flavour.binlog_expire_setting(flav, days))


def seafbackup_ini_value(text, section, option, default=""):
    """The value of `option` in `section` of an INI text (seafile.conf), or `default`."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text or "")
    except configparser.Error:
        return default
    return parser.get(section, option, fallback=default)


class FilterModule:
    def filters(self):
        return {
            "seafbackup_flavour": seafbackup_flavour,
            "seafbackup_change_source": seafbackup_change_source,
            "seafbackup_replica_status": seafbackup_replica_status,
            "seafbackup_binlog_expire": seafbackup_binlog_expire,
            "seafbackup_ini_value": seafbackup_ini_value,
        }

"""Filters that expose the flavour table (module_utils/seafbackup_flavour.py) and small helpers to the roles."""

from __future__ import annotations

import configparser
import datetime
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


def seafbackup_libraries_behind(status, names=None):
    """seafbackup_status's result -> every library not synchronized: [{repo_id, name, state, reason}].

    `names` is the rows of ``SELECT repo_id, name FROM RepoInfo`` (a list of dicts); unknown names are ``?``.
    """
    known = {row["repo_id"]: row["name"] for row in names or []}
    behind = [{"repo_id": lib["repo_id"], "state": "failed", "reason": lib.get("reason", "")}
              for lib in status.get("failed_libraries", [])]
    behind += [{"repo_id": repo_id, "state": state, "reason": ""}
               for state in ("syncing", "waiting") for repo_id in status.get(f"{state}_libraries", [])]
    for lib in behind:
        lib["name"] = known.get(lib["repo_id"], "?")
    return behind


def seafbackup_library_line(lib):
    """One library behind, for people: ``<id> (<name>): failed: <reason>``."""
    line = f"{lib['repo_id']} ({lib.get('name', '?')}): {lib['state']}"
    return f"{line}: {lib['reason']}" if lib.get("reason") else line


def seafbackup_freshness_line(freshness):
    """What the backup can prove, for people: current as of when, and the window nobody can know about."""
    current = freshness.get("current_as_of")
    if not current:
        return ("Freshness: the backup has no evidence from the primary's agent; which head moves it lacks "
                "cannot be known")
    when = datetime.datetime.fromtimestamp(current).strftime("%Y-%m-%d %H:%M:%S")
    line = (f"Freshness: the backup holds every library at least as new as the primary had it at {when} "
            f"(RPO bound {freshness.get('rpo_bound_seconds', 0):.0f} s); head moves on the old primary after that "
            "cannot be known")
    if freshness.get("state") not in (None, "ok") and freshness.get("reason"):
        line += f"; pairing {freshness['state']}: {freshness['reason']}"
    return line


def seafbackup_fence_line(fence):
    """How one old primary host was fenced, for people."""
    line = f"Fenced {fence['host']}: reachable {'yes' if fence['reachable'] else 'no'}, database {fence['database']}"
    return line if fence["complete"] else line + " - NOT FENCED COMPLETELY"


def seafbackup_pair_line(item):
    """{'key': k, 'value': v} -> 'k: v'."""
    return f"{item['key']}: {item['value']}"


class FilterModule:
    def filters(self):
        return {
            "seafbackup_flavour": seafbackup_flavour,
            "seafbackup_change_source": seafbackup_change_source,
            "seafbackup_binlog_expire": seafbackup_binlog_expire,
            "seafbackup_ini_value": seafbackup_ini_value,
            "seafbackup_libraries_behind": seafbackup_libraries_behind,
            "seafbackup_library_line": seafbackup_library_line,
            "seafbackup_freshness_line": seafbackup_freshness_line,
            "seafbackup_fence_line": seafbackup_fence_line,
            "seafbackup_pair_line": seafbackup_pair_line,
        }

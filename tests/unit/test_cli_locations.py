"""seaf-backup-cmd finds seafile.conf and seafile-data as Seafile's own scripts do, with no --conf-dir."""

import os
import subprocess
import sys
from pathlib import Path

DB = "[database]\ntype = mysql\nhost = 127.0.0.1\nport = 3307\nuser = u\npassword = secret\ndb_name = seafile_db\n"


def _cmd(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("SEAFILE_CENTRAL_CONF_DIR", "SEAFILE_CONF_DIR")}
    environ.update(COLUMNS="300", NO_COLOR="1", **env)
    cmd = Path(sys.executable).parent / "seaf-backup-cmd"
    return subprocess.run([str(cmd), *args], capture_output=True, text=True, env=environ, check=False)


def test_status_reads_the_seafile_conf_of_seafile_central_conf_dir(tmp_path):
    (tmp_path / "seafile.conf").write_text(DB)
    done = _cmd("status", SEAFILE_CENTRAL_CONF_DIR=str(tmp_path))
    assert done.returncode == 2 and f"{tmp_path}/seafile.conf has no [backup] section" in done.stderr, done.stderr


def test_a_missing_seafile_conf_names_the_option_and_the_variable(tmp_path):
    done = _cmd("status", SEAFILE_CENTRAL_CONF_DIR=str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert f"{tmp_path}/nowhere/seafile.conf does not exist (pass --conf-dir, or set SEAFILE_CENTRAL_CONF_DIR" in (
        done.stderr), done.stderr


def test_the_data_dir_defaults_to_seafile_conf_dir_as_seafiles_scripts_export_it(tmp_path):
    done = _cmd("verify", "--help", SEAFILE_CONF_DIR=str(tmp_path / "seafile-data"))
    assert f"(now: {tmp_path}/seafile-data)" in " ".join(done.stdout.split()), done.stdout
    assert "(now: /opt/seafile/seafile-data)" in " ".join(_cmd("verify", "--help").stdout.split())

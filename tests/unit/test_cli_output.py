"""The CLI prints messages whole: rich markup never eats "[backup]" or any other bracketed word."""

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from seafbackup_agent.cli.output import print_error, print_text
from seafbackup_agent.transport.client import HttpSource

DB = "[database]\ntype = mysql\nhost = 127.0.0.1\nport = 3307\nuser = u\npassword = secret\ndb_name = seafile_db\n"


def _cmd(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="300", NO_COLOR="1")
    cmd = Path(sys.executable).parent / "seaf-backup-cmd"
    return subprocess.run([str(cmd), *args], capture_output=True, text=True, env=env, check=False)


def test_an_error_naming_the_backup_section_is_printed_whole(tmp_path):
    (tmp_path / "seafile.conf").write_text(DB)
    done = _cmd("status", "--conf-dir", str(tmp_path))
    assert done.returncode == 2
    assert f"error: {tmp_path}/seafile.conf has no [backup] section (run setup_backup.yml to pair the hosts)" in (
        done.stderr
    ), done.stderr


def test_the_token_mismatch_hint_keeps_its_section_name(capsys):
    error = HttpSource("http://127.0.0.1:1", "t" * 40)._auth_error("signature mismatch")
    print_error(error)
    print_text(Console(), "[bold]not bold[/bold] [backup]")
    captured = capsys.readouterr()
    assert "set the same [backup] sync_token in seafile.conf on both hosts" in captured.err
    assert "[bold]not bold[/bold] [backup]" in captured.out

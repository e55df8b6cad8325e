"""One exit-code table (seafbackup_agent.errors.ExitCode) for the CLI and the Ansible modules."""

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import seafbackup_agent
from seafbackup_agent.cli.control_client import AgentNotRunningError
from seafbackup_agent.errors import ExitCode, SeafBackupError
from seafbackup_agent.transport.errors import TransportError
from tests.ansible_files import ROOT
from tests.playbooks import run_module


def _error_classes() -> list[type[SeafBackupError]]:
    for module in pkgutil.walk_packages(seafbackup_agent.__path__, "seafbackup_agent."):
        importlib.import_module(module.name)
    found, todo = [], [SeafBackupError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_an_agent_that_is_not_running_and_an_unreachable_peer_exit_differently():
    assert AgentNotRunningError.exit_code == ExitCode.AGENT_NOT_RUNNING
    assert TransportError.exit_code == ExitCode.PEER_UNREACHABLE
    assert AgentNotRunningError.exit_code != TransportError.exit_code


def test_every_error_exits_with_a_code_of_the_table():
    codes = {cls.__qualname__: cls.exit_code for cls in _error_classes()}
    assert all(isinstance(code, ExitCode) for code in codes.values()), codes


def test_the_modules_read_the_same_table():
    link = ROOT / "module_utils/seafbackup_errors.py"
    assert link.resolve() == (ROOT / "seafbackup_agent/errors.py").resolve()
    for module in ("seafbackup_status", "seafbackup_verify"):
        source = (ROOT / "library" / f"{module}.py").read_text()
        assert "from ansible.module_utils.seafbackup_errors import ExitCode" in source


def test_seafbackup_status_says_the_agent_is_not_running_when_the_cli_exits_so(tmp_path):
    """A real seaf-backup-cmd, run by the real module through Ansible, on a host whose agent is stopped."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "seafile.conf").write_text(
        "[database]\ntype = mysql\nhost = 127.0.0.1\nport = 3306\nuser = u\npassword = p\ndb_name = seafile_db\n\n"
        f"[backup]\nprimary_url = http://127.0.0.1:1\nsync_token = {'a' * 40}\nstate_dir = {tmp_path / 'state'}\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {"backup": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    rc, result = run_module(inventory, "backup", "seafbackup_status", {
        "conf_dir": str(conf), "agent_cmd": str(Path(sys.executable).parent / "seaf-backup-cmd"),
        "replication": False})
    assert rc != 0 and result["rc"] == ExitCode.AGENT_NOT_RUNNING
    assert result["agent_running"] is False
    assert "the seafbackup agent is not running" in result["msg"]

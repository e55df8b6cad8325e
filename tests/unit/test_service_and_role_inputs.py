"""seafbackup_service through the real ansible-playbook, in command mode with the lab's service command (its
Seafile stand-ins keep their state in files, so no lab has to run); the roles' refusal of the old service
variables; roles run alone, without the role whose results they need, fail saying so.
One playbook run: the module's tasks on one host, then one play in which each other host runs one role alone
(a play whose every host fails would end the run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seafbackup_lab.lab import REPO_ROOT

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("service")
    lab_dir = tmp / "lab"
    command = f"{BIN / 'seafbackup-lab'} --lab-dir {lab_dir} service primary {{name}} {{action}}"

    def task(state, names=("seafile", "seahub"), check=False, cmd=command):
        return {"name": f"{state} {' '.join(names)}", "seafbackup_service": {"name": list(names), "state": state,
                "command": cmd}, "check_mode": check, "ignore_errors": True}

    tasks = [task("started", check=True), task("started"), task("started"), task("stopped", names=["seahub"]),
             task("restarted", names=["seafile"]), task("stopped", names=[]),
             task("started", names=["seafile"], cmd="/nonexistent/service-ctl {name} {action}")]
    alone = {"oldvar": "seafbackup", "replica": "seafbackup_mysql_replica", "fence": "seafbackup_failover_fence"}
    plays = [{"hosts": "primary", "gather_facts": False, "tasks": tasks},
             {"hosts": ":".join(alone), "gather_facts": False,
              "tasks": [{"ansible.builtin.include_role": {"name": "{{ role_alone }}"}}]}]
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {name: {**local, "role_alone": role} for name, role in alone.items() if name != "fence"}
    hosts["oldvar"]["seafbackup_seafile_service_command"] = "systemctl {action} seafile"
    (tmp / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"primary": local, **hosts}, "children": {
        "seafile_primary": {"hosts": {"fence": {**local, "role_alone": alone["fence"]}}},
        "seafile_backup": {"hosts": {"backup": local}}}}}))
    (tmp / "play.yml").write_text(yaml.safe_dump(plays, sort_keys=False))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="json",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "inventory.yml"), str(tmp / "play.yml")],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    doc = json.loads(result.stdout)
    failed = {host: " ".join(r["msg"].split()) for task in doc["plays"][1]["tasks"]
              for host, r in task["hosts"].items() if r.get("failed")}
    return {"rc": result.returncode, "host": lab_dir / "primary", "failed": failed,
            "module": [t["hosts"]["primary"] for t in doc["plays"][0]["tasks"]]}


def test_the_service_module_reads_the_state_acts_where_it_differs_and_honours_check_mode(run):
    check_start, start, again, stop_seahub, restart, nothing, missing = run["module"]
    assert check_start["changed"] and [s["actions"] for s in check_start["services"]] == [["start"], ["start"]]
    assert check_start["manager"] == "command"
    assert start["changed"] and [(s["running_before"], s["running"]) for s in start["services"]] == [
        (False, True), (False, True)]
    assert not again["changed"] and [s["actions"] for s in again["services"]] == [[], []]
    assert stop_seahub["changed"] and stop_seahub["services"] == [
        {"name": "seahub", "running_before": True, "running": False, "actions": ["stop"]}]
    assert restart["changed"] and restart["services"][0]["actions"] == ["restart"]
    assert not nothing["changed"] and nothing["services"] == []
    assert missing.get("failed") and "/nonexistent/service-ctl seafile status cannot run" in missing["msg"]
    # What the stand-ins saw: check mode ran no action, each real action exactly once.
    host = run["host"]
    assert (host / "var/log/seafile-service.log").read_text().split() == ["start", "restart"]
    assert (host / "var/log/seahub-service.log").read_text().split() == ["start", "stop"]
    assert (host / "run/seafile.state").read_text().strip() == "running"
    assert (host / "run/seahub.state").read_text().strip() == "stopped"


def test_an_inventory_still_setting_a_service_command_fails_naming_the_new_variables(run):
    assert run["rc"] != 0
    message = run["failed"]["oldvar"]
    assert message.startswith("seafbackup_seafile_service_command is no longer read")
    for name in ("seafbackup_mysql_service", "seafbackup_seafile_services", "seafbackup_agent_service",
                 "seafbackup_service_command"):
        assert name in message


def test_a_role_run_alone_says_which_role_must_run_first(run):
    for host, role, needed in (("replica", "seafbackup_mysql_replica", "seafbackup_preflight"),
                               ("fence", "seafbackup_failover_fence", "seafbackup_failover_gates")):
        message = run["failed"][host]
        assert message.startswith(f"{role} needs") and needed in message, (host, message)

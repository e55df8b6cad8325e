#!/usr/bin/python
"""Ansible module: start, stop or restart services, through systemd or a host's own service command."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_service
short_description: Start, stop or restart services through systemd, or through a command on hosts without it
description:
  - The one way the seafbackup roles control services (the database server, Seafile's services, the sync agent).
  - Reads each service's current state first and acts only where it differs from O(state); C(changed) says whether
    anything was (or, in check mode, would be) started, stopped, restarted, enabled or disabled.
  - With systemd (the default, O(command) empty) it runs C(systemctl is-active), C(start), C(stop), C(restart),
    and for O(enabled) C(systemctl is-enabled), C(enable), C(disable).
  - On hosts without systemd, O(command) is a command template run once per service and action, with C({name})
    replaced by the service's name and C({action}) by C(status), C(start), C(stop) or C(restart). Its C(status)
    exits 0 when the service runs and non-zero (LSB says 3) when it does not, as C(service NAME status) does.
version_added: "0.1.0"
author: seafbackup developers
options:
  name:
    description: The services, acted on in this order. An empty list does nothing.
    type: list
    elements: str
    required: true
    aliases: [names]
  state:
    description:
      - V(started) starts the services that are not running, V(stopped) stops those that are, V(restarted)
        restarts every one (always a change). Omitted, the running state is left alone.
    type: str
    choices: [started, stopped, restarted]
  enabled:
    description:
      - Whether the services start at boot (systemd only; ignored with O(command), which knows no boot).
    type: bool
  daemon_reload:
    description: Run C(systemctl daemon-reload) first, so that changed unit files are read (systemd only).
    type: bool
    default: false
  command:
    description:
      - Command template for hosts without systemd, with C({name}) and C({action}); empty to use systemd.
      - Split like a shell would split it, but run without a shell.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    description: Reads the state (C(status) or C(is-active)), runs no action, and reports what it would do.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Restart the database server
  seafbackup_service:
    name: mariadb
    state: restarted

- name: Stop Seafile
  seafbackup_service:
    name: [seafile, seahub]
    state: stopped

- name: Start the sync agent, also at boot, after its unit file changed
  seafbackup_service:
    name: seafbackup-agent
    state: started
    enabled: true
    daemon_reload: true

- name: The same on a host without systemd, through its own service command
  seafbackup_service:
    name: seafbackup-agent
    state: started
    command: /usr/local/sbin/service-ctl {name} {action}
"""

RETURN = r"""
services:
  description: Per service, in the order given, its state before and after and what was (or would be) run.
  returned: always
  type: list
  elements: dict
  sample:
    - {"name": "seafile", "running_before": true, "running": false, "actions": ["stop"]}
    - {"name": "seahub", "running_before": false, "running": false, "actions": []}
manager:
  description: C(systemd), or C(command) when O(command) is set.
  returned: always
  type: str
  sample: systemd
"""

import shlex

from ansible.module_utils.basic import AnsibleModule

LSB_NOT_RUNNING = 3
NOT_FOUND = (126, 127)


class Services:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.template = module.params["command"]
        self.systemctl = None if self.template else module.get_bin_path("systemctl", required=True)

    def _argv(self, name: str, action: str) -> list[str]:
        if self.systemctl:
            return [self.systemctl, action, "--", name] if action != "daemon-reload" else [self.systemctl, action]
        return [part.replace("{name}", name).replace("{action}", action) for part in shlex.split(self.template)]

    def _run(self, name: str, action: str) -> tuple[int, str, str]:
        argv = self._argv(name, action)
        try:
            rc, out, err = self.module.run_command(argv, handle_exceptions=False)
        except OSError as exc:
            self.module.fail_json(msg=f"{shlex.join(argv)} cannot run: {exc}")
        if rc in NOT_FOUND or (rc != 0 and action not in ("status", "is-active", "is-enabled")):
            self.module.fail_json(msg=f"{shlex.join(argv)} failed (exit {rc}): {(err or out).strip()}",
                                  rc=rc, stdout=out, stderr=err)
        return rc, out, err

    def running(self, name: str) -> bool:
        rc, _, _ = self._run(name, "is-active" if self.systemctl else "status")
        return rc == 0

    def enabled(self, name: str) -> bool:
        rc, out, _ = self._run(name, "is-enabled")
        return rc == 0 and out.strip() not in ("static", "indirect", "generated", "transient")

    def act(self, name: str, action: str) -> None:
        self._run(name, action)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True, "aliases": ["names"]},
            "state": {"type": "str", "choices": ["started", "stopped", "restarted"]},
            "enabled": {"type": "bool"},
            "daemon_reload": {"type": "bool", "default": False},
            "command": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    names = [n for n in p["name"] if n]
    if "{name}" not in p["command"] and p["command"] and len(names) > 1:
        module.fail_json(msg=f"command {p['command']!r} has no {{name}}: it cannot tell {', '.join(names)} apart")
    services = Services(module)
    manager = "command" if p["command"] else "systemd"
    result: list[dict] = []
    changed = False
    if names and p["daemon_reload"] and services.systemctl and not module.check_mode:
        services.act("", "daemon-reload")
    for name in names:
        before = services.running(name)
        actions = []
        if p["state"] == "started" and not before:
            actions.append("start")
        elif p["state"] == "stopped" and before:
            actions.append("stop")
        elif p["state"] == "restarted":
            actions.append("restart")
        if p["enabled"] is not None and services.systemctl and services.enabled(name) != p["enabled"]:
            actions.append("enable" if p["enabled"] else "disable")
        if not module.check_mode:
            for action in actions:
                services.act(name, action)
        after = {"start": True, "restart": True, "stop": False}
        running = next((after[a] for a in actions if a in after), before)
        result.append({"name": name, "running_before": before, "running": running, "actions": actions})
        changed = changed or bool(actions)
    module.exit_json(changed=changed, services=result, manager=manager)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: prove that the backup can restore each library (`seaf-backup-cmd verify`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_verify
short_description: Prove that a seafbackup backup can restore each library
description:
  - Runs C(seaf-backup-cmd verify --json) on the backup and returns its verdict for each library.
  - The verify walks each library's whole closure on the backup (every commit of the kept history, every fs
    object, every block - present, and its content matching its id) and compares the library's head with the
    primary's (over the signed API), with a local installation, or not at all (O(compare)).
  - Fails when a library's verdict is not C(ok) (C(behind), C(missing) objects or C(corrupt) objects), naming
    each such library and the first ids of what is missing or corrupt; O(fail_on_behind=false) lets libraries
    that are only behind the primary pass (a busy primary moves on while the check runs).
  - Reads the whole store (about a minute per million objects, plus its bytes at disk speed) unless
    O(sample) is below 1; a module of its own rather than an option of M(seafbackup_status), which only reads
    the agent's state and is cheap enough to poll and gate on.
  - Never changes anything.
version_added: "0.1.0"
author: seafbackup developers
options:
  conf_dir:
    description: Seafile's conf directory on the backup (the one holding seafile.conf with C([backup])).
    type: path
    default: /opt/seafile/conf
  data_dir:
    description: Seafile's data directory on the backup (the one holding C(storage/)).
    type: path
    default: /opt/seafile/seafile-data
  agent_cmd:
    description: Path of C(seaf-backup-cmd) on the backup host.
    type: path
    default: /opt/seafbackup/venv/bin/seaf-backup-cmd
  libraries:
    description: Ids of the libraries to verify; by default every library of the backup and of the primary.
    type: list
    elements: str
    default: []
  sample:
    description:
      - Fraction of the blocks to read (0 < O(sample) <= 1); every commit and fs object is always read and every
        block's presence always checked. C(0.05) reads 5 % of the block bytes.
    type: float
    default: 1.0
  compare:
    description:
      - C(primary) compares each head with the primary's over the signed API (C([backup] primary_url)),
        C(local) with the installation at O(source_conf_dir) and O(source_data_dir), C(none) checks the backup
        alone.
    type: str
    choices: [primary, local, none]
    default: primary
  source_conf_dir:
    description: Conf directory of the installation to compare with when O(compare=local).
    type: path
  source_data_dir:
    description: Data directory of the installation to compare with when O(compare=local).
    type: path
  fail_on_behind:
    description: Fail when a library is behind the primary (or not yet on the backup, or deleted on the primary).
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
notes:
  - Run it on the backup, where the store and the C([backup]) section are.
"""

EXAMPLES = r"""
- name: Weekly, a sampled check of every library (5 % of the block bytes)
  seafbackup_verify:
    sample: 0.05
  register: verified

- name: A full check of two libraries, tolerating a primary that moved on meanwhile
  seafbackup_verify:
    libraries:
      - 3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2
      - 7c1e2a90-4b3f-4e8a-9d2c-5b6a7e8f9012
    fail_on_behind: false

- name: Check a restored copy alone, without any primary
  seafbackup_verify:
    conf_dir: /srv/restore/conf
    data_dir: /srv/restore/seafile-data
    compare: none
"""

RETURN = r"""
verdict:
  description: The worst verdict of all libraries - C(ok), C(behind), C(missing) or C(corrupt).
  returned: always
  type: str
  sample: ok
counts:
  description: Libraries per verdict.
  returned: always
  type: dict
  sample: {"ok": 41, "behind": 1, "missing": 0, "corrupt": 0}
libraries:
  description:
    - One entry per library, from C(seaf-backup-cmd verify --json).
    - C(head) is the backup's head (null when the backup does not have the library), C(primary_head) the one it
      was compared with (null when the primary does not have it or when O(compare=none)).
    - C(closure) counts what the walk read and lists the first missing and corrupt objects (null when the
      backup does not have the library).
  returned: always
  type: list
  elements: dict
  sample: [{"repo_id": "3f0d5f5e-0a57-4c43-8d1e-6a31b6e0b6a2", "verdict": "missing", "head": "0123...",
            "primary_head": "0123...", "compared": true, "seconds": 0.4,
            "closure": {"commits": 3, "fs_objects": 52, "blocks": 47, "blocks_read": 47, "bytes_read": 262144,
                        "missing": 1, "corrupt": 0,
                        "first_missing": [{"kind": "block", "obj_id": "89ab...", "reason": "missing"}],
                        "first_corrupt": []}}]
not_ok:
  description: The libraries whose verdict is not C(ok), with their verdict and first bad ids, one line each.
  returned: always
  type: list
  elements: str
exit_code:
  description:
    - The exit code of C(seaf-backup-cmd verify) (0 ok, 5 behind, 6 missing, 7 corrupt).
    - Not called C(rc), which Ansible reads as a failure when it is not 0.
  returned: always
  type: int
  sample: 0
"""

import json

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.seafbackup_errors import ExitCode

VERDICTS = ("ok", "behind", "missing", "corrupt")
REPORT_CODES = (ExitCode.OK, ExitCode.BEHIND, ExitCode.MISSING_OBJECTS, ExitCode.CORRUPT_OBJECTS)
"""`seaf-backup-cmd verify --json` prints its reports with these exit codes (by the worst verdict)."""


def verify_command(p):
    cmd = [p["agent_cmd"], "verify", "--json", "--conf-dir", p["conf_dir"], "--data-dir", p["data_dir"],
           "--sample", str(p["sample"])]
    if p["compare"] == "none":
        cmd.append("--no-compare")
    elif p["compare"] == "local":
        cmd += ["--source-conf-dir", p["source_conf_dir"], "--source-data-dir", p["source_data_dir"]]
    return cmd + list(p["libraries"])


def not_ok_line(report):
    line = f"{report['repo_id']}: {report['verdict']}"
    if report["verdict"] == "behind":
        line += f" (backup at {report['head']}, primary at {report['primary_head']})"
    closure = report.get("closure") or {}
    bad = [f"missing {b['kind']} {b['obj_id']}" for b in closure.get("first_missing", [])]
    bad += [f"corrupt {b['kind']} {b['obj_id']}" for b in closure.get("first_corrupt", [])]
    if bad:
        line += f" ({closure['missing']} missing, {closure['corrupt']} corrupt; first: {', '.join(bad[:3])})"
    return line


def main():
    module = AnsibleModule(
        argument_spec={
            "conf_dir": {"type": "path", "default": "/opt/seafile/conf"},
            "data_dir": {"type": "path", "default": "/opt/seafile/seafile-data"},
            "agent_cmd": {"type": "path", "default": "/opt/seafbackup/venv/bin/seaf-backup-cmd"},
            "libraries": {"type": "list", "elements": "str", "default": []},
            "sample": {"type": "float", "default": 1.0},
            "compare": {"type": "str", "choices": ["primary", "local", "none"], "default": "primary"},
            "source_conf_dir": {"type": "path"},
            "source_data_dir": {"type": "path"},
            "fail_on_behind": {"type": "bool", "default": True},
        },
        required_if=[("compare", "local", ("source_conf_dir", "source_data_dir"))],
        supports_check_mode=True,
    )
    p = module.params
    if not 0 < p["sample"] <= 1:
        module.fail_json(msg=f"sample must be above 0 and at most 1, not {p['sample']}")
    rc, out, err = module.run_command(verify_command(p))
    if rc not in REPORT_CODES or not out.strip():
        module.fail_json(msg="seaf-backup-cmd verify failed: " + (err.strip() or out.strip()), rc=rc)
    reports = json.loads(out)
    counts = {verdict: sum(r["verdict"] == verdict for r in reports) for verdict in VERDICTS}
    worst = max((r["verdict"] for r in reports), key=VERDICTS.index, default="ok")
    not_ok = [not_ok_line(r) for r in reports if r["verdict"] != "ok"]
    result = {"changed": False, "verdict": worst, "counts": counts, "libraries": reports, "not_ok": not_ok,
              "exit_code": rc}
    failing = [r for r in reports if r["verdict"] not in ("ok", *(() if p["fail_on_behind"] else ("behind",)))]
    if failing:
        module.fail_json(msg=f"{len(failing)} of {len(reports)} libraries failed verification: "
                             + "; ".join(not_ok_line(r) for r in failing), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

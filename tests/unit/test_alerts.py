"""The shipped Prometheus alert rules: valid (`promtool check rules`), firing when they should and not otherwise
(`promtool test rules`), and written against metric names the agents really export."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from seafbackup_agent.service.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "roles/seafbackup_agent/files/seafbackup-alerts.rules.yml"
RULE_TESTS = ROOT / "tests/prometheus/seafbackup-alerts.test.yml"


def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS: 5 rules found" in result.stdout, result.stdout + result.stderr


def test_the_rules_fire_as_their_unit_tests_say():
    result = subprocess.run(["promtool", "test", "rules", RULE_TESTS.name], capture_output=True, text=True,
                            cwd=RULE_TESTS.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_metric_in_the_rules_is_exported_by_an_agent():
    exported = set()
    for backup in (True, False):
        text = generate_latest(AgentMetrics(backup=backup).registry).decode()
        exported |= set(re.findall(r"^# TYPE (\w+) ", text, flags=re.M))
    used = set(re.findall(r"\b(seafbackup_\w+)", "\n".join(
        line for line in RULES.read_text().splitlines() if line.strip().startswith("expr:"))))
    assert used and used <= exported, used - exported

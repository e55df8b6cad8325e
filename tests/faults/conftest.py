"""Fixtures of the fault tests: the lab's agents run as real processes (as in tests/integration/test_agent.py)."""

from __future__ import annotations

import signal

import pytest

from seafbackup_lab.lab import unpair_agents
from tests.integration.test_agent import Agents


@pytest.fixture
def agents(lab, backup_db_privileges, tmp_path):
    a = Agents(lab, tmp_path)
    yield a
    for name in list(a.procs):
        a.stop(name, signal.SIGKILL)
    unpair_agents(lab)

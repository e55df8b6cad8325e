"""Fixtures of the fault tests: the lab's agents run as real processes (as in tests/integration/test_agent.py)."""

from __future__ import annotations

import pytest

from tests.integration.test_agent import Agents


@pytest.fixture
def agents(lab, backup_db_privileges, tmp_path):
    with Agents(lab, tmp_path) as a:
        yield a

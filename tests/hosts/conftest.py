"""The hosts lab for the end-to-end story: two Debian containers booting systemd, set up from scratch once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from seafbackup_lab.hosts import HostsLab
from tests.helpers import TEST_TMP


@pytest.fixture(scope="session")
def story_timings() -> dict[str, float]:
    """Seconds per step of the story, printed by its last test."""
    return {}


@pytest.fixture(scope="session")
def hosts_lab(story_timings: dict[str, float]) -> Iterator[HostsLab]:
    """Fresh containers (the root image comes from the cache, or is built first: a cold start)."""
    lab = HostsLab(TEST_TMP / "seafbackup-hosts-lab")
    lab.down(remove=True)
    start = time.monotonic()
    try:
        steps = lab.up()
        story_timings.update({f"lab {k}": v for k, v in steps.items()})
        story_timings["lab up"] = time.monotonic() - start
        yield lab
    finally:
        lab.down(remove=True)

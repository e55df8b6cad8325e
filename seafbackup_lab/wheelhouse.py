"""The agent's dependencies as wheels on this machine, at the versions of constraints.txt, for the lab's playbook runs.

The seafbackup_agent role installs the agent's wheel with its dependencies on each host with pip. Against an index,
that costs about 10 CPU-seconds a host more than against a directory of wheels (pip reads the index's page of every
dependency; botocore's lists thousands of files), plus the network's latency, and the test suite installs the agent
on fresh hosts many times. The tests' playbook runs set `PIP_NO_INDEX` and `PIP_FIND_LINKS` to this directory
(`pip_environment`), which the role's pip tasks inherit over the local connection: the role's tasks are the same.
The directory is built once per content of constraints.txt and pyproject.toml, under a lock (parallel test workers
wait for the first build and then use it)."""

from __future__ import annotations

import fcntl
import hashlib
import sys
from pathlib import Path

from seafbackup_lab.cached_builds import cached_build, run_logged
from seafbackup_lab.lab import REPO_ROOT

DEFAULT_CACHE = REPO_ROOT / ".venv" / "wheelhouse"


def _inputs_hash() -> str:
    digest = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml"):
        digest.update((REPO_ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def agent_wheelhouse(cache: Path = DEFAULT_CACHE) -> Path:
    """The directory of the agent's pinned dependencies (not the agent itself), built first when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    name = f"wheels-{_inputs_hash()}"
    with (cache / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with cached_build(cache, name) as (work, log):
            if work is not None:
                run_logged([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-build-isolation", "-w", str(work),
                            "-c", str(REPO_ROOT / "constraints.txt"), str(REPO_ROOT)], log=log, timeout=600)
                for own in work.glob("seafbackup-*.whl"):  # the role installs the wheel it builds itself
                    own.unlink()
    return cache / name


def pip_environment(cache: Path = DEFAULT_CACHE) -> dict[str, str]:
    """What makes pip install from `agent_wheelhouse()` only."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(agent_wheelhouse(cache))}

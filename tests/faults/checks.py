"""What the fault tests check on the backup after each fault: every published head restorable, no stray files."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from seafbackup_agent.seafile.ids import is_object_file_name
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_agent.seafile.staging import STAGING_DIR, staging_files
from seafbackup_agent.sync.verify import check_library
from tests.helpers import root_sql


def published_heads(lab) -> dict[str, str]:
    return dict(root_sql(lab.backup, "SELECT repo_id, commit_id FROM seafile_db.Branch WHERE name='master'"))


def assert_published_heads_restorable(lab, *, skip: set[tuple[str, str]] = frozenset()) -> dict[str, str]:
    """Every library with a head on the backup (but the (library, head) pairs in `skip`) has that head's
    whole closure there, each object verified."""
    heads = published_heads(lab)
    # On object storage: presence asked of the store itself, as `verify` does, not of the agent's index.
    installation = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir, index=False)
    try:
        for repo_id, head in heads.items():
            if (repo_id, head) in skip:
                continue
            report = check_library(installation, repo_id)
            assert report is not None and report.head == head
            assert report.ok, (f"{repo_id} at {head}: missing {report.first_missing[:3]}, "
                               f"corrupt {report.first_corrupt[:3]}")
    finally:
        installation.close()
    return heads


@dataclass(frozen=True)
class Leftovers:
    staged: list[Path]
    """Temporary files in staging directories."""
    owners: dict[str, int]
    """Staging directories (of processes that staged something and were not swept yet) and their files."""
    strays: list[Path]
    """Anything else in the store that is not an object at its place (e.g. `.<id>.<random>.tmp`)."""

    @property
    def staged_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.staged)


def leftovers(data_dir: Path) -> Leftovers:
    root = data_dir / "storage"
    staged = staging_files(root)
    base = root / STAGING_DIR
    owners = {p.name: sum(1 for f in staged if f.parent == p) for p in base.glob("*") if p.is_dir()}
    strays = []
    for directory, subdirs, files in os.walk(root):
        if STAGING_DIR in subdirs:
            subdirs.remove(STAGING_DIR)
        parts = Path(directory).relative_to(root).parts
        in_place = len(parts) == 3 and parts[0] in ("commits", "fs", "blocks") and len(parts[2]) == 2
        strays += [Path(directory, f) for f in files if not (in_place and is_object_file_name(f))]
    return Leftovers(staged, owners, strays)


def wait_failed(agents, repo: str, timeout: float = 60) -> dict:
    """The library's entry of `status --json` once it is failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lib = next((lib for lib in agents.status()["libraries"] if lib["repo_id"] == repo), None)
        if lib and lib["state"] == "failed":
            return lib
        time.sleep(0.1)
    raise AssertionError(f"{repo} did not fail: {agents.log('backup')[-2000:]}")

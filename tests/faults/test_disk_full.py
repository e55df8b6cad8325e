"""The backup's disk fills up mid-copy: the library fails with a reason naming the path, the filesystem and
its free space, nothing is left behind, and once space is freed the next sync completes."""

from __future__ import annotations

import os
import subprocess

import pytest

from seafbackup_lab.writer import Put
from tests.faults.checks import assert_published_heads_restorable, leftovers, wait_failed
from tests.seafile_checks import head_files


@pytest.fixture
def small_backup_disk(lab):
    """The backup's seafile-data on a 50 MiB tmpfs of its own, unmounted afterwards."""
    data = lab.backup.seafile_data_dir
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m,mode=755", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        if subprocess.run(["umount", str(data)]).returncode != 0:
            subprocess.run(["umount", "-l", str(data)], check=True)


def test_full_disk_is_reported_with_its_filesystem_and_nothing_is_left_behind(primary, lab, small_backup_disk, agents):
    repo = primary.create_library("big", "alice@example.com")
    primary.commit(repo, [Put(f"d{i % 4}/f{i:03d}.bin", os.urandom(256 * 1024)) for i in range(160)])  # 40 MiB
    filler = small_backup_disk / "filler"
    filler.write_bytes(b"\0" * (30 << 20))  # 20 MiB left
    agents.start("primary")
    agents.start("backup")

    reason = wait_failed(agents, repo)["reason"]
    print(f"\nreason: {reason}")
    assert reason.startswith(f"library {repo}: writing {small_backup_disk}/storage/")
    assert "No space left on device" in reason
    assert f"the filesystem {small_backup_disk} (tmpfs on tmpfs) has " in reason and " free of 50.0 MiB" in reason
    assert f"free space on {small_backup_disk}" in reason
    log = agents.log("backup")
    assert "unexpected error" not in log and "Traceback" not in log
    left = leftovers(small_backup_disk)
    assert left.staged == [] and left.strays == [], "temporary files left after the failed sync"

    filler.unlink()
    result = agents.cmd("sync", repo)
    assert "synchronized" in result.stdout
    assert_published_heads_restorable(lab)
    assert head_files(small_backup_disk, repo, repo, primary.head(repo)) == head_files(
        lab.primary.seafile_data_dir, repo, repo, primary.head(repo))
    left = leftovers(small_backup_disk)
    assert left.staged == [] and left.strays == []

"""Slow builds kept in a cache directory by the hash of what they are made of (the hosts lab's images, the tests'
wheelhouse), and commands whose output goes to a build's log."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from seafbackup_lab.mariadb import LabError


def run_logged(cmd: list[str], *, log: Path | None = None, timeout: float = 1800) -> None:
    if log is None:
        subprocess.run(cmd, check=True, timeout=timeout)
        return
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if result.returncode:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise LabError(f"{cmd[0]} failed (exit {result.returncode}); {log}:\n{tail}")


@contextlib.contextmanager
def cached_build(cache: Path, name: str) -> Iterator[tuple[Path | None, Path]]:
    """Yields (None, _) when `cache/name` is ready, else (a work directory to fill, a log); the work directory
    becomes `cache/name` when the block succeeds. Older builds of the same kind are deleted."""
    final = cache / name
    if (final / "ready").exists():
        yield None, final
        return
    work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=cache))
    log = cache / f"{name}.log"
    log.write_text("")
    try:
        yield work, log
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        (final / "ready").write_text(json.dumps({"built": time.time()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    kind = name.split("-")[0]
    for old in cache.glob(f"{kind}-*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)

"""Labs started all at once beside a busy disk, as on a shared machine busy with other work (issue 16).

`python -m seafbackup_lab.stress labs DIR ADDRESS...` brings up one lab per pair of addresses at once, prints
how long each took or why it did not come up, and stops them; `python -m seafbackup_lab.stress busy-disk DIR`
keeps a disk busy (files written, fsynced and deleted) until it is stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from seafbackup_lab.lab import Lab, new_lab_dir
from seafbackup_lab.mariadb import LabError


@dataclass(frozen=True, slots=True)
class LabStart:
    """How one of the labs started at once came up: after `seconds`, or not, with the reason in `error`."""

    lab: Lab
    seconds: float
    error: str | None


def start_labs_at_once(labs: list[Lab]) -> list[LabStart]:
    def start(lab: Lab) -> LabStart:
        began = time.monotonic()
        try:
            lab.up()
        except LabError as exc:
            return LabStart(lab, time.monotonic() - began, str(exc))
        return LabStart(lab, time.monotonic() - began, None)

    with ThreadPoolExecutor(len(labs)) as pool:
        return list(pool.map(start, labs))


def write_busily(directory: Path) -> None:
    """Until stopped: write 2000 small files and a 64 MiB file, fsync it, delete them all, again."""
    block = os.urandom(1 << 20)
    for n in range(sys.maxsize):
        batch = directory / f"batch-{n}"
        batch.mkdir()
        for i in range(2000):
            (batch / f"small-{i}").write_bytes(block[:4096])
        with open(batch / "big", "wb") as fh:
            for _ in range(64):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        shutil.rmtree(batch)


@contextlib.contextmanager
def busy_disk(parent: Path) -> Iterator[None]:
    """A process writing busily in a directory of its own under `parent` while the block runs."""
    directory = Path(tempfile.mkdtemp(prefix="seafbackup-busy-disk-", dir=parent))
    proc = subprocess.Popen([sys.executable, "-m", "seafbackup_lab.stress", "busy-disk", str(directory)],
                            stdin=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _labs(args: argparse.Namespace) -> int:
    addresses = args.addresses
    if len(addresses) % 2:
        print("give two addresses per lab (primary, backup)", file=sys.stderr)
        return 2
    labs = []
    for n in range(0, len(addresses), 2):
        lab_dir = new_lab_dir(args.dir, "seafbackup-stress-lab-")
        labs.append(Lab(lab_dir, {"primary": addresses[n], "backup": addresses[n + 1]}))
    try:
        with busy_disk(args.dir) if args.busy_disk else contextlib.nullcontext():
            results = start_labs_at_once(labs)
    finally:
        for lab in labs:
            lab.down()
            shutil.rmtree(lab.dir, ignore_errors=True)
    for result in results:
        state = f"up in {result.seconds:.1f}s" if result.error is None else f"NOT UP after {result.seconds:.1f}s"
        print(f"lab {result.lab.addresses['primary']}/{result.lab.addresses['backup']}: {state}")
        if result.error:
            print(result.error)
    return 0 if all(result.error is None for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seafbackup_lab.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    labs = sub.add_parser("labs", help="bring up one lab per pair of addresses, all at once")
    labs.add_argument("dir", type=Path, help="where the labs' directories go (traversable by the mysql user)")
    labs.add_argument("addresses", nargs="+", help="primary and backup address of each lab")
    labs.add_argument("--busy-disk", action="store_true", help="keep the disk busy meanwhile")
    disk = sub.add_parser("busy-disk", help="write, fsync and delete files in DIR until stopped")
    disk.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "busy-disk":
        write_busily(args.dir)
        return 0
    return _labs(args)


if __name__ == "__main__":
    sys.exit(main())

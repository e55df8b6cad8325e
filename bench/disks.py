"""A disk of its own for each bench host: a journaled ext4 image on a loop device, mounted at the host's root.

A real primary and a real backup each write to their own disk, formatted the usual way (ext4 with its journal).
This machine's root filesystem is neither: both hosts, both databases and the writer would share it, so the
backup's `syncfs` would write back the primary's data too, and it has no journal, so ext4 scans recently deleted
inodes on every file it creates (bench/findings.md: `cp -a` + `sync` of the same tree 3-8x slower there than on
an image, and erratic). Where the bench may not mount (not root, no loop devices), it says so and runs on the
directory it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_GIB = 48
"""Sparse: only what is written takes space. The full incremental case keeps 1M objects on each host."""
BYTES_PER_INODE = 8192


@dataclass
class HostDisks:
    mounts: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    why_not: str | None = None
    """Set when the hosts share the directory's filesystem instead."""

    @classmethod
    def attach(cls, lab_dir: Path, hosts: tuple[str, ...]) -> HostDisks:
        disks = cls()
        if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
            disks.why_not = "not root, or no mkfs.ext4"
            return disks
        try:
            for name in hosts:
                image = lab_dir / f"{name}-disk.img"
                mount = lab_dir / name
                mount.mkdir(parents=True, exist_ok=True)
                with open(image, "wb") as fh:
                    fh.truncate(IMAGE_GIB << 30)
                disks.images.append(image)
                # Direct I/O: the loop device writes to the image file without caching it again in the page cache
                # of the disk below, as a disk of its own would. Buffered, every block was copied twice and the
                # image's dirty pages were written back whenever that cache chose, into the next measurement.
                device = subprocess.run(["losetup", "--direct-io=on", "--find", "--show", str(image)], check=True,
                                        capture_output=True, text=True).stdout.strip()
                disks.devices.append(device)
                _run("mkfs.ext4", "-q", "-F", "-i", str(BYTES_PER_INODE), "-E", "lazy_itable_init=1", device)
                # noinit_itable: no background zeroing of inode tables writing beside the measurements.
                _run("mount", "-o", "noinit_itable", device, str(mount))
                disks.mounts.append(mount)
        except (OSError, subprocess.CalledProcessError) as exc:
            disks.detach()
            return cls(why_not=f"cannot mount a loop image here ({exc})")
        return disks

    def describe(self, lab_dir: Path) -> str:
        if self.why_not is not None:
            return f"both hosts on the filesystem of {lab_dir} ({self.why_not})"
        return (f"each host on a disk of its own: an ext4 image with its journal ({IMAGE_GIB} GiB sparse, "
                f"mkfs.ext4 defaults, one inode per {BYTES_PER_INODE} bytes) on a loop device with direct I/O, "
                "on that disk")

    def detach(self) -> None:
        """Unmount and delete the images (deleting a million small files one by one took minutes)."""
        for mount in reversed(self.mounts):
            if subprocess.run(["umount", str(mount)], check=False, capture_output=True).returncode != 0:
                # Still in use (a process the bench did not stop): detached now, released when it lets go.
                subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        self.mounts.clear()
        for device in self.devices:
            # After a lazy unmount the device is released once the filesystem is: autoclear frees it then.
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        self.devices.clear()
        for image in self.images:
            image.unlink(missing_ok=True)
        self.images.clear()


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)

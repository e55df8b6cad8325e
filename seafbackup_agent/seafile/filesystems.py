"""What a failed write says about where it went: the filesystem holding a path and its free space."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from seafbackup_agent.errors import StorageError


@dataclass(frozen=True, slots=True)
class FilesystemInfo:
    mount_point: str
    fs_type: str
    source: str
    free: int
    """Bytes available to unprivileged writers."""
    size: int


def filesystem_of(path: str | os.PathLike[str]) -> FilesystemInfo:
    """The mounted filesystem holding `path` (or its nearest existing parent)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    mount_point = os.path.realpath(existing)
    while not os.path.ismount(mount_point):
        mount_point = os.path.dirname(mount_point)
    fs_type = source = "?"
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and _unescape(fields[1]) == mount_point:
                    source, fs_type = fields[0], fields[2]  # the last mount on a point is the visible one
    except OSError:
        pass
    st = os.statvfs(existing)
    return FilesystemInfo(mount_point, fs_type, source, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def _unescape(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def storage_error(exc: OSError, path: str, action: str) -> StorageError:
    """`exc` from `action` on `path` as an error an admin can act on: which path, which filesystem, and
    for a full disk or quota how much space is left."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    where = f"{action} {path} failed: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        info = filesystem_of(path)
        return StorageError(
            f"{where}; the filesystem {info.mount_point} ({info.fs_type} on {info.source}) has "
            f"{format_bytes(info.free)} free of {format_bytes(info.size)}",
            hint=f"free space on {info.mount_point} or grow it; the next sync resumes where this one stopped",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(where, hint="the agent must be able to write seafile-data/storage (check its owner, "
                                        "mode and mount options)")
    return StorageError(where, hint="check the disk and the kernel log (dmesg) for I/O errors")

"""The machine a run happened on: CPU, cores, RAM, disk, kernel, versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
    except FileNotFoundError:
        return "not installed"
    return out.splitlines()[0] if out else ""


def describe(lab_dir: Path, mariadb_version: str) -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(fh.readline().split()[1])
    df = subprocess.run(["df", "-h", "--output=source,fstype,size,avail", str(lab_dir)], capture_output=True,
                        text=True).stdout.strip().splitlines()[-1].split()
    device = os.path.basename(df[0])
    rotational = Path(f"/sys/block/{device}/queue/rotational")
    kind = {"0": "non-rotational", "1": "rotational"}.get(rotational.read_text().strip(), "?") if rotational.exists() \
        else "?"
    repo = Path(__file__).resolve().parents[1]
    return {
        "CPU": cpu,
        "cores (online)": str(os.cpu_count()),
        "RAM": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "disk": f"{df[0]} ({df[1]}, {kind}), {df[2]} size, {df[3]} free",
        "kernel": platform.release(),
        "OS": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "Python": platform.python_version(),
        "MariaDB": mariadb_version,
        "rsync": _first_line(["rsync", "--version"]),
        "cp": _first_line(["cp", "--version"]),
        "seafbackup commit": _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
        # Other work on the machine changes every wall-clock figure; CPU per head move does not depend on it.
        "load average at start (1, 5, 15 min)": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }

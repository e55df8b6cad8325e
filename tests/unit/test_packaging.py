"""The wheel the seafbackup_agent role installs on the hosts: the agent alone, its dependencies listed once."""

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from tests.ansible_files import ROOT


def _build_wheel(out: Path) -> tuple[Path, str]:
    """Built as roles/seafbackup_agent/tasks/install.yml builds it, from the tracked files only: setuptools puts
    whatever an earlier build left in build/lib into a wheel, and other tests build in the checkout meanwhile."""
    source = out / "source"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.split():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name, follow_symlinks=False)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                           str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return next(out.glob("seafbackup-*.whl")), done.stdout + done.stderr


def test_the_wheel_holds_the_agent_only_and_builds_without_warnings(tmp_path):
    wheel, output = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert "seafbackup_agent/cli/main.py" in names
    outside = [n for n in names if not n.startswith(("seafbackup_agent/", "seafbackup-0.1.0.dist-info/"))]
    assert outside == [], outside
    assert "Warning" not in output and "deprecated" not in output, output
    dist_info = "seafbackup-0.1.0.dist-info"
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "seaf-backup-cmd = seafbackup_agent.cli.main:main" in entry_points and "seafbackup-lab" not in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata


def _runtime_dependencies() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~; \[]", spec, maxsplit=1)[0] for spec in project["dependencies"]]


def test_every_runtime_dependency_is_pinned_in_the_constraints():
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        pinned[name.strip().lower().replace("_", "-")] = version.strip()
    for name in _runtime_dependencies():
        assert pinned.get(name.lower().replace("_", "-")), f"{name} is not pinned in constraints.txt"


def test_the_role_installs_the_dependencies_from_the_wheel_under_the_constraints():
    """Named once, in pyproject.toml: the role names no Python package, it installs the wheel's requirements."""
    tasks = yaml.safe_load((ROOT / "roles/seafbackup_agent/tasks/install.yml").read_text())
    pip_tasks = [task["ansible.builtin.pip"] for task in tasks if "ansible.builtin.pip" in task]
    assert pip_tasks
    for task in pip_tasks:
        assert ".whl" in str(task["name"]) or "wheels" in str(task["name"]), task["name"]
        assert "-c " in task["extra_args"] and "constraints.txt" in task["extra_args"]
    assert any("--no-deps" not in task["extra_args"] for task in pip_tasks), "nothing installs the dependencies"
    text = (ROOT / "roles/seafbackup_agent/tasks/install.yml").read_text()
    for name in _runtime_dependencies():
        assert name not in text, f"{name} is named in the role; pyproject.toml lists it"

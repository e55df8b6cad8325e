"""Every custom module documents itself: ansible-doc renders DOCUMENTATION, EXAMPLES and RETURN."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "library").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_ansible_doc_renders_the_module(module):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", str(REPO / "library"), module],
        capture_output=True, text=True, env={"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "PATH": "/usr/bin:/bin"},
        cwd=REPO, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OPTIONS" in result.stdout and "EXAMPLES" in result.stdout and "RETURN VALUES" in result.stdout

"""The documentation stays true: the generated variable reference is current, links resolve, no development log."""

import re
import subprocess
import sys

import yaml

from tests.ansible_files import ROOT

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
OUTSIDE = re.compile("/work/" + "shared|[.][.]/" + "shared")  # spelt so that this file does not match itself


def test_the_variable_reference_is_current():
    printed = subprocess.run([sys.executable, str(ROOT / "scripts/variables_reference.py")], capture_output=True,
                             text=True, check=True).stdout
    committed = (ROOT / "docs/variables.md").read_text()
    assert printed == committed, "docs/variables.md is stale: run `make docs` and commit it"


def test_the_variable_reference_names_every_role_variable_with_its_role():
    reference = (ROOT / "docs/variables.md").read_text()
    for spec in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        role = spec.parent.parent.name
        assert f"## {role}\n" in reference
        for name in yaml.safe_load(spec.read_text())["argument_specs"]["main"].get("options", {}):
            assert f"| `{name}` |" in reference, f"{name} ({role})"


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_no_development_log_references_or_outside_paths():
    """Issue numbers mean nothing to a reader of the product; paths outside the repository are no part of it."""
    places = [ROOT / "Makefile", *DOCS, *(ROOT / "bench").rglob("*"), *(ROOT / "scripts").rglob("*")]
    found = []
    for path in places:
        if path.is_file() and path.suffix not in (".png", ".json"):
            text = path.read_text(errors="replace")
            found += [f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"\bissues? \d+\b", text)]
            found += [f"{path.relative_to(ROOT)}: {m}" for m in OUTSIDE.findall(text)]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.is_file() and not path.is_symlink() and path.suffix in (".py", ".md", ".yml", ".yaml", ".j2", ".sh"):
            text = path.read_text(errors="replace")
            found += [f"{name}: {m}" for m in OUTSIDE.findall(text)]
    assert found == []

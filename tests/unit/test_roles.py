"""Every role documents its variables: meta/argument_specs.yml keys match defaults/main.yml, role-prefixed."""

from pathlib import Path

import pytest
import yaml

ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if p.is_dir())


def _yaml(path):
    return yaml.safe_load(path.read_text()) or {}


def test_the_roles_are_there():
    assert {"seafbackup", "seafbackup_preflight", "seafbackup_mysql_primary", "seafbackup_mysql_replica",
            "seafbackup_replication_user", "seafbackup_replication_seed", "seafbackup_seafile_conf"} <= set(ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_document_exactly_the_defaults(role):
    defaults = _yaml(ROLES_DIR / role / "defaults/main.yml")
    specs = _yaml(ROLES_DIR / role / "meta/argument_specs.yml")["argument_specs"]["main"]
    options = specs.get("options", {})
    assert set(options) == set(defaults), f"{role}: argument_specs and defaults differ"
    for name, spec in options.items():
        assert spec.get("description"), f"{role}: {name} has no description"
        assert "type" in spec, f"{role}: {name} has no type"


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_carry_the_role_prefix(role):
    defaults = _yaml(ROLES_DIR / role / "defaults/main.yml")
    prefix = "seafbackup_" if role == "seafbackup" else f"{role}_"
    assert [name for name in defaults if not name.startswith(prefix)] == []


@pytest.mark.parametrize("role", ROLES)
def test_tasks_main_is_a_table_of_contents(role):
    tasks = _yaml(ROLES_DIR / role / "tasks/main.yml")
    assert tasks, role
    if role != "seafbackup":
        modules = {key for task in tasks for key in task if key not in ("name", "when", "tags")}
        assert modules <= {"ansible.builtin.include_tasks", "ansible.builtin.import_tasks", "ansible.builtin.meta"}, (
            f"{role}: {modules}")


def test_the_example_inventory_documents_every_role_variable():
    example = (ROLES_DIR.parent / "inventory/example/group_vars/all/main.yml").read_text()
    for role in ROLES:
        for name in _yaml(ROLES_DIR / role / "defaults/main.yml"):
            assert name in example, f"{name} ({role}) is not in inventory/example"

"""The committed lab inventory is what the lab renders (no lab needed: rendering starts nothing)."""

from seafbackup_lab.lab import DEFAULT_ADDRESSES, REPO_ROOT, Lab, render_inventory


def test_committed_lab_inventory_is_what_the_lab_renders():
    committed = (REPO_ROOT / "inventory/lab/hosts.yml").read_text()
    default = Lab(REPO_ROOT / ".lab-never-created", DEFAULT_ADDRESSES)
    assert committed == render_inventory(default, lab_dir_expr="{{ (inventory_dir ~ '/../../.lab') | realpath }}")

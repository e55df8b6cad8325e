"""`make demo`: a fresh lab, libraries with history on the primary, and what is where."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from seafbackup_agent.cli.output import print_text
from seafbackup_agent.seafile.installation import SeafileInstallation
from seafbackup_lab.lab import REPO_ROOT, Lab, default_lab_dir
from seafbackup_lab.writer import Delete, Put, Rename, SeafileServer


def populate(server: SeafileServer) -> list[str]:
    notes = server.create_library("Notes", "alice@example.com", desc="alice's notes")
    server.put_files(notes, {"hello.txt": b"hello, seafile\n", "todo/today.md": b"- back up everything\n"})
    server.commit(notes, [Put("todo/today.md", b"- back up everything\n- done\n")])
    server.commit(notes, [Rename("hello.txt", "greeting.txt")])

    photos = server.create_library("Photos", "bob@example.com")
    server.put_files(photos, {f"2026/img_{i:03d}.jpg": bytes([i]) * (300_000 + i) for i in range(8)},
                     modifier="bob@example.com")
    server.commit(photos, [Delete("2026/img_000.jpg")], modifier="bob@example.com")
    team = server.create_virtual_repo(photos, "2026", "Photos 2026 (shared)", "carol@example.com")

    vault = server.create_library("Vault", "alice@example.com", password="correct horse")
    server.put_files(vault, {"secrets.bin": b"\x8f" * 4096})
    return [notes, photos, team, vault]


def main() -> int:
    console = Console()
    lab = Lab(default_lab_dir())
    console.print("[bold]1. A fresh lab: two MariaDB servers and two Seafile hosts[/bold]")
    lab.reset()
    host = lab.primary
    console.print("[bold]2. Libraries with history on the primary[/bold]")
    with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir) as server:
        populate(server)
        table = Table(title=f"libraries on primary ({host.address})")
        for column in ("library", "id", "commits", "files", "store"):
            table.add_column(column)
        for repo_id in server.library_ids():
            head = server.read_commit(repo_id, server.head(repo_id))
            commits, cid = 0, head.commit_id
            while cid:
                commits += 1
                cid = server.read_commit(repo_id, cid).parent_id
            store = server.store_id(repo_id)
            files = sum(1 for _ in server.walk_files(repo_id))
            table.add_row(escape(head.repo_name), repo_id, str(commits), str(files),
                          "own" if store == repo_id else f"origin {store[:8]}")
        console.print(table)
    where = Table(title="what is where")
    where.add_column("host")
    where.add_column("MariaDB")
    where.add_column("seafile.conf / seafile-data")
    for name, h in lab.hosts.items():
        where.add_row(name, f"{h.address}:3306", f"{h.seafile_conf_dir}/seafile.conf\n{h.seafile_data_dir}")
    console.print(where)
    heading = "3. setup_backup.yml: replication of the databases and the [backup] sections"
    console.print(f"[bold]{escape(heading)}[/bold]")
    rc = run_setup_backup()
    if rc != 0:
        console.print(f"[red]setup_backup.yml failed (exit {rc})[/red]")
        return rc
    show_replication(console, lab)
    console.print("[bold]4. A change on the primary, and the backup a moment later[/bold]")
    show_a_change_arriving(console, lab)
    console.print("Ansible inventory: inventory/lab/hosts.yml  ·  stop the lab: make lab-down")
    return 0


def show_a_change_arriving(console: Console, lab: Lab) -> None:
    host = lab.primary
    with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir) as server:
        repo = next(r for r in server.library_ids() if server.read_commit(r, server.head(r)).repo_name == "Notes")
        started = time.monotonic()
        head = server.commit(repo, [Put("todo/tomorrow.md", b"- fail over, calmly\n")])
    print_text(console, f"primary: library Notes ({repo}) moved to commit {head[:12]}")
    backup = SeafileInstallation.open(lab.backup.seafile_conf_dir, lab.backup.seafile_data_dir)
    try:
        while backup.rows.head(repo) != head and time.monotonic() - started < 30:
            time.sleep(0.02)
        arrived = backup.rows.head(repo) == head
    finally:
        backup.close()
    if arrived:
        console.print(f"backup: the same head after {time.monotonic() - started:.2f} s, objects first, Branch last")
    else:
        console.print("[red]backup: the change did not arrive within 30 s[/red]")
    wrapper = lab.backup.root / "usr/local/bin/seaf-backup-cmd.sh"
    print_text(console, f"$ {wrapper.name} status   (on the backup)")
    print_text(console, subprocess.run([str(wrapper), "status"], capture_output=True, text=True).stdout)


def run_setup_backup() -> int:
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    cmd = [str(bin_dir / "ansible-playbook"), "-i", "inventory/lab/hosts.yml", "playbooks/setup_backup.yml"]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode


def show_replication(console: Console, lab: Lab) -> None:
    conn = lab.backup.mariadb.root_connection()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            names = [d[0] for d in cur.description]
            row = dict(zip(names, cur.fetchone() or (), strict=False))
    finally:
        conn.close()
    table = Table(title=f"replication on backup ({lab.backup.address}): SHOW SLAVE STATUS")
    table.add_column("field")
    table.add_column("value")
    for column in ("Master_Host", "Slave_IO_Running", "Slave_SQL_Running", "Seconds_Behind_Master", "Using_Gtid",
                   "Gtid_IO_Pos", "Last_SQL_Errno"):
        table.add_row(column, escape(str(row.get(column, ""))))
    ignored = sorted(str(row.get("Replicate_Ignore_Table", "")).split(","))
    table.add_row("Replicate_Ignore_Table", escape("\n".join(ignored)))
    console.print(table)
    sections = Table(title=escape("[backup] in seafile.conf (token masked)"))
    for column in ("host", "option", "value"):
        sections.add_column(column)
    for name, host in lab.hosts.items():
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(host.seafile_conf_dir / "seafile.conf")
        for option, value in parser.items("backup") if parser.has_section("backup") else []:
            shown = value[:4] + "…" + "*" * 8 if option == "sync_token" else value
            sections.add_row(name, option, escape(shown))
    console.print(sections)


if __name__ == "__main__":
    raise SystemExit(main())

"""`seafbackup-lab`: bring the lab up and down, control its services, write Seafile data on its hosts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from seafbackup_lab.cluster import GALERA_NODES, ClusterLab, open_lab
from seafbackup_lab.lab import Lab, default_lab_dir, render_inventory
from seafbackup_lab.mariadb import LabError
from seafbackup_lab.services import UnitService
from seafbackup_lab.sshd import LabSSH

# Ansible runs `service` once per service action of a lab playbook run (hundreds in the test suite): what only
# other commands need (rich's tables, the writer, the hosts lab, the agent's settings) is imported where used.
if TYPE_CHECKING:
    from rich.console import Console as RichConsole

    from seafbackup_lab.writer import SeafileServer


class Console:
    """rich's console, made when something is first printed (most `service` calls print nothing)."""

    def __init__(self, *, stderr: bool = False) -> None:
        self.stderr = stderr
        self._console: RichConsole | None = None

    def print(self, *objects: object) -> None:
        if self._console is None:
            from rich.console import Console as RichConsole

            self._console = RichConsole(stderr=self.stderr)
        self._console.print(*objects)


def _server(lab: Lab, host: str) -> SeafileServer:
    from seafbackup_lab.writer import SeafileServer

    h = lab.hosts[host]
    return SeafileServer(h.seafile_conf_dir, h.seafile_data_dir)


def _cmd_up(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    lab.up()
    return _cmd_status(lab, args, console)


def _cmd_down(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    lab.down()
    console.print("lab stopped")
    return 0


def _cmd_reset(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    lab.reset()
    return _cmd_status(lab, args, console)


def _cmd_status(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    status = lab.status()
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2))
        return 0
    table = Table(title=f"seafbackup lab in {lab.dir}")
    for column in ("host", "address", "MariaDB", "sync agent", "seafile.conf"):
        table.add_column(column)
    for name, info in status.items():
        pid, agent = info["mariadb_pid"], info["agent_pid"]
        table.add_row(name, str(info["address"]), f"running (pid {pid})" if pid else "stopped",
                      f"running (pid {agent})" if agent else "not running", str(info["seafile_conf"]))
    console.print(table)
    return 0


def _cmd_service(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    """Control a lab host's service as systemctl would: MariaDB, the agent's unit, or Seafile's stand-ins.
    Each service answers to its production name too (mariadb, seafile, seahub, seafbackup-agent)."""
    if args.service in ("seafile", "seahub"):
        return _seafile_service(lab, args, console)
    host = lab.hosts[args.host]
    database = args.service in ("mysql", "mariadb")
    service: object = host.mariadb if database else UnitService("seafbackup-agent", host.root)
    if database and isinstance(lab, ClusterLab) and args.host in GALERA_NODES:
        service = lab.galera(args.host)  # joins the running cluster
    if args.action == "status":
        pid = service.pid()
        console.print(f"{args.host} {args.service}: {f'running (pid {pid})' if pid else 'stopped'}")
        return 0 if pid else 3
    if args.action in ("stop", "restart"):
        service.stop()
    if args.action in ("start", "restart"):
        service.start()
    return 0


def _seafile_service(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    """The lab runs no Seafile daemons: record each stand-in's state (seafile, seahub) and every action, so tests
    can see them (run/NAME.state, var/log/NAME-service.log)."""
    host = lab.hosts[args.host]
    name = args.service
    state_file = host.root / f"run/{name}.state"
    running = state_file.exists() and state_file.read_text().strip() == "running"
    if args.action == "status":
        console.print(f"{args.host} {name}: {'running' if running else 'stopped'}")
        return 0 if running else 3
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text("stopped\n" if args.action == "stop" else "running\n")
    log = host.root / f"var/log/{name}-service.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as fh:
        fh.write(f"{args.action}\n")
    return 0


def _cmd_backup_cmd(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    """seaf-backup-cmd on a lab host, finding that host's seafile.conf as Seafile's scripts would."""
    from seafbackup_agent.config import CONF_DIR_VARIABLE, DATA_DIR_VARIABLE

    host = lab.hosts[args.host]
    installed = host.root / "opt/seafbackup/venv/bin/seaf-backup-cmd"  # what setup_backup.yml installed there
    cmd = installed if installed.exists() else Path(sys.executable).parent / "seaf-backup-cmd"
    env = dict(os.environ, **{CONF_DIR_VARIABLE: str(host.seafile_conf_dir),
                              DATA_DIR_VARIABLE: str(host.seafile_data_dir)})
    return subprocess.run([str(cmd), *args.args], env=env, check=False).returncode


def _cmd_sshd(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    ssh = LabSSH(lab.dir, lab.addresses)
    if args.action == "up":
        ssh.up()
        for connection in ("ssh", "paramiko"):
            path = lab.dir / f"inventory-{connection}.yml"
            path.write_text(render_inventory(lab, connection=connection, ssh_key=ssh.client_key))
            console.print(f"{connection} inventory: {path}")
    else:
        ssh.down()
        console.print("sshd stopped")
    return 0


def _cmd_hosts(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    """The hosts lab: two Debian containers booting systemd (seafbackup_lab.hosts); its own directory."""
    from seafbackup_lab.hosts import HostsLab, build_image, default_hosts_lab_dir

    hosts = HostsLab(args.hosts_dir or default_hosts_lab_dir())
    if args.action == "image":
        console.print(f"image: {build_image(hosts.cache)}")
    elif args.action == "up":
        timings = hosts.up()
        console.print(f"image {timings['image']:.1f} s, boot {timings['boot']:.1f} s; inventory: {hosts.inventory}")
    elif args.action == "down":
        hosts.down(remove=args.remove)
        console.print("containers stopped" + (" and removed" if args.remove else ""))
    elif args.action == "restart":
        for name in args.host or list(hosts.hosts):
            console.print(f"{name} rebooted in {hosts.restart(name):.1f} s")
    elif args.action == "ssh":
        [name, *command] = args.host or ["primary"]
        return subprocess.run([*hosts.ssh_command(name), *command], check=False).returncode
    else:
        print(json.dumps(hosts.status(), indent=2))
    return 0


def _cmd_seafile(lab: Lab, args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from seafbackup_lab.writer import Put

    with _server(lab, args.host) as server:
        if args.seafile_cmd == "create":
            repo_id = server.create_library(args.name, args.owner, password=args.password)
            print(repo_id)
        elif args.seafile_cmd == "put":
            files = {}
            for spec in args.files:
                target, _, source = spec.partition("=")
                files[target] = Path(source).read_bytes() if source else b""
            print(server.commit(args.library, [Put(p, d) for p, d in files.items()], modifier=args.modifier))
        elif args.seafile_cmd == "list":
            table = Table(title=f"libraries on {args.host}")
            for column in ("library id", "head", "files"):
                table.add_column(column)
            for repo_id in server.library_ids():
                files = sum(1 for _ in server.walk_files(repo_id))
                table.add_row(repo_id, server.head(repo_id)[:12], str(files))
            console.print(table)
        elif args.seafile_cmd == "delete":
            server.delete_library(args.library)
        elif args.seafile_cmd == "history-limit":
            server.set_history_limit(args.library, args.days)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seafbackup-lab", description=__doc__)
    parser.add_argument("--lab-dir", type=Path, default=None, help="lab state directory (default: .lab/)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("up", _cmd_up), ("down", _cmd_down), ("reset", _cmd_reset), ("status", _cmd_status)):
        p = sub.add_parser(name)
        p.add_argument("--json", action="store_true")
        if name in ("up", "reset"):
            p.add_argument("--cluster", action="store_true",
                           help="a new lab is the cluster lab: three Galera nodes, two Seafile nodes, one backup")
        p.set_defaults(func=func)
    service = sub.add_parser("service", help="control a lab host's service as systemctl would")
    service.add_argument("host", help="a lab host: primary, backup (cluster lab: node1-3, backup)")
    service.add_argument("service", choices=("mariadb", "seafile", "seahub", "seafbackup-agent", "mysql", "agent"))
    service.add_argument("action", choices=("start", "stop", "restart", "status"))
    service.set_defaults(func=_cmd_service)

    cmd = sub.add_parser("cmd", help="run seaf-backup-cmd on a lab host (e.g. `cmd backup status`)")
    cmd.add_argument("host", help="a lab host with Seafile (primary, backup; cluster lab: node1, node2, backup)")
    cmd.add_argument("args", nargs=argparse.REMAINDER, help="seaf-backup-cmd's arguments")
    cmd.set_defaults(func=_cmd_backup_cmd)

    sshd = sub.add_parser("sshd", help="start/stop an sshd on each host's address, port 2222 (key auth)")
    sshd.add_argument("action", choices=("up", "down"))
    sshd.set_defaults(func=_cmd_sshd)

    hosts = sub.add_parser("hosts", help="the hosts lab: two Debian containers booting systemd, over real SSH")
    hosts.add_argument("action", choices=("image", "up", "down", "restart", "ssh", "status"))
    hosts.add_argument("host", nargs=argparse.REMAINDER, help="restart: hosts (default both); ssh: host and command")
    hosts.add_argument("--dir", dest="hosts_dir", type=Path, default=None, help="default: .lab-hosts/")
    hosts.add_argument("--remove", action="store_true", help="down: also delete the containers' filesystems")
    hosts.set_defaults(func=_cmd_hosts)

    seafile = sub.add_parser("seafile", help="act like a Seafile server on a lab host")
    seafile.add_argument("--host", default=None, help="primary (default; cluster lab: node1), backup, node2")
    ssub = seafile.add_subparsers(dest="seafile_cmd", required=True)
    create = ssub.add_parser("create", help="create a library; prints its id")
    create.add_argument("name")
    create.add_argument("--owner", default="alice@example.com")
    create.add_argument("--password", help="make it an encrypted library (parameters only)")
    put = ssub.add_parser("put", help="commit files: PATH=LOCAL_FILE (or PATH= for an empty file)")
    put.add_argument("library")
    put.add_argument("files", nargs="+")
    put.add_argument("--modifier", default="alice@example.com")
    ssub.add_parser("list", help="list libraries")
    delete = ssub.add_parser("delete")
    delete.add_argument("library")
    limit = ssub.add_parser("history-limit")
    limit.add_argument("library")
    limit.add_argument("days", type=int)
    seafile.set_defaults(func=_cmd_seafile)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    lab = open_lab(args.lab_dir or default_lab_dir(), cluster=getattr(args, "cluster", False))
    try:
        for name in ("host",):
            value = getattr(args, name, None)
            if name == "host" and value is None and args.command == "seafile":
                args.host = lab.primary.name
            elif value is not None and args.command != "hosts" and value not in lab.hosts:  # hosts: its own lab
                raise LabError(f"no host {value!r} in this lab (hosts: {', '.join(lab.hosts)})")
        return args.func(lab, args, console)
    except LabError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

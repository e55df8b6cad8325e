"""Case "wan": first sync and RPO on loopback (LAN) and over the shaped links of bench/wan.py, each with its
baselines measured over the same path in the same run: a plain TCP transfer (the path's bandwidth) and
`rsync -a` over ssh."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from bench import bulk, wan
from bench.lab import ADDR_PREFIX, Agents, discard, wipe
from bench.procstat import cpu_seconds
from bench.rpo import percentile, run_rpo
from bench.scenarios import Plan, _du_bytes, first_sync_from_empty
from seafbackup_lab.lab import Lab
from seafbackup_lab.writer import SeafileServer, bulk_files

RELAY = f"{ADDR_PREFIX}3"
"""Where the relay listens: :8090 → primary agent, :8091 → backup agent, :9000 → TCP sink, :2222 → sshd."""
SINK = f"{ADDR_PREFIX}4"
"""The baselines' far end (TCP sink, sshd)."""
LAN = wan.Link("lan", 0.0, 0)


class _Sshd:
    """An sshd of the bench's own (key pair, host key, config in `work`), for `rsync -a` over ssh."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.key = work / "id_ed25519"
        host_key = work / "host_ed25519"
        for path in (self.key, host_key):
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        (work / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        config = work / "sshd_config"
        config.write_text(f"ListenAddress {SINK}:2222\nHostKey {host_key}\nAuthorizedKeysFile {work}/authorized_keys\n"
                          "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n"
                          f"PidFile {work}/sshd.pid\n")
        # sshd refuses to start without its privilege separation directory (made at boot by the ssh package's
        # tmpfiles rule, which a container or a fresh boot may not have run).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["ss", "-Hltn", f"src {SINK}:2222"], capture_output=True, text=True).stdout == "":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the bench's sshd did not start")
            time.sleep(0.05)

    def rsync_seconds(self, src: Path, dest: Path, address: str) -> float:
        ssh = (f"ssh -p 2222 -i {self.key} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               "-o LogLevel=ERROR")
        t = time.monotonic()
        subprocess.run(["rsync", "-a", "-e", ssh, f"{src}/", f"root@{address}:{dest}"], check=True)
        return time.monotonic() - t

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class _Path:
    """One link's path for the agents and the baselines: the relay over the shaped veth, or plain loopback."""

    def __init__(self, lab: Lab, link: wan.Link) -> None:
        self.link = link
        self.relay: wan.Relay | None = None
        if link is not LAN:
            wan.link_up(link)
            self.relay = wan.Relay(link, {
                (RELAY, 8090): (lab.primary.address, 8090), (RELAY, 8091): (lab.backup.address, 8091),
                (RELAY, 9000): (SINK, 9001), (RELAY, 2222): (SINK, 2222)})

    @property
    def via(self) -> str | None:
        return RELAY if self.relay else None

    @property
    def tcp(self) -> tuple[str, int]:
        return (RELAY, 9000) if self.relay else (SINK, 9001)

    @property
    def ssh_host(self) -> str:
        return RELAY if self.relay else SINK

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            wan.link_down()


def wan_case(lab: Lab, plan: Plan, work: Path, log) -> dict:
    links = [LAN, *wan.LINKS[: plan.wan_links]]
    sshd = _Sshd(work / "wan-ssh")
    try:
        first = _first_syncs(lab, plan, work, log, links, sshd)
        rpo = _rpo(lab, plan, work, log, links)
    finally:
        sshd.close()
        wan.link_down()
    return {"links": [{"name": link.name, "label": "loopback" if link is LAN else link.label, "rtt": link.rtt,
                       "rate_mbit": link.rate_mbit} for link in links],
            "first_sync": first, "rpo": rpo}


def _first_syncs(lab: Lab, plan: Plan, work: Path, log, links: list[wan.Link], sshd: _Sshd) -> list[dict]:
    wipe(lab)
    with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as server:
        repo = server.create_library("wan", "bench@example.com")
        head = server.commit(repo, list(bulk_files(plan.wan_files, plan.wan_file_size, seed=11)))
    src = lab.primary.seafile_data_dir / "storage"
    size, objects = _du_bytes(src)
    subprocess.run(["sync"], check=True)
    out = []
    for link in links:
        path = _Path(lab, link)
        try:
            agents = Agents(lab, work / f"wan-first-{link.name}", via=path.via)
            try:
                agents.start("primary")
                first = first_sync_from_empty(lab, agents, repo, head)
            finally:
                agents.close()
            tcp_mbit = wan.tcp_transfer_mbit(path.tcp, (SINK, 9001), size)
            copies = lab.backup.root / "var/tmp/wan-rsync"
            discard(lab, copies)
            copies.mkdir(parents=True)
            rsync_s = sshd.rsync_seconds(src, copies / "storage", path.ssh_host)
            discard(lab, copies)
        finally:
            path.close()
        agent_s = first.seconds
        row = {"link": link.name, "bytes": size, "objects": objects, "agent_seconds": round(agent_s, 3),
               "sync_seconds_itself": round(first.sync_seconds_itself, 3),
               "agent_mbit": round(size * 8 / agent_s / 1e6, 1),
               "tcp_mbit": round(tcp_mbit, 1), "rsync_ssh_seconds": round(rsync_s, 3),
               "rsync_ssh_mbit": round(size * 8 / rsync_s / 1e6, 1),
               "cpu_s": {"primary": first.primary_cpu_s, "backup": first.backup_cpu_s}, "rss_mb": first.rss_mb}
        log(f"wan first sync over {link.name}: agent {agent_s:.2f}s ({row['agent_mbit']} Mbit/s), "
            f"tcp {tcp_mbit:.0f} Mbit/s, rsync over ssh {rsync_s:.2f}s")
        out.append(row)
    return out


def _rpo(lab: Lab, plan: Plan, work: Path, log, links: list[wan.Link]) -> list[dict]:
    wipe(lab)
    made = bulk.create_libraries(lab.primary, plan.rpo_libraries)
    repos = [r for r, _ in made]
    bulk.copy_storage(lab.primary.seafile_data_dir, lab.backup.seafile_data_dir)
    bulk.seed_backup_rows(lab.backup, made)
    out = []
    for link in links:
        path = _Path(lab, link)
        try:
            agents = Agents(lab, work / f"wan-rpo-{link.name}", via=path.via)
            try:
                agents.start("primary")
                agents.start("backup")
                agents.wait_synchronized(len(repos))
                for rate, seconds, size in plan.wan_rpo_points:
                    cpu0 = {n: cpu_seconds(agents.pid(n)) for n in agents.procs}
                    run = run_rpo(lab, repos, rate=rate, duration=seconds, file_size=size)
                    lat = run.latencies
                    point = {"link": link.name, "rate": rate, "achieved_rate": round(run.achieved_rate, 2),
                             "commits": run.commits, "unresolved": run.unresolved,
                             "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=0.0),
                             "cpu_ms_per_move": {n: round((cpu_seconds(agents.pid(n)) - cpu0[n]) / run.commits * 1000,
                                                          2) for n in agents.procs}}
                    log(f"wan rpo over {link.name} at {rate}/s: p50 {point['p50']:.3f}s p99 {point['p99']:.3f}s "
                        f"(achieved {run.achieved_rate:.1f}/s) ms/move {point['cpu_ms_per_move']}")
                    out.append(point)
            finally:
                agents.close()
        finally:
            path.close()
    return out

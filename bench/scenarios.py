"""The six measurements of the benchmark report. Each takes the lab and a `Plan` (sizes), returns plain data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import bulk, realistic
from bench.lab import Agents, discard, root_sql, wipe
from bench.procstat import CpuSampler, cpu_seconds, global_status, machine_busy_seconds, peak_rss_mb
from bench.rpo import percentile, run_rpo
from seafbackup_lab.lab import Lab
from seafbackup_lab.writer import Put, SeafileServer, bulk_files

MiB = 1 << 20


@dataclass(frozen=True)
class Plan:
    quick: bool
    rpo_libraries: int
    rpo_points: tuple[tuple[float, float, int], ...]
    """(commits/s, seconds, file size)"""
    initial_files: int
    initial_file_size: int
    initial_rounds: int
    incremental_objects: tuple[int, ...]
    poll_libraries: tuple[int, ...]
    idle_seconds: float
    busy_rate: float
    busy_seconds: float
    real_files: int
    real_cap: int
    real_large: tuple[int, ...]
    """The realistic store (bench/realistic.py): small files, their cap, and the large files' sizes."""
    wan_links: int
    """How many of bench/wan.py's LINKS (the quick run: 20 ms / 1 Gbit/s only)."""
    wan_files: int
    wan_file_size: int
    wan_rpo_points: tuple[tuple[float, float, int], ...]


QUICK = Plan(
    quick=True,
    rpo_libraries=1000,
    rpo_points=((1, 4, 4096), (10, 4, 4096), (50, 4, 4096), (100, 5, 4096), (10, 3, MiB), (100, 2, MiB)),
    initial_files=5_000,
    initial_file_size=16 * 1024,
    initial_rounds=2,
    incremental_objects=(10_000, 100_000),
    poll_libraries=(1000, 10_000),
    idle_seconds=5,
    busy_rate=10,
    busy_seconds=5,
    real_files=800,
    real_cap=2 * MiB,
    real_large=(16 * MiB,),
    wan_links=1,
    wan_files=1000,
    wan_file_size=16 * 1024,
    wan_rpo_points=((100, 3, 4096),),
)

FULL = Plan(
    quick=False,
    rpo_libraries=1000,
    rpo_points=((1, 60, 4096), (10, 30, 4096), (50, 20, 4096), (100, 20, 4096), (1, 30, 8 * MiB), (10, 15, 8 * MiB),
                (100, 3, 8 * MiB)),
    initial_files=100_000,
    initial_file_size=20 * 1024,
    initial_rounds=3,
    incremental_objects=(10_000, 100_000, 1_000_000),
    poll_libraries=(1000, 10_000, 100_000),
    idle_seconds=30,
    busy_rate=10,
    busy_seconds=20,
    real_files=10_000,
    real_cap=32 * MiB,
    real_large=(256 * MiB,),
    wan_links=2,
    wan_files=20_000,
    wan_file_size=64 * 1024,
    wan_rpo_points=((10, 10, 4096), (100, 20, 4096)),
)


def _timed(argv: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t


def _sync_fs(path: Path) -> float:
    return _timed(["sync", "-f", str(path)])


def _du_bytes(path: Path) -> tuple[int, int]:
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(root, name)).st_size
            files += 1
    return total, files


def _agents_rss(agents: Agents) -> dict[str, float]:
    return {name: round(peak_rss_mb(agents.pid(name)), 1) for name in list(agents.procs)}


def _wait_head(lab: Lab, repo: str, head: str, timeout: float = 3600, interval: float = 0.02) -> float:
    conn = lab.backup.mariadb.root_connection("seafile_db")
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            with conn.cursor() as cur:
                cur.execute("SELECT commit_id FROM Branch WHERE repo_id=%s", (repo,))
                row = cur.fetchone()
            conn.commit()
            if row and row[0] == head:
                return time.monotonic()
            time.sleep(interval)
    finally:
        conn.close()
    raise RuntimeError(f"backup head of {repo} did not reach {head} in {timeout}s")


# --- 1. RPO ----------------------------------------------------------------------------------------


@dataclass
class FirstSync:
    """The backup's first sync of a library, from its agent's start on an empty backup."""

    seconds: float
    sync_seconds_itself: float
    rss_mb: dict[str, float]
    primary_cpu_s: float
    backup_cpu_s: float


def first_sync_from_empty(lab: Lab, agents: Agents, repo: str, head: str) -> FirstSync:
    """Empty the backup, start its agent (the primary's runs already) and time it until `repo` is at `head`;
    the backup's agent keeps running."""
    wipe(lab, hosts=("backup",))
    shutil.rmtree(agents.work / "state", ignore_errors=True)
    subprocess.run(["sync"], check=True)
    cpu0 = cpu_seconds(agents.pid("primary"))
    started = time.monotonic()
    agents.start("backup")
    backup_pid = agents.pid("backup")
    done = _wait_head(lab, repo, head)
    sync_s, _count = agents.sync_seconds()
    return FirstSync(done - started, sync_s, _agents_rss(agents),
                     round(cpu_seconds(agents.pid("primary")) - cpu0, 2), round(cpu_seconds(backup_pid), 2))


def rpo(lab: Lab, plan: Plan, work: Path, log) -> dict:
    wipe(lab)
    made = bulk.create_libraries(lab.primary, plan.rpo_libraries)
    repos = [r for r, _ in made]
    # The backup starts synchronized (an initial sync of 1k libraries is case 4's business, not RPO's).
    bulk.copy_storage(lab.primary.seafile_data_dir, lab.backup.seafile_data_dir)
    bulk.seed_backup_rows(lab.backup, made)
    agents = Agents(lab, work / "rpo")
    points = []
    try:
        agents.start("primary")
        agents.start("backup")
        agents.wait_synchronized(len(repos))
        for rate, seconds, size in plan.rpo_points:
            log(f"rpo: {rate}/s for {seconds}s, files of {size} bytes")
            cpu0 = {n: cpu_seconds(agents.pid(n)) for n in agents.procs}
            machine0, writer0 = machine_busy_seconds(), cpu_seconds(os.getpid())
            t0 = time.monotonic()
            run = run_rpo(lab, repos, rate=rate, duration=seconds, file_size=size,
                          control_socket=str(agents.work / "state/agent.sock"))
            wall = time.monotonic() - t0
            cpu = {n: round((cpu_seconds(agents.pid(n)) - cpu0[n]) / wall, 3) for n in agents.procs}
            # CPU per head move: the figure that does not depend on this machine's other work (wall time does).
            cpu_per_move = {n: round((cpu_seconds(agents.pid(n)) - cpu0[n]) / run.commits * 1000, 2)
                            for n in agents.procs}
            cpu["writer"] = round((cpu_seconds(os.getpid()) - writer0) / wall, 3)
            cpu["machine"] = round((machine_busy_seconds() - machine0) / wall, 3)
            lat = run.latencies
            points.append({
                "rate": rate, "seconds": seconds, "file_size": size, "commits": run.commits,
                "achieved_rate": round(run.achieved_rate, 2), "unresolved": run.unresolved,
                "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                "max": max(lat) if lat else float("nan"), "latencies": lat,
                "writer_commit_p50": percentile(run.commit_seconds, 50), "agent_cpu_share": cpu,
                "cpu_ms_per_move": cpu_per_move,
                "bound_samples": run.bound_samples, "bound_below_measured": run.bound_below_measured,
                "bound_slack_p50": percentile(run.bound_slack, 50), "bound_slack_p99": percentile(run.bound_slack, 99),
            })
            log(f"  p50 {points[-1]['p50']:.3f}s p99 {points[-1]['p99']:.3f}s max {points[-1]['max']:.3f}s "
                f"achieved {run.achieved_rate:.1f}/s cpu {cpu} ms/move {cpu_per_move}; "
                f"RPO bound: {run.bound_samples} samples, "
                f"{run.bound_below_measured} below the measured RPO, slack p50 {points[-1]['bound_slack_p50']:.3f}s")
        rss = _agents_rss(agents)
    finally:
        agents.close()
    return {"libraries": len(repos), "points": points, "rss_mb": rss}


# --- 2. initial sync -------------------------------------------------------------------------------


def initial(lab: Lab, plan: Plan, work: Path, log, *, store: str = "synthetic") -> dict:
    """The agents (empty backup → head published) against rsync, cp and dd of the same storage directory,
    in rounds that alternate the tools (the disk is shared and noisy); medians of the rounds. `store`:
    "synthetic" (files of one size) or "realistic" (bench/realistic.py)."""
    wipe(lab)
    if store == "realistic":
        files = list(realistic.files(plan.real_files, cap=plan.real_cap, large=plan.real_large))
    else:
        files = list(bulk_files(plan.initial_files, plan.initial_file_size, seed=7))
    with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as server:
        repo = server.create_library("initial", "bench@example.com")
        t = time.monotonic()
        head = server.commit(repo, files)
        log(f"initial ({store}): wrote {len(files)} files in {time.monotonic() - t:.1f}s")
    largest = max(len(f.data) for f in files)
    del files
    src = lab.primary.seafile_data_dir / "storage"
    size, objects = _du_bytes(src)
    copies = lab.backup.root / "var/tmp/initial-copies"  # where the agent writes: the backup's disk
    subprocess.run(["sync"], check=True)
    runs: dict[str, list[dict]] = {"agent": [], "rsync -a": [], "cp -a": [], "dd": []}

    def baseline(name: str, argv: list[str]) -> None:
        t = _timed(argv)
        s = _sync_fs(copies)
        runs[name].append({"seconds": t, "sync_seconds": s, "seconds_with_sync": t + s})
        log(f"initial: {name} {t:.1f}s + sync {s:.1f}s")

    agents = Agents(lab, work / "initial")
    try:
        agents.start("primary")
        for round_ in range(plan.initial_rounds):
            first = first_sync_from_empty(lab, agents, repo, head)
            runs["agent"].append(asdict(first))
            agents.stop("backup")
            log(f"initial round {round_ + 1}: agent {first.seconds:.1f}s "
                f"(sync itself {first.sync_seconds_itself:.1f}s)")
            discard(lab, copies)
            copies.mkdir(parents=True)
            subprocess.run(["sync"], check=True)
            baseline("rsync -a", ["rsync", "-a", f"{src}/", str(copies / "rsync")])
            baseline("cp -a", ["cp", "-a", str(src), str(copies / "cp")])
            count = max(1, size // MiB)
            baseline("dd", ["dd", "if=/dev/zero", f"of={copies / 'dd.bin'}", "bs=1M", f"count={count}",
                            "conv=fsync", "status=none"])
    finally:
        agents.close()
    discard(lab, copies)
    tools = {name: _median_run(samples) for name, samples in runs.items()}
    return {"store": store, "files": plan.real_files + len(plan.real_large) if store == "realistic" else
            plan.initial_files, "file_size": plan.initial_file_size, "largest_file": largest, "bytes": size,
            "objects": objects, "rounds": plan.initial_rounds, "tools": tools, "runs": runs}


def _median_run(samples: list[dict]) -> dict:
    """The run with the median total time (its other numbers belong to that same run)."""
    key = "seconds_with_sync" if "seconds_with_sync" in samples[0] else "seconds"
    ordered = sorted(samples, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2] | {"all_seconds": [round(r[key], 3) for r in samples]}


# --- 3. incremental --------------------------------------------------------------------------------


def incremental(lab: Lab, plan: Plan, work: Path, log, *, repeats: int = 3) -> dict:
    points = []
    for objects in plan.incremental_objects:
        wipe(lab)
        files = objects // 2
        t = time.monotonic()
        with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as server:
            repo = server.create_library(f"inc-{objects}", "bench@example.com")
            server.commit(repo, list(bulk_files(files, 64, seed=objects)))
        src = lab.primary.seafile_data_dir / "storage"
        bulk.copy_storage(lab.primary.seafile_data_dir, lab.backup.seafile_data_dir)
        bulk.seed_backup_rows(lab.backup, bulk.heads(lab.primary))
        mirror = lab.primary.root / "var/tmp/incremental-rsync"  # hard links need the store's filesystem
        discard(lab, mirror)
        mirror.parent.mkdir(parents=True, exist_ok=True)
        # Hard links as for the backup: rsync replaces files by rename, never in place.
        subprocess.run(["cp", "-al", str(src), str(mirror)], check=True)
        stored = _du_bytes(src)[1]
        # Written back before measuring: the agent's durability barriers would otherwise pay for the setup.
        subprocess.run(["sync"], check=True)
        log(f"incremental: store of {objects} objects ({stored} paths) ready in {time.monotonic() - t:.1f}s")
        agents = Agents(lab, work / f"incremental-{objects}")
        agent_s, engine_s, rsync_s = [], [], []
        try:
            agents.start("primary")
            agents.start("backup")
            agents.wait_synchronized(1)
            with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as server:
                for i in range(repeats):
                    path = f"bulk/d{(i * 37) % max(1, files // 100):05d}/changed-{i}.bin"
                    sum0, count0 = agents.sync_seconds()
                    head = server.commit(repo, [Put(path, os.urandom(4096))])
                    t0 = time.monotonic()  # the head moved (as in the RPO case: from the writer's commit)
                    agent_s.append(_wait_head(lab, repo, head, interval=0.005) - t0)
                    time.sleep(0.1)  # the worker records its metrics just after the publish
                    sum1, count1 = agents.sync_seconds()
                    engine_s.append((sum1 - sum0) / max(1, count1 - count0))
                    rsync_s.append(_timed(["rsync", "-a", f"{src}/", f"{mirror}/"]))
                    log(f"incremental {objects}: agent {agent_s[-1]:.3f}s (sync itself {engine_s[-1]:.3f}s) "
                        f"rsync {rsync_s[-1]:.3f}s")
            rss = _agents_rss(agents)
        finally:
            agents.close()
        discard(lab, mirror)
        points.append({"objects": objects, "paths": stored, "agent": agent_s, "rsync": rsync_s, "engine": engine_s,
                       "agent_median": sorted(agent_s)[len(agent_s) // 2],
                       "engine_median": sorted(engine_s)[len(engine_s) // 2],
                       "rsync_median": sorted(rsync_s)[len(rsync_s) // 2], "rss_mb": rss})
    return {"points": points, "repeats": repeats}


# --- 4. poll at scale, 6. primary cost ------------------------------------------------------------


def poll_and_primary_cost(lab: Lab, plan: Plan, work: Path, log, *, polls: int = 3) -> dict:
    wipe(lab)
    made: list[tuple[str, str]] = []
    points = []
    cost: dict = {}
    for libraries in plan.poll_libraries:
        t = time.monotonic()
        # Commit objects only for the first 1,000 (the busy window of case 6 commits there); a poll reads none.
        first = not made
        made += bulk.create_libraries(lab.primary, libraries - len(made), commits=first)
        if first:
            bulk.copy_storage(lab.primary.seafile_data_dir, lab.backup.seafile_data_dir)
        bulk.seed_backup_rows(lab.backup, made)
        log(f"poll: {libraries} libraries ready in {time.monotonic() - t:.1f}s")
        agents = Agents(lab, work / f"poll-{libraries}", poll_hours=0.0005)  # a poll every 1.8 s
        try:
            agents.start("primary")
            with CpuSampler(agents.pid("primary")) as primary_cpu:
                agents.start("backup")
                deadline = time.monotonic() + 900
                while len(agents.polls()) < polls + 1 and time.monotonic() < deadline:
                    time.sleep(0.2)
                found = agents.polls()
                rss = _agents_rss(agents)
                backup_cpu = cpu_seconds(agents.pid("backup"))
            runs = [{"seconds": s, "libraries": n,
                     "primary_cpu_s": round(primary_cpu.cpu_between(end - s, end), 3)} for end, n, s in found]
            points.append({"libraries": libraries, "first": runs[0] if runs else None, "steady": runs[1:],
                           "rss_mb": rss, "backup_cpu_total_s": backup_cpu})
            log(f"poll {libraries}: {[r['seconds'] for r in runs]} s, primary cpu "
                f"{[r['primary_cpu_s'] for r in runs]} s, rss {rss}")
            if libraries == plan.poll_libraries[-1]:
                agents.stop("backup")
                cost = _primary_cost(lab, plan, agents, [r for r, _ in made], log)
        finally:
            agents.close()
    return {"points": points, "primary_cost": cost}


def _cpu_share(pid: int, seconds: float) -> float:
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / seconds


def _db_window(lab: Lab, seconds: float, agent_pid: int | None) -> dict:
    db_pid = lab.primary.mariadb.pid()
    conn = lab.primary.mariadb.root_connection()
    try:
        s0, d0 = global_status(conn), cpu_seconds(db_pid)
        a0 = cpu_seconds(agent_pid) if agent_pid else 0.0
        time.sleep(seconds)
        s1, d1 = global_status(conn), cpu_seconds(db_pid)
        a1 = cpu_seconds(agent_pid) if agent_pid else 0.0
    finally:
        conn.close()
    # Our own two SHOW GLOBAL STATUS count as Questions: take them out.
    rates = {k: round(max(0, s1[k] - s0[k] - (1 if k == "Questions" else 0)) / seconds, 2) for k in s0}
    return {"seconds": seconds, "mariadb_cpu_share": round((d1 - d0) / seconds, 4),
            "agent_cpu_share": round((a1 - a0) / seconds, 4), **{f"{k}_per_s": v for k, v in rates.items()}}


def _primary_cost(lab: Lab, plan: Plan, agents: Agents, repos: list[str], log) -> dict:
    """Idle primary agent with all libraries (heartbeats running: the backup pulls one a second, the primary writes
    the heartbeat row and reads the binlog's end every second) vs no agent; then a few head moves per second."""
    agents.close()
    agents = Agents(lab, agents.work.parent / f"{agents.work.name}-idle")  # the product's hourly poll
    agents.start("primary")
    agents.start("backup")
    deadline = time.monotonic() + 300
    while not agents.polls() and time.monotonic() < deadline:
        time.sleep(0.2)
    idle = _db_window(lab, plan.idle_seconds, agents.pid("primary"))
    idle["backup_agent_cpu_share"] = idle_backup = round(_cpu_share(agents.pid("backup"), plan.idle_seconds), 4)
    agents.stop_all()
    time.sleep(0.5)
    without = _db_window(lab, plan.idle_seconds, None)
    log(f"primary cost: idle agents with heartbeats {idle} (backup agent {idle_backup}), no agent {without}")
    agents.close()
    # The busy window with the product's poll interval (1 h): only the first poll, at start, overlaps it.
    agents = Agents(lab, agents.work.parent / f"{agents.work.name}-busy")
    agents.start("primary")
    agents.start("backup")
    deadline = time.monotonic() + 300
    while not agents.polls() and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = agents.pid("primary")
    db_pid = lab.primary.mariadb.pid()
    c0, d0 = cpu_seconds(pid), cpu_seconds(db_pid)
    t0 = time.monotonic()
    run = run_rpo(lab, repos[:1000], rate=plan.busy_rate, duration=plan.busy_seconds,
                  file_size=4096)
    wall = time.monotonic() - t0
    busy = {"rate": plan.busy_rate, "libraries": len(repos), "achieved_rate": round(run.achieved_rate, 2),
            "agent_cpu_share": round((cpu_seconds(pid) - c0) / wall, 3),
            "mariadb_cpu_share": round((cpu_seconds(db_pid) - d0) / wall, 3),
            "p50": percentile(run.latencies, 50), "p99": percentile(run.latencies, 99),
            "max": max(run.latencies) if run.latencies else float("nan"), "unresolved": run.unresolved}
    log(f"primary cost busy: {busy}")
    rss = _agents_rss(agents)
    agents.close()
    return {"libraries": len(repos), "idle": idle, "no_agent": without, "busy": busy, "rss_mb": rss}


def as_dict(plan: Plan) -> dict:
    return asdict(plan)


__all__ = ["FULL", "QUICK", "Plan", "incremental", "initial", "poll_and_primary_cost", "root_sql", "rpo"]

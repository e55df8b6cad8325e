"""docs/benchmarks.md and its PNG plots from the results of one run (bench/results JSON)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FINDINGS = Path(__file__).with_name("findings.md")


def _cores(cpu: dict, key: str) -> str:
    return f"{cpu[key]:.2f}" if key in cpu else "-"


def _s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.0f} ms"


def _size(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            return f"{n / factor:.3g} {unit}"
    return f"{n} B"


def _verdict(ok: bool, miss: str) -> str:
    return "**met**" if ok else f"**missed** ({miss})"


def plots(results: dict, out: Path) -> list[str]:
    made = []
    if "rpo" in results:
        pts = results["rpo"]["points"]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        data = [p["latencies"] or [float("nan")] for p in pts]
        labels = [f"{p['rate']:g}/s\n{_size(p['file_size'])}" for p in pts]
        ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(labels) + 1), labels)
        ax.axhline(2.0, color="red", linestyle="--", linewidth=1, label="target p99 ≤ 2 s at 100/s")
        ax.set_yscale("log")
        ax.set_ylabel("head move → same head on the backup (s)")
        ax.set_title(f"RPO over {results['rpo']['libraries']} libraries (whiskers: p1-p99)")
        ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "rpo.png", dpi=110)
        plt.close(fig)
        made.append("rpo.png")
    if "incremental" in results:
        pts = results["incremental"]["points"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [p["objects"] for p in pts]
        ax.plot(xs, [p["agent_median"] for p in pts], "o-", label="agent (end to end)")
        ax.plot(xs, [p["rsync_median"] for p in pts], "s-", label="rsync -a")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("objects in the store")
        ax.set_ylabel("time to copy one changed file (s, median)")
        ax.set_title("Incremental sync vs store size")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "incremental.png", dpi=110)
        plt.close(fig)
        made.append("incremental.png")
    if "poll" in results:
        pts = [p for p in results["poll"]["points"] if p["steady"]]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [p["libraries"] for p in pts]
        ax.plot(xs, [_median([r["seconds"] for r in p["steady"]]) for p in pts], "o-", label="full poll (steady)")
        ax.plot(xs, [p["first"]["seconds"] for p in pts], "^--", label="first poll after start")
        ax.plot(xs, [_median([r["primary_cpu_s"] for r in p["steady"]]) for p in pts], "s:",
                label="primary agent CPU per poll (s)")
        ax.axhline(5.0, color="red", linestyle="--", linewidth=1, label="target ≤ 5 s at 100k")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("libraries")
        ax.set_ylabel("seconds")
        ax.set_title("Poll of every library (nothing to copy)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "poll.png", dpi=110)
        plt.close(fig)
        made.append("poll.png")
    if "initial" in results:
        tools = results["initial"]["tools"]
        fig, ax = plt.subplots(figsize=(7, 4))
        names = list(tools)
        secs = [tools[n].get("seconds_with_sync", tools[n]["seconds"]) for n in names]
        mb = results["initial"]["bytes"] / (1 << 20)
        ax.barh(names, [mb / s for s in secs])
        ax.set_xlabel("MiB/s (durable: tools timed with a final sync)")
        ax.set_title(f"Initial copy of {_size(results['initial']['bytes'])}, {results['initial']['objects']} objects")
        fig.tight_layout()
        fig.savefig(out / "initial.png", dpi=110)
        plt.close(fig)
        made.append("initial.png")
    return made


def _runs(results: dict) -> list[str]:
    """Which run each case comes from, when `--merge` combined runs."""
    origins = {case: results[case]["run"] for case in ("rpo", "initial", "realistic", "incremental", "poll", "wan")
               if case in results and "run" in results[case]}
    if len({o["started"] for o in origins.values()}) <= 1:
        return []
    lines = ["Cases from separate runs (`--merge`):", ""]
    for case, origin in origins.items():
        sizes = "quick" if origin["quick"] else "full"
        disks = origin.get("disks", "both hosts on the machine's root filesystem")
        lines.append(f"* {case}: `{origin['command']}` ({sizes} sizes), {origin['started']}, "
                     f"{origin['elapsed_s'] / 60:.1f} min; {disks}")
    return [*lines, ""]


def _per_move(point: dict) -> str:
    ms = point.get("cpu_ms_per_move")
    return f"{ms['primary']:.1f} / {ms['backup']:.1f} ms" if ms else "-"


def _initial(r: dict, images: list[str], targets: list[str]) -> list[str]:
    tools = r["tools"]
    agent = tools["agent"]["seconds"]
    mb = r["bytes"] / (1 << 20)
    if r.get("store") == "realistic":
        title = "## 2b. Initial sync of a realistic store"
        what = (f"One library shaped like a real one (`bench/realistic.py`: {r['files']} files, sizes lognormal with "
                "a median of 4 KiB and a mean of 189 KiB as measured by Agrawal et al., \"A Five-Year Study of "
                f"File-System Metadata\", FAST 2007, capped, plus large files; the largest {_size(r['largest_file'])}, "
                f"cut into 8 MiB blocks): {_size(r['bytes'])} in {r['objects']} objects.")
    else:
        title = "## 2. Initial sync of a store"
        what = (f"One library of {r['files']} files of {_size(r['file_size'])}: {_size(r['bytes'])} in "
                f"{r['objects']} objects (blocks, file and directory objects, commits).")
    lines = [
        title,
        "",
        f"{what} The agent's time runs from starting the backup "
        "agent process (empty backup) to the head in the backup's `Branch`; its objects are durable before "
        "the head moves (one `syncfs` per batch of objects, one more before the database is written). The "
        "baselines copy the primary's `storage/` directory to another directory on the same disk; they do not "
        "fsync, so each is also shown with the `sync -f` that makes it durable. The source is in the page cache "
        "for every tool (it was just written). The disk is shared with other work, so the tools run in "
        f"{r.get('rounds', 1)} alternating rounds; the table shows each tool's median round (all rounds in the "
        "last column).",
        "",
        "| tool | time | + sync | durable MiB/s | agent speed vs this tool | rounds (s, durable) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in tools.items():
        total = t.get("seconds_with_sync", t["seconds"])
        if name == "agent":
            sync = f"(sync itself {_s(t['sync_seconds_itself'])})" if "sync_seconds_itself" in t else "-"
        else:
            sync = _s(t["sync_seconds"])
        ratio = "1" if name == "agent" else f"{total / agent:.2f}x"
        rounds = ", ".join(f"{x:.2f}" for x in t.get("all_seconds", [total]))
        lines.append(f"| {name} | {_s(t['seconds'])} | {sync} | {mb / total:.0f} | {ratio} | {rounds} |")
    lines += ["", f"Agent peak RSS: primary {tools['agent']['rss_mb'].get('primary')} MB, backup "
              f"{tools['agent']['rss_mb'].get('backup')} MB; CPU: primary {tools['agent']['primary_cpu_s']} s, "
              f"backup {tools['agent']['backup_cpu_s']} s.", ""]
    if "initial.png" in images and r.get("store") != "realistic":
        lines += ["![initial sync](benchmarks/initial.png)", ""]
    ratio = tools["cp -a"]["seconds_with_sync"] / agent
    store = "realistic store, LAN" if r.get("store") == "realistic" else "files of one size"
    targets.append(f"| first sync ≥ 0.9x `cp -a` + `sync` ({store}) | {ratio:.2f}x | "
                   f"{_verdict(ratio >= 0.9, f'{0.9 / ratio:.1f}x too slow')} |")
    return lines


def _wan(r: dict, targets: list[str]) -> list[str]:
    links = {link["name"]: link for link in r["links"]}
    lines = [
        "## 7. LAN and WAN",
        "",
        "The same agents on loopback (LAN) and over shaped links (`bench/wan.py`): two network namespaces, "
        "`sbperf-b` and `sbperf-p`, joined by a veth pair with `tbf` at the link's rate on both ends. This kernel "
        "has no `netem` (nor `fq`), so no qdisc can add delay: a relay carries each connection over the veth and "
        "holds every piece of data for half the RTT in each direction (one RTT per request and answer). It does "
        "not reproduce TCP's slow start against the RTT. Baselines over the same path in the same run: a plain "
        "TCP transfer of as many bytes (the path's bandwidth) and `rsync -a` of the primary's `storage/` over ssh.",
        "",
        "**First sync** (one library, empty backup; backup agent start → head published, its objects durable):",
        "",
        "| link | data | agent | agent Mbit/s | plain TCP Mbit/s | agent / TCP | rsync -a over ssh | agent vs rsync |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["first_sync"]:
        label = links[row["link"]]["label"]
        lines.append(
            f"| {label} | {_size(row['bytes'])} in {row['objects']} objects | {_s(row['agent_seconds'])} | "
            f"{row['agent_mbit']:g} | {row['tcp_mbit']:g} | {row['agent_mbit'] / row['tcp_mbit']:.0%} | "
            f"{_s(row['rsync_ssh_seconds'])} | {row['rsync_ssh_seconds'] / row['agent_seconds']:.2f}x |")
        if links[row["link"]]["rtt"] and links[row["link"]]["rate_mbit"] >= 1000:
            share = row["agent_mbit"] / row["tcp_mbit"]
            speed = row["rsync_ssh_seconds"] / row["agent_seconds"]
            targets.append(f"| first sync over {label}: ≥ 80 % of plain TCP and ≥ rsync -a over ssh | "
                           f"{share:.0%} of TCP, {speed:.2f}x rsync | "
                           f"{_verdict(share >= 0.8 and speed >= 1, 'below')} |")
    lines += [
        "",
        "**RPO** (same writer and libraries as section 1):",
        "",
        "| link | rate | achieved | p50 | p99 | max | not arrived | CPU per head move: primary / backup |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in r["rpo"]:
        link = links[p["link"]]
        lines.append(f"| {link['label']} | {p['rate']:g}/s | {p['achieved_rate']:g}/s | {_s(p['p50'])} | "
                     f"{_s(p['p99'])} | {_s(p['max'])} | {p['unresolved']} | {_per_move(p)} |")
        if link["rtt"] and link["rate_mbit"] >= 1000 and p["rate"] == 100:
            bound = 1 + 3 * link["rtt"]
            miss = f"{p['p99'] / bound:.1f}x the target"
            targets.append(f"| RPO p99 ≤ 1 s + 3 RTT ({_s(bound)}) at 100/s over {link['label']} | {_s(p['p99'])} | "
                           f"{_verdict(p['p99'] <= bound, miss)} |")
    return [*lines, ""]


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else float("nan")


def markdown(results: dict, images: list[str]) -> str:
    mode = "quick" if results["plan"]["quick"] else "full"
    command = results.get("command", "python -m bench" + (" --quick" if results["plan"]["quick"] else ""))
    runs = _runs(results)
    origin = ("Generated by the runs listed below." if runs else
              f"Generated by `{command.strip()}` ({mode} sizes) on {results['started']} "
              f"({results['elapsed_s'] / 60:.1f} min).")
    lines = [
        "# Benchmarks",
        "",
        f"{origin} Every number comes from a run on the lab "
        "(two MariaDB servers on loopback addresses, both agents as real processes: primary agent → HTTP → "
        "backup agent → database); baselines ran on the same machine in the same run as the agent they are "
        "compared with. Raw data: `docs/benchmarks.json`.",
        "",
        *runs,
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in results["machine"].items()],
        "",
        "The machine is shared (other sessions run test suites on it at the same time) and has few cores: "
        "absolute numbers are noisy; the ratios within the run are what to read.",
        "",
    ]
    targets: list[str] = []
    if "rpo" in results:
        r = results["rpo"]
        lines += [
            "## 1. RPO: head move on the primary → same head in the backup's `Branch`",
            "",
            f"{r['libraries']} libraries; each commit adds one file to a random library (4 writer threads at a "
            "fixed schedule). Latency is measured from the writer's committed `Branch` update to the moment a "
            "watcher (10 ms loop on the backup's database) sees that head or a later one.",
            "",
            "| rate (target) | achieved | file | commits | p50 | p95 | p99 | max | not arrived "
            "| CPU, cores: primary agent / backup agent / writer / whole machine "
            f"(of {results['machine'].get('cores (online)', '?')}) | CPU per head move: primary / backup agent |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in r["points"]:
            cpu = p["agent_cpu_share"]
            lines.append(
                f"| {p['rate']:g}/s | {p['achieved_rate']:g}/s | {_size(p['file_size'])} | {p['commits']} | "
                f"{_s(p['p50'])} | {_s(p['p95'])} | {_s(p['p99'])} | {_s(p['max'])} | {p['unresolved']} | "
                f"{cpu.get('primary', 0):.2f} / {cpu.get('backup', 0):.2f} / {_cores(cpu, 'writer')} / "
                f"{_cores(cpu, 'machine')} | {_per_move(p)} |")
        lines += ["", f"Peak RSS: primary agent {r['rss_mb'].get('primary')} MB, backup agent "
                  f"{r['rss_mb'].get('backup')} MB.", ""]
        sampled = [p for p in r["points"] if p.get("bound_samples")]
        if sampled:
            lines += [
                "**The reported RPO bound against the measured RPO** (docs/freshness.md): during each point the "
                "backup's `current_as_of` is sampled every 0.1 s from its control socket; the measured RPO at that "
                "moment is the age of the oldest commit that had certainly not arrived (its head not yet seen by the "
                "watcher after the request ended). The bound must never be lower.",
                "",
                "| rate | file | samples | bound below measured | slack p50 | slack p99 |",
                "| --- | --- | --- | --- | --- | --- |",
                *[f"| {p['rate']:g}/s | {_size(p['file_size'])} | {p['bound_samples']} | "
                  f"{p['bound_below_measured']} | {_s(p['bound_slack_p50'])} | {_s(p['bound_slack_p99'])} |"
                  for p in sampled],
                "",
            ]
        if "rpo.png" in images:
            lines += ["![RPO](benchmarks/rpo.png)", ""]
        small100 = [p for p in r["points"] if p["rate"] == 100 and p["file_size"] <= 65536]
        if small100:
            p99 = small100[0]["p99"]
            targets.append(f"| RPO p99 ≤ 1 s at 100/s over {r['libraries']} libraries, LAN (small commits) | "
                           f"{_s(p99)} | {_verdict(p99 <= 1, f'{p99:.1f}x the target')} |")
        moves = [p for p in r["points"] if p["rate"] >= 50 and p["file_size"] <= 65536 and p.get("cpu_ms_per_move")]
        if moves:
            worst = max(moves, key=lambda p: max(p["cpu_ms_per_move"].values()))
            most = max(worst["cpu_ms_per_move"].values())
            targets.append(f"| CPU per head move ≤ 2 ms, each agent (small commits at 50-100/s; worst point) | "
                           f"{_per_move(worst)} | {_verdict(most <= 2, f'{most / 2:.1f}x the target')} |")
        big100 = [p for p in r["points"] if p["rate"] == 100 and p["file_size"] > 65536]
        if big100:
            p = big100[0]
            targets.append(f"| RPO p99 ≤ 2 s at 100/s ({_size(p['file_size'])} files, writer reached "
                           f"{p['achieved_rate']:g}/s) | {_s(p['p99'])} | "
                           f"{_verdict(p['p99'] <= 2, '%.1fx the target' % (p['p99'] / 2))} |")
    if "initial" in results:
        lines += _initial(results["initial"], images, targets)
    if "realistic" in results:
        lines += _initial(results["realistic"], images, targets)
    if "incremental" in results:
        r = results["incremental"]
        lines += [
            "## 3. Incremental: one changed file",
            "",
            "Stores of N objects (files of 64 bytes: one block and one file object each, 100 per directory); the "
            "backup starts synchronized (its storage a copy of the primary's, hard-linked with `cp -al` when both "
            "hosts share a disk; rows as the agent publishes them), the rsync mirror is a `cp -al` of the same "
            "storage on the primary's disk. Then one file is added in one directory and both tools bring "
            f"their copy up to date; median of {r['repeats']}. Agent: head move on the primary → head on the backup "
            "(notification, HTTP, fsyncs, publish). rsync: `rsync -a src/ mirror/`.",
            "",
            "The agent's end-to-end time includes noticing the change (the primary's agent tails the binlog for "
            "`Branch` rows) and the notification; the sync itself is the engine's own time for that library (the "
            "`seafbackup_sync_seconds` histogram), which is what rsync's time compares with.",
            "",
            "| objects | agent end to end | agent sync itself | rsync -a | rsync / agent (end to end) "
            "| rsync / agent sync | agent RSS (primary / backup) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for p in r["points"]:
            engine = p.get("engine_median") or float("nan")
            lines.append(f"| {p['objects']:,} | {_s(p['agent_median'])} | {_s(engine)} | {_s(p['rsync_median'])} | "
                         f"{p['rsync_median'] / p['agent_median']:.1f}x | {p['rsync_median'] / engine:.0f}x | "
                         f"{p['rss_mb'].get('primary')} / {p['rss_mb'].get('backup')} MB |")
        if not any(p["objects"] >= 1_000_000 for p in r["points"]) and r.get("run", {}).get("quick", True):
            lines += ["", "The 1M-object store is measured in full mode only (building and copying it takes "
                      "longer than the quick run's budget)."]
        lines.append("")
        if "incremental.png" in images:
            lines += ["![incremental](benchmarks/incremental.png)", ""]
        big = r["points"][-1]
        ratio = big["rsync_median"] / big["agent_median"]
        engine_ratio = big["rsync_median"] / big.get("engine_median", float("nan"))
        scope = "" if big["objects"] >= 1_000_000 else " (1M: full mode only)"
        targets.append(f"| incremental ≥ 100x rsync at {big['objects']:,} objects{scope} | "
                       f"{ratio:.1f}x end to end, {engine_ratio:.0f}x sync itself | "
                       f"{_verdict(ratio >= 100, f'{100 / ratio:.1f}x short end to end')} |")
        first, last = r["points"][0], r["points"][-1]
        growth = last["agent_median"] / first["agent_median"]
        targets.append(f"| incremental flat as the store grows ({first['objects']:,} → {last['objects']:,}) | "
                       f"agent {growth:.2f}x, rsync {last['rsync_median'] / first['rsync_median']:.1f}x | "
                       f"{_verdict(growth < 2, 'grows')} |")
    if "poll" in results:
        r = results["poll"]
        lines += [
            "## 4. Poll at scale (nothing to copy)",
            "",
            "Libraries created in bulk on the primary (rows as `create_new_repo` writes them; commit objects for "
            "the first 1,000 only, since a poll reads none), the backup seeded with the same heads. "
            "The backup agent polls every 1.8 s; the first poll after start also fills the agent's state store. "
            "Primary CPU: the primary agent's utime+stime during the poll (from `/proc/<pid>/stat`).",
            "",
            "| libraries | first poll | steady poll (median) | primary agent CPU per poll "
            "| peak RSS primary / backup |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in r["points"]:
            steady = _median([x["seconds"] for x in p["steady"]])
            cpu = _median([x["primary_cpu_s"] for x in p["steady"]])
            first = p["first"]["seconds"] if p["first"] else float("nan")
            lines.append(f"| {p['libraries']:,} | {_s(first)} | {_s(steady)} | {cpu:.2f} s | "
                         f"{p['rss_mb'].get('primary')} / {p['rss_mb'].get('backup')} MB |")
        lines.append("")
        if "poll.png" in images:
            lines += ["![poll](benchmarks/poll.png)", ""]
        big = r["points"][-1]
        steady = _median([x["seconds"] for x in big["steady"]])
        targets.append(f"| full poll ≤ 5 s at {big['libraries']:,} libraries | {_s(steady)} | "
                       f"{_verdict(steady <= 5, f'{steady / 5:.1f}x the target')} |")
        c = r.get("primary_cost")
        if c:
            i, n, b = c["idle"], c["no_agent"], c["busy"]
            lines += [
                "## 6. Primary cost",
                "",
                f"{c['libraries']:,} libraries on the primary. Idle: both agents running with their heartbeats (the "
                "backup pulls one a second; the primary writes its replicated heartbeat row and reads the binlog's "
                f"end once a second), nothing changing, for {i['seconds']:g} s; against the same window with no "
                f"agent (the backup agent meanwhile: {i.get('backup_agent_cpu_share', float('nan')):.3f} cores). Busy: "
                f"{b['rate']:g} head moves/s spread over 1,000 of the libraries for a few seconds, backup agent on.",
                "",
                "| window | primary agent CPU (cores) | mariadbd CPU (cores) | Questions/s | Com_select/s |",
                "| --- | --- | --- | --- | --- |",
                f"| no agent | - | {n['mariadb_cpu_share']:.3f} | {n['Questions_per_s']:g} | "
                f"{n['Com_select_per_s']:g} |",
                f"| idle agents, heartbeats on | {i['agent_cpu_share']:.3f} | {i['mariadb_cpu_share']:.3f} | "
                f"{i['Questions_per_s']:g} | {i['Com_select_per_s']:g} |",
                f"| {b['rate']:g} moves/s (achieved {b['achieved_rate']:g}/s) | {b['agent_cpu_share']:.3f} | "
                f"{b['mariadb_cpu_share']:.3f} | | |",
                "",
                f"RPO in the busy window with {c['libraries']:,} libraries: p50 {_s(b['p50'])}, p99 {_s(b['p99'])}, "
                f"max {_s(b['max'])} ({b['unresolved']} not arrived).",
                "",
            ]
    if "wan" in results:
        lines += _wan(results["wan"], targets)
    rss_all = []
    for key in ("rpo",):
        if key in results:
            rss_all += list(results[key]["rss_mb"].values())
    for key in ("initial", "realistic"):
        if key in results:
            rss_all += list(results[key]["tools"]["agent"]["rss_mb"].values())
    if "wan" in results:
        for row in results["wan"]["first_sync"]:
            rss_all += list(row["rss_mb"].values())
    for key in ("incremental", "poll"):
        if key in results:
            for p in results[key]["points"]:
                rss_all += list(p["rss_mb"].values())
    if rss_all:
        peak = max(rss_all)
        lines += ["## 5. Memory", "", f"Peak RSS (VmHWM) of either agent over all cases above: {peak:.0f} MB.", ""]
        targets.append(f"| peak RSS ≤ 150 MB (both agents, all cases) | {peak:.0f} MB | "
                       f"{_verdict(peak <= 150, f'{peak / 150:.1f}x the target')} |")
    head = ["## Targets", "", "| target | measured | |", "| --- | --- | --- |", *targets, ""]
    insert_at = lines.index("## Machine")
    lines[insert_at:insert_at] = head
    if FINDINGS.exists():
        lines += [FINDINGS.read_text().rstrip(), ""]
    return "\n".join(lines)

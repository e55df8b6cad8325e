"""RPO: commits on the primary at a fixed rate, the time until the backup's Branch shows each head."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass, field

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.seafile.db import connect
from seafbackup_lab.lab import Lab
from seafbackup_lab.writer import Put, SeafileServer


@dataclass
class RpoRun:
    rate: float
    duration: float
    file_size: int
    commits: int = 0
    achieved_rate: float = 0.0
    latencies: list[float] = field(default_factory=list)
    unresolved: int = 0
    commit_seconds: list[float] = field(default_factory=list)
    bound_samples: int = 0
    bound_below_measured: int = 0
    """Samples whose reported RPO bound was lower than the RPO measured at that moment (must be 0)."""
    bound_slack: list[float] = field(default_factory=list)
    """Reported bound minus measured RPO, per sample (seconds)."""


class _Tracker:
    """Pending (repo -> [(seq, t_committed)]) resolved by a watcher that reads the backup's Branch."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[str, list[tuple[int, float]]] = {}
        self.seq_of: dict[tuple[str, str], int] = {}
        self.latencies: list[float] = []
        self.arrivals: list[tuple[float, float]] = []
        """(committed, arrived no earlier than): the watcher's previous look, when the head was not there yet"""
        self.last_look = 0.0

    def committed(self, repo: str, seq: int, head: str, t: float) -> None:
        with self.lock:
            self.seq_of[(repo, head)] = seq
            self.pending.setdefault(repo, []).append((seq, t))

    def seen(self, rows: list[tuple[str, str]], now: float) -> None:
        with self.lock:
            previous, self.last_look = self.last_look, now
            for repo, head in rows:
                seq = self.seq_of.get((repo, head))
                if seq is None or repo not in self.pending:
                    continue
                left = []
                for s, t in self.pending[repo]:
                    if s <= seq:
                        self.latencies.append(now - t)
                        self.arrivals.append((t, max(previous, t)))
                    else:
                        left.append((s, t))
                if left:
                    self.pending[repo] = left
                else:
                    del self.pending[repo]

    def waiting(self) -> list[str]:
        with self.lock:
            return list(self.pending)


def measured_rpo_floor(arrivals: list[tuple[float, float]], pending: list[float], start: float,
                       end: float) -> float:
    """A lower bound of the true RPO at any instant of [start, end]: the age at `start` of the oldest commit made
    by `start` that had certainly not arrived on the backup by `end` (0 if none)."""
    ages = [start - t for t, arrived in arrivals if t <= start and arrived >= end]
    ages += [start - t for t in pending if t <= start]
    return max(ages, default=0.0)


def _sample_bounds(socket_path: str, samples: list[tuple[float, float, float | None]], stop: threading.Event,
                   interval: float = 0.1) -> None:
    """(request start, request end, rpo_bound_seconds) from the backup agent's control socket, in monotonic time."""
    import http.client
    import socket as socketlib

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
            self.sock.connect(socket_path)

    offset = time.time() - time.monotonic()
    while not stop.is_set():
        conn = UnixConnection("agent")
        started = time.monotonic()
        try:
            conn.request("GET", "/freshness")
            doc = json.loads(conn.getresponse().read())
        except OSError:
            doc = None
        finally:
            conn.close()
        ended = time.monotonic()
        if doc is not None and doc.get("current_as_of") is not None:
            # The bound as of the request's start, from the agent's current_as_of (the same machine's clock).
            samples.append((started, ended, started + offset - doc["current_as_of"]))
        stop.wait(interval)


def _watch(lab: Lab, tracker: _Tracker, stop: threading.Event, interval: float = 0.01) -> None:
    conn = connect(load_seafile_conf(lab.backup.seafile_conf_dir).database)
    try:
        while not stop.is_set():
            repos = tracker.waiting()
            if repos:
                rows = []
                with conn.cursor() as cur:
                    for start in range(0, len(repos), 1000):
                        part = repos[start : start + 1000]
                        cur.execute("SELECT repo_id, commit_id FROM Branch WHERE name='master' AND repo_id IN ("
                                    + ",".join(["%s"] * len(part)) + ")", part)
                        rows += cur.fetchall()
                tracker.seen(rows, time.monotonic())
            time.sleep(interval)
    finally:
        conn.close()


class _Payload:
    """Distinct file contents cheaply: slices of one random buffer, each with a unique prefix."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer = os.urandom(max(size * 2, 1 << 20))
        self.counter = 0
        self.lock = threading.Lock()

    def next(self) -> bytes:
        with self.lock:
            self.counter += 1
            n = self.counter
        offset = random.randrange(0, len(self.buffer) - self.size + 1)
        tag = f"{n:016d}".encode()
        return tag + self.buffer[offset : offset + self.size - len(tag)]


def run_rpo(lab: Lab, repos: list[str], *, rate: float, duration: float, file_size: int, threads: int = 4,
            drain_timeout: float = 120.0, control_socket: str | None = None) -> RpoRun:
    """Commit one file of `file_size` bytes at `rate` commits/s for `duration` s, spread over `repos`;
    with `control_socket`, also sample the backup's reported RPO bound against the measured RPO."""
    run = RpoRun(rate, duration, file_size)
    total = max(1, int(rate * duration))
    tracker = _Tracker()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(lab, tracker, stop), daemon=True)
    watcher.start()
    samples: list[tuple[float, float, float | None]] = []
    sampler = None
    if control_socket:
        sampler = threading.Thread(target=_sample_bounds, args=(control_socket, samples, stop), daemon=True)
        sampler.start()
    payload = _Payload(file_size)
    host = lab.primary
    shares = [repos[i::threads] for i in range(threads)]
    start = time.monotonic() + 0.2
    counter = iter(range(total))
    counter_lock = threading.Lock()
    commit_times: list[float] = []
    errors: list[BaseException] = []

    def writer(mine: list[str]) -> None:
        seqs: dict[str, int] = {}
        try:
            with SeafileServer(host.seafile_conf_dir, host.seafile_data_dir) as server:
                while True:
                    with counter_lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    repo = random.choice(mine)
                    seqs[repo] = seqs.get(repo, 0) + 1
                    data = payload.next()
                    t = time.monotonic()
                    head = server.commit(repo, [Put(f"rpo/f{i:07d}.bin", data)])
                    done = time.monotonic()
                    commit_times.append(done - t)
                    tracker.committed(repo, seqs[repo], head, done)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(share,)) for share in shares]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - start
    deadline = time.monotonic() + drain_timeout
    while tracker.waiting() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.join()
    if sampler is not None:
        sampler.join()
    if errors:
        raise errors[0]
    pending = [t for entries in tracker.pending.values() for _, t in entries]
    for started, ended, bound in samples:
        measured = measured_rpo_floor(tracker.arrivals, pending, started, ended)
        run.bound_samples += 1
        run.bound_slack.append(bound - measured)
        if bound < measured:
            run.bound_below_measured += 1
    run.commits = total
    run.achieved_rate = total / elapsed
    run.latencies = sorted(tracker.latencies)
    run.unresolved = sum(len(v) for v in tracker.pending.values())
    run.commit_seconds = sorted(commit_times)
    return run


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]

"""Summarize py-spy collapsed stacks (`--format raw`): where an agent's time goes, by function.

    python -m bench.stacks FILE [--top 25] [--busy]

Shares are of all samples (with --idle recording, waiting counts too); --busy drops samples whose leaf is
the event loop's selector or a thread pool worker waiting for work.
"""

from __future__ import annotations

import argparse
from collections import Counter

IDLE_LEAVES = ("select (selectors.py", "_worker (concurrent/futures/thread.py", "wait (threading.py",
               "poll (selectors.py", "_wait_for_tstate_lock", "get (queue.py", "readinto (socket.py")
"""Leaves that wait (readinto: a blocking read, e.g. the binlog reader's thread waiting for events)."""


def load(path: str, busy: bool) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if busy and any(frames[-1].startswith(leaf) or leaf in frames[-1] for leaf in IDLE_LEAVES):
                continue
            stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    stacks = load(args.file, args.busy)
    total = sum(c for _, c in stacks) or 1
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        names = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].split("/")[-1] + ")" if " (" in f else f
                 for f in frames]
        for name in set(names):
            inclusive[name] += count
        own[names[-1]] += count
    print(f"{total} samples")
    print("inclusive:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")
    print("self:")
    for name, count in own.most_common(args.top):
        print(f"  {100 * count / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()

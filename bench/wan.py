"""The WAN lab: the agents' traffic crosses two network namespaces joined by a veth pair, shaped.

    sbperf-b (10.231.0.2) --veth, tbf at the link's rate both ways-- sbperf-p (10.231.0.1)

This machine's kernel has no `netem` (nor `fq`): a qdisc cannot add delay. So the link's bandwidth is the
kernel's (tbf on both veth ends) and its latency is added by a relay (`python -m bench.wan relay`): each
route listens on a loopback address, carries each connection over the veth and delays every piece of data
by half the RTT in each direction, so that each request-answer exchange costs one RTT. What it does not
reproduce: TCP's own slow start and window growth against the RTT (the TCP across the veth sees none);
the plain TCP transfer that measures the link's bandwidth crosses the same relay and link.

The agents, both databases and the writer stay in the root namespace (the lab's processes); only the
agents' HTTP traffic (and the baselines') takes the link. Namespaces: `ip netns`, package iproute2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NS_PRIMARY = "sbperf-p"
NS_BACKUP = "sbperf-b"
VETH_PRIMARY = "sbperf-vp"
VETH_BACKUP = "sbperf-vb"
ADDR_PRIMARY = "10.231.0.1"
ADDR_BACKUP = "10.231.0.2"
CLONE_NEWNET = 0x40000000
_CHUNK = 256 * 1024
_IN_FLIGHT_CHUNKS = 64
"""Pieces held per direction of a connection while they wait out the delay (about 16 MiB at most)."""


@dataclass(frozen=True)
class Link:
    name: str
    rtt: float
    """seconds"""
    rate_mbit: int

    @property
    def label(self) -> str:
        rate = f"{self.rate_mbit // 1000} Gbit/s" if self.rate_mbit >= 1000 else f"{self.rate_mbit} Mbit/s"
        return f"{self.rtt * 1000:g} ms, {rate}"


LINKS = (Link("wan-20ms-1g", 0.020, 1000), Link("wan-60ms-100m", 0.060, 100))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def link_down() -> None:
    """Remove the namespaces (and with them the veth pair); nothing if they are not there."""
    for ns in (NS_PRIMARY, NS_BACKUP):
        if Path(f"/run/netns/{ns}").exists():
            _ip("netns", "del", ns)


def link_up(link: Link) -> None:
    """Both namespaces, the veth pair between them, addresses, and tbf at the link's rate on both ends."""
    link_down()
    _ip("netns", "add", NS_PRIMARY)
    _ip("netns", "add", NS_BACKUP)
    _ip("link", "add", VETH_PRIMARY, "type", "veth", "peer", "name", VETH_BACKUP)
    for ns, dev, addr in ((NS_PRIMARY, VETH_PRIMARY, ADDR_PRIMARY), (NS_BACKUP, VETH_BACKUP, ADDR_BACKUP)):
        _ip("link", "set", dev, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        # A burst of at least one timer tick's worth of data, else tbf cannot reach its rate.
        burst = max(64 * 1024, link.rate_mbit * 1_000_000 // 8 // 250)
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                        f"{link.rate_mbit}mbit", "burst", str(burst), "latency", "100ms"],
                       check=True, capture_output=True)


_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def _in_netns(name: str) -> Iterator[None]:
    """This thread in namespace `name` meanwhile (sockets made inside stay there)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def _socket_in(ns: str) -> socket.socket:
    with _in_netns(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy one direction, each piece delivered `delay` seconds after it arrived (order kept)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_IN_FLIGHT_CHUNKS)

    async def feed() -> None:
        while True:
            data = await reader.read(_CHUNK)
            await pieces.put((loop.time() + delay, data))
            if not data:
                return

    feeder = asyncio.create_task(feed())
    try:
        while True:
            due, data = await pieces.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        feeder.cancel()


async def _join(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                b: tuple[asyncio.StreamReader, asyncio.StreamWriter], delay: float) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1], delay), _pipe(b[0], a[1], delay), return_exceptions=True)
    finally:
        for _, writer in (a, b):
            writer.close()


async def _relay(routes: list[tuple[str, int, str, int]], one_way: float) -> None:
    """Each route: listen on (host, port) here; carry each connection from sbperf-b over the veth to a
    listener in sbperf-p, which connects to (target, port) here. The delay is added on the listening side."""
    loop = asyncio.get_running_loop()
    servers = []
    for index, (host, port, target_host, target_port) in enumerate(routes):
        far_port = 20000 + index
        far = _socket_in(NS_PRIMARY)
        far.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        far.bind((ADDR_PRIMARY, far_port))

        async def exit_side(reader, writer, target_host=target_host, target_port=target_port):
            try:
                onward = await asyncio.open_connection(target_host, target_port)
            except OSError:
                writer.close()
                return
            await _join((reader, writer), onward, 0.0)

        async def entry_side(reader, writer, far_port=far_port):
            sock = _socket_in(NS_BACKUP)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, (ADDR_PRIMARY, far_port))
                onward = await asyncio.open_connection(sock=sock)
            except OSError:
                sock.close()
                writer.close()
                return
            await _join((reader, writer), onward, one_way)

        servers.append(await asyncio.start_server(exit_side, sock=far))
        servers.append(await asyncio.start_server(entry_side, host, port, reuse_address=True))
    print("ready", flush=True)
    await asyncio.Event().wait()


class Relay:
    """`python -m bench.wan relay` as a subprocess: routes "host:port=target_host:target_port"."""

    def __init__(self, link: Link, routes: dict[tuple[str, int], tuple[str, int]]) -> None:
        argv = [sys.executable, "-m", "bench.wan", "relay", "--one-way", str(link.rtt / 2)]
        argv += [f"{h}:{p}={th}:{tp}" for (h, p), (th, tp) in routes.items()]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            raise RuntimeError("the WAN relay did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def tcp_transfer_mbit(address: tuple[str, int], sink: tuple[str, int], nbytes: int) -> float:
    """Bytes sent through `address` (a relay route to `sink`, where `_Sink` counts them): Mbit/s of the data."""
    with _Sink(sink) as received:
        payload = os.urandom(1 << 20)
        t = time.monotonic()
        with socket.create_connection(address) as conn:
            sent = 0
            while sent < nbytes:
                conn.sendall(payload)
                sent += len(payload)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # the sink's answer once it has read everything
        seconds = time.monotonic() - t
    assert received.total >= nbytes, (received.total, nbytes)
    return nbytes * 8 / seconds / 1e6


class _Sink:
    """A TCP server thread that reads one connection to its end, then answers one byte."""

    def __init__(self, address: tuple[str, int]) -> None:
        import threading

        self.total = 0
        self.listener = socket.create_server(address, reuse_port=False)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while data := conn.recv(1 << 20):
                self.total += len(data)
            conn.sendall(b"k")

    def __enter__(self) -> _Sink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=60)
        self.listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.wan")
    sub = parser.add_subparsers(dest="command", required=True)
    relay = sub.add_parser("relay")
    relay.add_argument("--one-way", type=float, required=True, help="seconds added in each direction")
    relay.add_argument("routes", nargs="+")
    args = parser.parse_args(argv)
    routes = []
    for route in args.routes:
        listen, target = route.split("=")
        host, port = listen.rsplit(":", 1)
        target_host, target_port = target.rsplit(":", 1)
        routes.append((host, int(port), target_host, int(target_port)))
    asyncio.run(_relay(routes, args.one_way))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Object storage against `rclone sync`: first sync and one changed file, filesystem -> S3 and S3 -> S3.

    python -m bench.objectstore --objects 10000 [--objects 100000] [--json FILE]

One library of N/2 small files (N objects: a block and a file object each, plus directories and commits) on
the lab primary, written to its filesystem or to S3 buckets of the lab's Ceph (radosgw). `local-sync`
copies it into the backup's buckets in a subprocess (peak RSS from its rusage); `rclone sync` (Debian's
rclone, 16 transfers and checkers) copies the same objects into other buckets in the same run. Then one
file changes on the primary and both copy again: ours walks from the new commit, rclone lists and compares
everything.

Addresses: the MariaDB lab on SEAFBACKUP_BENCH_ADDR_PREFIX (bench/lab.py), Ceph on SEAFBACKUP_BENCH_CEPH_ADDR
(default 127.0.0.72).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3

from bench.lab import make_lab
from bench.procstat import peak_rss_mb
from seafbackup_agent.objectstore.backend_conf import Backend, S3Backend, render_sections
from seafbackup_agent.seafile.storage import ObjType
from seafbackup_lab.ceph import CephCluster
from seafbackup_lab.lab import Lab
from seafbackup_lab.writer import Put, SeafileServer, bulk_files

CEPH_ADDR = os.environ.get("SEAFBACKUP_BENCH_CEPH_ADDR", "127.0.0.72")
FILE_SIZE = 2048
LAST_CPU = [0.0]
"""CPU seconds (user + system) of the last measured command."""
PROFILE_DIR: Path | None = None
"""`--profile DIR`: each `local-sync` runs under `py-spy record` (collapsed stacks, one file per run in DIR)."""


def _set_backends(lab: Lab, host: str, backends: dict[ObjType, Backend] | None, base: dict[str, str]) -> None:
    path = lab.hosts[host].seafile_conf_dir / "seafile.conf"
    base.setdefault(host, path.read_text())
    text = base[host]
    for section, values in render_sections(backends or {}).items():
        text += f"\n[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    path.write_text(text)


def _buckets(ceph: CephCluster, s3, name: str) -> dict[ObjType, Backend]:
    host, port = ceph.s3_host.split(":")
    out: dict[ObjType, Backend] = {}
    for obj_type in ObjType:
        bucket = f"{name}-{obj_type.value}"
        s3.create_bucket(Bucket=bucket)
        out[obj_type] = S3Backend(bucket, ceph.access_key, ceph.secret_key, host=host, port=int(port),
                                  path_style_request=True, use_v4_signature=True)
    return out


def _measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str, str]:
    """Run `cmd` to its end: (seconds, peak RSS in MiB from its own rusage, stdout, stderr); its CPU seconds
    are left in `LAST_CPU`."""
    with open(os.devnull, "rb") as stdin, _temp() as out, _temp() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, env=env)
        # Peak RSS from /proc while it runs (a child's rusage counts the forking parent's pages too).
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError):
                peak = max(peak, peak_rss_mb(proc.pid))
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        LAST_CPU[0] = usage.ru_utime + usage.ru_stime
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}): {stderr[-2000:]}")
    return seconds, peak, stdout, stderr


def _temp():
    import tempfile

    return tempfile.TemporaryFile()


def _local_sync(lab: Lab) -> dict:
    """`seaf-backup-cmd local-sync` in a subprocess: seconds, objects, bytes, peak RSS."""
    p, b = lab.primary, lab.backup
    cmd = [sys.executable, "-m", "seafbackup_agent.cli.main", "local-sync", "--json", "--source-conf-dir",
           str(p.seafile_conf_dir), "--source-data-dir", str(p.seafile_data_dir), "--conf-dir", str(b.seafile_conf_dir),
           "--data-dir", str(b.seafile_data_dir)]
    if PROFILE_DIR is not None:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        out = PROFILE_DIR / f"local-sync-{time.strftime('%H%M%S')}.txt"
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "50", "--threads",
               "--output", str(out), "--", *cmd]
    seconds, peak, stdout, _err = _measured(cmd)
    doc = json.loads("\n".join(line for line in stdout.splitlines() if not line.startswith("py-spy>")))
    objects = sum(d["commits"] + d["fs_objects"] + d["blocks"] for d in doc)
    data = sum(d["bytes"] for d in doc)
    engine = sum(float(d.get("duration") or 0) for d in doc)
    return {"seconds": round(seconds, 2), "sync_seconds": round(engine, 2), "cpu_seconds": round(LAST_CPU[0], 1),
            "objects": objects, "bytes": data,
            "objects_per_second": round(objects / seconds, 1), "mib_per_second": round(data / seconds / 2**20, 2),
            "peak_rss_mb": round(peak, 1)}


def _rclone(ceph: CephCluster, pairs: list[tuple[str, str]]) -> dict:
    """`rclone sync SRC DST` for each pair (16 transfers, 16 checkers): seconds, objects, bytes, peak RSS."""
    # rclone 1.60's S3 client refuses a CA bundle (AWS_CA_BUNDLE) on its transport; the lab is plain HTTP.
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env = dict(env, RCLONE_CONFIG_LAB_TYPE="s3", RCLONE_CONFIG_LAB_PROVIDER="Ceph",
               RCLONE_CONFIG_LAB_ENDPOINT=ceph.s3_endpoint, RCLONE_CONFIG_LAB_ACCESS_KEY_ID=ceph.access_key,
               RCLONE_CONFIG_LAB_SECRET_ACCESS_KEY=ceph.secret_key, RCLONE_CONFIG_LAB_FORCE_PATH_STYLE="true")
    total = 0.0
    cpu = 0.0
    transferred = 0
    peak = 0.0
    for src, dst in pairs:
        seconds, rss, _out, err = _measured(
            ["rclone", "sync", src, dst, "--transfers", "16", "--checkers", "16", "--use-json-log", "-v",
             "--stats", "0"], env)
        total += seconds
        cpu += LAST_CPU[0]
        peak = max(peak, rss)
        transferred += sum(1 for line in err.splitlines() if '"msg":"Copied' in line)
    return {"seconds": round(total, 2), "cpu_seconds": round(cpu, 1), "objects": transferred,
            "objects_per_second": round(transferred / total, 1) if total else None, "peak_rss_mb": round(peak, 1)}


def _upload(data_dir: Path, backends: dict[ObjType, Backend]) -> int:
    """The filesystem store's objects into S3 buckets under Seafile's keys, 32 PUTs in flight (the agent's own
    S3 client: the bench's setup takes half the CPU it would through boto3's put_object)."""
    import concurrent.futures

    from seafbackup_agent.objectstore.s3_bucket import S3Bucket

    jobs = []
    for obj_type in ObjType:
        backend = backends[obj_type]
        assert isinstance(backend, S3Backend)
        bucket = S3Bucket(backend)
        base = data_dir / "storage" / obj_type.value
        for path in base.glob("*/??/*"):
            if len(path.name) == 38:
                jobs.append((bucket, path.parts[-3], path.parent.name + path.name, path))

    def put(job: tuple[S3Bucket, str, str, Path]) -> None:
        job[0].write(job[1], job[2], job[3].read_bytes())

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(put, jobs))
    return len(jobs)


def run_case(lab: Lab, ceph: CephCluster, s3, objects: int, source_on_s3: bool, tag: str) -> dict:
    conf_texts: dict[str, str] = {}
    shutil.rmtree(lab.primary.seafile_data_dir, ignore_errors=True)
    shutil.rmtree(lab.backup.seafile_data_dir, ignore_errors=True)
    lab.primary.seafile_data_dir.mkdir(parents=True)
    lab.backup.seafile_data_dir.mkdir(parents=True)
    target = _buckets(ceph, s3, f"{tag}-dst")
    mirror = _buckets(ceph, s3, f"{tag}-rclone")
    source: dict[ObjType, Backend] | None = None
    _set_backends(lab, "primary", None, conf_texts)
    _set_backends(lab, "backup", target, conf_texts)
    try:
        files = objects // 2
        started = time.monotonic()
        with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as writer:
            repo = writer.create_library(f"bench-{tag}", "alice@example.com")
            writer.commit(repo, list(bulk_files(files, FILE_SIZE)))
        if source_on_s3:  # the same library, moved into the primary's own buckets
            source = _buckets(ceph, s3, f"{tag}-src")
            _upload(lab.primary.seafile_data_dir, source)
            shutil.rmtree(lab.primary.seafile_data_dir / "storage")
            _set_backends(lab, "primary", source, conf_texts)
        written = time.monotonic() - started

        def rclone_pairs() -> list[tuple[str, str]]:
            pairs = []
            for obj_type in ObjType:
                dst = mirror[obj_type]
                assert isinstance(dst, S3Backend)
                if source is None:
                    src = str(lab.primary.seafile_data_dir / "storage" / obj_type.value)
                else:
                    src_bucket = source[obj_type]
                    assert isinstance(src_bucket, S3Backend)
                    src = f"lab:{src_bucket.bucket}"
                pairs.append((src, f"lab:{dst.bucket}"))
            return pairs

        first = _local_sync(lab)
        rclone_first = _rclone(ceph, rclone_pairs())
        copied = sum(item["Size"] for b in mirror.values() if isinstance(b, S3Backend)
                     for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b.bucket)
                     for item in page.get("Contents", ()))
        rclone_first["bytes"] = copied  # the same objects as ours, under rclone's names
        rclone_first["mib_per_second"] = round(copied / rclone_first["seconds"] / 2**20, 2)
        with SeafileServer(lab.primary.seafile_conf_dir, lab.primary.seafile_data_dir) as writer:
            writer.commit(repo, [Put(f"bulk/d{(files // 2) // 100:05d}/f{files // 2:07d}.bin", b"one change")])
        change = _local_sync(lab)
        rclone_change = _rclone(ceph, rclone_pairs())
    finally:
        for host, text in conf_texts.items():
            (lab.hosts[host].seafile_conf_dir / "seafile.conf").write_text(text)
    return {"case": f"{'S3' if source_on_s3 else 'filesystem'} -> S3", "objects": objects, "files": files,
            "file_size": FILE_SIZE, "library_written_seconds": round(written, 1),
            "first_sync": first, "rclone_first_sync": rclone_first,
            "one_change": change, "rclone_one_change": rclone_change,
            "one_change_speedup": round(rclone_change["seconds"] / change["seconds"], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, action="append", help="objects per library (default 10000)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--only", choices=["fs", "s3"], help="only filesystem -> S3, or only S3 -> S3")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="run each local-sync under py-spy record "
                        "(collapsed stacks in DIR; its figures then include py-spy's own CPU)")
    args = parser.parse_args()
    global PROFILE_DIR
    PROFILE_DIR = args.profile
    sizes = args.objects or [10_000]
    lab, disks = make_lab("seafbackup-bench-objects-")
    ceph = CephCluster(Path(lab.dir) / "ceph", CEPH_ADDR)
    results = []
    try:
        ceph.up()
        s3 = boto3.client("s3", endpoint_url=ceph.s3_endpoint, aws_access_key_id=ceph.access_key,
                          aws_secret_access_key=ceph.secret_key, region_name="us-east-1")
        for n in sizes:
            for on_s3 in ((False,) if args.only == "fs" else (True,) if args.only == "s3" else (False, True)):
                result = run_case(lab, ceph, s3, n, on_s3, f"b{n}-{'s3' if on_s3 else 'fs'}")
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        ceph.remove()
        lab.down()
        disks.detach()
        shutil.rmtree(lab.dir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

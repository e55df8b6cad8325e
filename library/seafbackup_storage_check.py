#!/usr/bin/python
"""Ansible module: reach each S3 bucket and Ceph pool a Seafile installation stores its objects in."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: seafbackup_storage_check
short_description: Reach the S3 buckets and Ceph pools of seafile.conf's storage backends
description:
  - Reads C([commit_object_backend]), C([fs_object_backend]) and C([block_backend]) from O(seafile_conf), or
    takes them from O(backends) (what setup_backup.yml is about to write on the backup), and reaches each
    bucket (HEAD and a one-key LIST with the given credentials) or pool (connect as the cephx user, the pool
    exists, an object can be looked up). With O(write), also writes and deletes a probe object
    (C(seafbackup-preflight-probe), not a Seafile object name).
  - Fails with one line per backend that cannot be used, saying what failed (no such bucket, credentials
    refused, endpoint unreachable, no such pool, monitors unreachable, ceph.conf missing). Changes nothing
    (the probe object is deleted again).
version_added: "0.1.0"
author: seafbackup developers
options:
  seafile_conf:
    description: Path of seafile.conf whose backend sections are checked.
    type: path
  backends:
    description:
      - Backends by object type (C(commits), C(fs), C(blocks)), each a dict of seafile.conf keys (C(name),
        C(bucket), C(key_id), C(key), C(host)... or C(ceph_config), C(pool), C(ceph_client_id)). Replaces the
        sections of O(seafile_conf) for the types it names.
    type: dict
    default: {}
  write:
    description: Also write and delete a probe object in each bucket and pool.
    type: bool
    default: false
requirements:
  - boto3 on the host for S3 backends, python3-rados for Ceph backends
"""

EXAMPLES = r"""
- name: The backup's buckets are reachable and writable
  seafbackup_storage_check:
    backends: "{{ seafbackup_seafile_conf_backup_backends }}"
    write: true
  no_log: true
"""

RETURN = r"""
backends:
  description: What was checked, by object type (no credentials).
  type: list
  elements: dict
  returned: always
"""

import configparser
import contextlib
import importlib.machinery
import importlib.util
import os
import sys

from ansible.module_utils.basic import AnsibleModule

SECTIONS = {"commits": "commit_object_backend", "fs": "fs_object_backend", "blocks": "block_backend"}
PROBE = "seafbackup-preflight-probe"


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "yes", "true", "on")


def _rados():
    if "rados" in sys.modules:
        return sys.modules["rados"]
    spec = importlib.util.find_spec("rados")
    if spec is None:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = f"/usr/lib/python3/dist-packages/rados{suffix}"
            if os.path.isfile(candidate):
                spec = importlib.util.spec_from_file_location("rados", candidate)
                break
    if spec is None or spec.loader is None:
        raise RuntimeError("python3-rados (librados) is not installed for this Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules["rados"] = module
    spec.loader.exec_module(module)
    return module


def check_s3(conf: dict, write: bool) -> str:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError:
        return "boto3 is not installed on this host"
    for key in ("bucket", "key_id", "key"):
        if not str(conf.get(key, "")).strip():
            return f"{key} is missing"
    bucket = conf["bucket"]
    endpoint = None
    if conf.get("host"):
        endpoint = ("https" if _flag(conf.get("use_https", False)) else "http") + "://" + str(conf["host"])
    where = f"S3 bucket {bucket} at {endpoint or 'AWS'}"
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=conf["key_id"], aws_secret_access_key=conf["key"],
        region_name=conf.get("aws_region") or "us-east-1",
        config=botocore.config.Config(
            signature_version="s3v4" if _flag(conf.get("use_v4_signature", False)) or not endpoint else "s3",
            s3={"addressing_style": "path" if _flag(conf.get("path_style_request", False)) else "auto"},
            connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}))
    try:
        client.head_bucket(Bucket=bucket)
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
        if write:
            client.put_object(Bucket=bucket, Key=PROBE, Body=b"seafbackup preflight")
            client.delete_object(Bucket=bucket, Key=PROBE)
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        reason = {"404": "does not exist", "NoSuchBucket": "does not exist",
                  "403": "refuses these credentials (403 Forbidden)", "AccessDenied": "refuses these credentials",
                  "InvalidAccessKeyId": "does not know this key_id",
                  "SignatureDoesNotMatch": "refuses this key (signature mismatch)"}.get(code, f"answered {code}")
        return f"{where} {reason} ({exc.operation_name})"
    except botocore.exceptions.BotoCoreError as exc:
        return f"{where} cannot be reached: {exc}"
    finally:
        client.close()
    return ""


def check_ceph(conf: dict, write: bool) -> str:
    for key in ("ceph_config", "pool"):
        if not str(conf.get(key, "")).strip():
            return f"{key} is missing"
    path, pool = conf["ceph_config"], conf["pool"]
    user = conf.get("ceph_client_id") or "admin"
    if not os.path.isfile(path):
        return f"ceph_config {path} does not exist on this host"
    try:
        rados = _rados()
    except (RuntimeError, ImportError) as exc:
        return str(exc)
    cluster = rados.Rados(conffile=path, rados_id=user)
    try:
        cluster.connect(timeout=10)
    except rados.Error as exc:
        return f"cannot reach the Ceph monitors of {path} as client.{user}: {exc}"
    try:
        if not cluster.pool_exists(pool):
            return f"Ceph pool {pool} does not exist ({path})"
        ioctx = cluster.open_ioctx(pool)
        try:
            with contextlib.suppress(rados.ObjectNotFound):
                ioctx.stat(PROBE)
            if write:
                ioctx.write_full(PROBE, b"seafbackup preflight")
                ioctx.remove_object(PROBE)
        finally:
            ioctx.close()
    except rados.Error as exc:
        return f"Ceph pool {pool}: client.{user} may not {'write' if write else 'read'} it: {exc}"
    finally:
        cluster.shutdown()
    return ""


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "seafile_conf": {"type": "path"},
            # Only the secrets are masked (below): bucket and pool names must show in what fails.
            "backends": {"type": "dict", "default": {}, "no_log": False},
            "write": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    backends: dict[str, dict] = {}
    if module.params["seafile_conf"]:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            with open(module.params["seafile_conf"], encoding="utf-8") as fh:
                parser.read_file(fh)
        except (OSError, configparser.Error) as exc:
            module.fail_json(msg=f"cannot read {module.params['seafile_conf']}: {exc}")
        for obj_type, section in SECTIONS.items():
            if parser.has_section(section):
                backends[obj_type] = dict(parser[section])
    for obj_type, conf in (module.params["backends"] or {}).items():
        if obj_type not in SECTIONS:
            module.fail_json(msg=f"backends: {obj_type} is not an object type (commits, fs, blocks)")
        backends[obj_type] = dict(conf or {})
    for conf in backends.values():
        for secret in ("key", "sse_c_key"):
            if conf.get(secret):
                module.no_log_values.add(str(conf[secret]))
    checked = []
    failures = []
    for obj_type in SECTIONS:
        conf = backends.get(obj_type, {})
        name = str(conf.get("name", "fs")).strip() or "fs"
        if name == "s3":
            error = check_s3(conf, module.params["write"])
            where = f"S3 bucket {conf.get('bucket')}"
        elif name == "ceph":
            error = check_ceph(conf, module.params["write"])
            where = f"Ceph pool {conf.get('pool')}"
        elif name == "fs":
            error, where = "", "filesystem"
        else:
            error, where = f"name = {name} is not a backend seafbackup supports (fs, s3, ceph)", name
        checked.append({"type": obj_type, "backend": name, "where": where, "ok": not error})
        if error:
            failures.append(f"[{SECTIONS[obj_type]}] ({obj_type}): {error}")
    if failures:
        module.fail_json(msg="; ".join(failures), backends=checked)
    module.exit_json(changed=False, backends=checked)


if __name__ == "__main__":
    main()

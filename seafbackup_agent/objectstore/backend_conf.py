"""seafile.conf's storage backends: `[commit_object_backend]`, `[fs_object_backend]`, `[block_backend]`.

Read the way Seafile Professional reads them (its manual's "Setup With S3 Storage" and "Setup With Ceph"
pages, and seafobj's `objstore_factory.py`, which seahub and Seafile's Python tools use):

- no section, or no `name`: the filesystem, `<seafile-data>/storage/<type>`; `name = fs` with `dir = D`
  puts that type in `D/storage/<type>`.
- `name = s3`: `bucket`, `key_id`, `key` (required); `host` (`host` or `host:port`, no scheme: AWS when
  absent), `use_https`, `path_style_request`, `use_v4_signature` (booleans, false when absent),
  `aws_region`, `sse_c_key`. Each object type has a bucket of its own; an object's key is
  `<repo_id>/<obj_id>` (the store id for fs objects and blocks).
- `name = ceph`: `ceph_config` (the cluster's ceph.conf), `pool`, optional `ceph_client_id` (the cephx
  user, `client.<id>`; `admin` when absent). An object is named `<obj_id>` in the RADOS namespace
  `<repo_id>`.

`[storage] enable_storage_classes = true` (several storage classes, one per library) is refused: the
agent would need the class of each library from seahub's database.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path

from seafbackup_agent.errors import ConfigError
from seafbackup_agent.seafile.storage import ObjType

SECTIONS = {
    ObjType.COMMITS: "commit_object_backend",
    ObjType.FS: "fs_object_backend",
    ObjType.BLOCKS: "block_backend",
}


@dataclass(frozen=True, slots=True)
class FsBackend:
    dir: Path | None = None
    """`dir =`: the type lives in `<dir>/storage/<type>`; None: in the installation's seafile-data."""


@dataclass(frozen=True, slots=True)
class S3Backend:
    bucket: str
    key_id: str
    key: str = field(repr=False)
    host: str | None = None
    port: int | None = None
    use_https: bool = False
    path_style_request: bool = False
    use_v4_signature: bool = False
    aws_region: str | None = None
    sse_c_key: str | None = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str | None:
        """None: AWS's own endpoint for the region."""
        if self.host is None:
            return None
        scheme = "https" if self.use_https else "http"
        return f"{scheme}://{self.host}" + (f":{self.port}" if self.port else "")

    def describe(self) -> str:
        return f"S3 bucket {self.bucket} at {self.endpoint_url or 'AWS'}"


@dataclass(frozen=True, slots=True)
class CephBackend:
    ceph_config: Path
    pool: str
    ceph_client_id: str | None = None

    def describe(self) -> str:
        return f"Ceph pool {self.pool} ({self.ceph_config})"


Backend = FsBackend | S3Backend | CephBackend


def parse_backends(path: Path, parser: configparser.ConfigParser) -> dict[ObjType, Backend]:
    """The backend of each object type (`FsBackend()` where seafile.conf names none)."""
    if parser.get("storage", "enable_storage_classes", fallback="").strip().lower() == "true":
        raise ConfigError(f"{path}: [storage] enable_storage_classes (several storage backends) is not supported",
                          hint="seafbackup supports one backend per object type")
    return {obj_type: _backend(path, parser, section) for obj_type, section in SECTIONS.items()}


def _backend(path: Path, parser: configparser.ConfigParser, section: str) -> Backend:
    if not parser.has_section(section):
        return FsBackend()
    values = parser[section]
    name = values.get("name", "fs").strip()
    if name == "fs":
        directory = values.get("dir", "").strip()
        return FsBackend(Path(directory) if directory else None)
    if name == "s3":
        return _s3(path, section, values)
    if name == "ceph":
        missing = [key for key in ("ceph_config", "pool") if not values.get(key, "").strip()]
        if missing:
            raise ConfigError(f"{path}: [{section}] lacks {', '.join(missing)}")
        return CephBackend(Path(values["ceph_config"].strip()), values["pool"].strip(),
                           values.get("ceph_client_id", "").strip() or None)
    raise ConfigError(f"{path}: [{section}] name = {name} is not a backend seafbackup supports",
                      hint="use fs, s3 or ceph")


def _s3(path: Path, section: str, values: configparser.SectionProxy) -> S3Backend:
    missing = [key for key in ("bucket", "key_id", "key") if not values.get(key, "").strip()]
    if missing:
        raise ConfigError(f"{path}: [{section}] lacks {', '.join(missing)}")
    host: str | None = None
    port: int | None = None
    address = values.get("host", "").strip()
    if address:
        # As seafobj: the part before the first colon is the host, a number after it the port.
        host, _, port_text = address.partition(":")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigError(f"{path}: [{section}] host = {address} has no valid port",
                                  hint="host is host or host:port, without http://")
            port = int(port_text)

    def flag(key: str) -> bool:
        try:
            return values.getboolean(key, fallback=False)
        except ValueError as exc:
            raise ConfigError(f"{path}: [{section}] {key} must be true or false") from exc

    return S3Backend(
        bucket=values["bucket"].strip(),
        key_id=values["key_id"].strip(),
        key=values["key"].strip(),
        host=host,
        port=port,
        use_https=flag("use_https"),
        path_style_request=flag("path_style_request"),
        use_v4_signature=flag("use_v4_signature"),
        aws_region=values.get("aws_region", "").strip() or None,
        sse_c_key=values.get("sse_c_key", "").strip() or None,
    )


def render_sections(backends: dict[ObjType, Backend]) -> dict[str, dict[str, str]]:
    """The seafile.conf sections that name `backends` (what setup writes on the backup; fs: none)."""
    sections: dict[str, dict[str, str]] = {}
    for obj_type, backend in backends.items():
        if isinstance(backend, S3Backend):
            values = {"name": "s3", "bucket": backend.bucket, "key_id": backend.key_id, "key": backend.key}
            if backend.host:
                values["host"] = backend.host + (f":{backend.port}" if backend.port else "")
            for key in ("use_https", "path_style_request", "use_v4_signature"):
                values[key] = "true" if getattr(backend, key) else "false"
            if backend.aws_region:
                values["aws_region"] = backend.aws_region
            if backend.sse_c_key:
                values["sse_c_key"] = backend.sse_c_key
            sections[SECTIONS[obj_type]] = values
        elif isinstance(backend, CephBackend):
            values = {"name": "ceph", "ceph_config": str(backend.ceph_config), "pool": backend.pool}
            if backend.ceph_client_id:
                values["ceph_client_id"] = backend.ceph_client_id
            sections[SECTIONS[obj_type]] = values
        elif backend.dir is not None:
            sections[SECTIONS[obj_type]] = {"name": "fs", "dir": str(backend.dir)}
    return sections

"""One object type of a Seafile installation in a Ceph pool through librados, named as Seafile names it:
object `<obj_id>` in the RADOS namespace `<repo_id>` (the store id for fs objects and blocks).

librados comes from Debian's `python3-rados` (see `librados.py`). Its calls block and release the GIL, so
worker threads give parallel I/O; each thread has its own I/O context because the namespace is a property
of the context. `write_full` returns once the write is committed on every replica of the placement group:
a write that returned is durable.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from seafbackup_agent.errors import ConfigError, StorageError
from seafbackup_agent.objectstore.backend_conf import CephBackend
from seafbackup_agent.objectstore.librados import load_rados
from seafbackup_agent.seafile.ids import is_object_id

CONNECT_TIMEOUT = 10


class RadosPool:
    def __init__(self, conf: CephBackend) -> None:
        self.conf = conf
        self.where = conf.describe()
        self._rados = load_rados()
        self._cluster: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._contexts: list[Any] = []

    def identity(self) -> str:
        return f"ceph:{self.cluster().get_fsid()}/{self.conf.pool}"

    def cluster(self) -> Any:
        with self._lock:
            if self._cluster is None:
                rados = self._rados
                try:
                    cluster = rados.Rados(conffile=str(self.conf.ceph_config), rados_id=self.conf.ceph_client_id)
                    cluster.connect(timeout=CONNECT_TIMEOUT)
                except rados.Error as exc:
                    raise StorageError(f"connecting to the Ceph cluster of {self.conf.ceph_config} as "
                                       f"client.{self.conf.ceph_client_id or 'admin'} failed: {exc}") from exc
                self._cluster = cluster
            return self._cluster

    def _ioctx(self, namespace: str) -> Any:
        ioctx = getattr(self._local, "ioctx", None)
        if ioctx is None:
            try:
                ioctx = self.cluster().open_ioctx(self.conf.pool)
            except self._rados.ObjectNotFound as exc:
                raise StorageError(f"{self.where} does not exist") from exc
            except self._rados.Error as exc:
                raise StorageError(f"opening {self.where} failed: {exc}") from exc
            self._local.ioctx = ioctx
            with self._lock:
                self._contexts.append(ioctx)
        ioctx.set_namespace(namespace)
        return ioctx

    def read(self, store_id: str, obj_id: str) -> bytes | None:
        ioctx = self._ioctx(store_id)
        try:
            size, _mtime = ioctx.stat(obj_id)
            # read() returns at most `length` bytes (8 KiB by default): ask for the whole object.
            return bytes(ioctx.read(obj_id, length=size)) if size else b""
        except self._rados.ObjectNotFound:
            return None
        except self._rados.Error as exc:
            raise StorageError(f"reading {store_id}/{obj_id} from {self.where} failed: {exc}") from exc

    def exists(self, store_id: str, obj_id: str) -> bool:
        ioctx = self._ioctx(store_id)
        try:
            ioctx.stat(obj_id)
            return True
        except self._rados.ObjectNotFound:
            return False
        except self._rados.Error as exc:
            raise StorageError(f"looking up {store_id}/{obj_id} in {self.where} failed: {exc}") from exc

    def write(self, store_id: str, obj_id: str, data: bytes) -> None:
        ioctx = self._ioctx(store_id)
        try:
            ioctx.write_full(obj_id, data)
        except self._rados.Error as exc:
            raise StorageError(f"writing {store_id}/{obj_id} to {self.where} failed: {exc}") from exc

    def iter_ids(self, store_id: str) -> Iterator[str]:
        for _store, obj_id in self._list(store_id):
            yield obj_id

    def list_all(self) -> Iterator[tuple[str, str]]:
        return self._list(self._rados.LIBRADOS_ALL_NSPACES)

    def _list(self, namespace: str) -> Iterator[tuple[str, str]]:
        # A context of its own: the listing spans calls, in which this thread may use its context otherwise.
        try:
            ioctx = self.cluster().open_ioctx(self.conf.pool)
        except self._rados.Error as exc:
            raise StorageError(f"opening {self.where} failed: {exc}") from exc
        try:
            ioctx.set_namespace(namespace)
            for obj in ioctx.list_objects():
                if is_object_id(obj.key):
                    yield obj.nspace, obj.key
        except self._rados.Error as exc:
            raise StorageError(f"listing {self.where} failed: {exc}") from exc
        finally:
            ioctx.close()

    def check(self) -> None:
        """Reach the pool with this cephx user; ConfigError saying what failed."""
        try:
            cluster = self.cluster()
        except StorageError as exc:
            raise ConfigError(exc.message) from exc
        if not cluster.pool_exists(self.conf.pool):
            raise ConfigError(f"{self.where} does not exist")
        try:
            ioctx = cluster.open_ioctx(self.conf.pool)
            try:
                ioctx.stat("seafbackup-preflight")
            except self._rados.ObjectNotFound:
                pass
            finally:
                ioctx.close()
        except self._rados.Error as exc:
            raise ConfigError(f"{self.where}: client.{self.conf.ceph_client_id or 'admin'} may not read it: "
                              f"{exc}") from exc

    def close(self) -> None:
        with self._lock:
            for ioctx in self._contexts:
                ioctx.close()
            self._contexts.clear()
            if self._cluster is not None:
                self._cluster.shutdown()
                self._cluster = None

import os
import threading
import time

import pytest

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ConfigError, InvalidIdError
from seafbackup_agent.seafile import storage
from seafbackup_agent.seafile.ids import is_object_file_name, object_id, repo_id
from seafbackup_agent.seafile.storage import FilesystemStore, ObjType, WriteBatch

REPO = "96e09ca5-5454-4dfa-9d9e-461eb3e38930"


def test_ids_are_validated_strictly():
    assert repo_id(REPO) == REPO
    assert object_id("a" * 40) == "a" * 40
    for bad in ("A" * 40, "a" * 39, "../" + "a" * 37, None, 5):
        with pytest.raises(InvalidIdError, match="40 lowercase hex"):
            object_id(bad)
    for bad in (REPO.upper(), REPO[:-1], REPO.replace("-", "")):
        with pytest.raises(InvalidIdError, match="lowercase UUID"):
            repo_id(bad)
    assert is_object_file_name("b" * 38) and not is_object_file_name(".tmp" + "b" * 34)


def _conf(tmp_path, text):
    (tmp_path / "seafile.conf").write_text(text)
    return tmp_path


DB = "[database]\ntype = mysql\nhost = 127.0.0.1\nport = 3307\nuser = u\npassword = secret\ndb_name = seafile_db\n"


def test_config_reads_database_and_backup_sections(tmp_path):
    conf = load_seafile_conf(_conf(tmp_path, DB + "[backup]\nprimary_url = http://p:8090\nsync_token = " + "a" * 40
                                   + "\nsync_poll_interval = 0.5\n"))
    assert conf.database.port == 3307 and conf.database.db_name == "seafile_db"
    assert conf.backup is not None and conf.backup.primary_url == "http://p:8090"
    assert conf.backup.sync_poll_interval_hours == 0.5
    assert "secret" not in repr(conf) and "a" * 40 not in repr(conf)


@pytest.mark.parametrize(
    ("backup", "message"),
    [
        ("primary_url = http://a\nbackup_url = http://b\nsync_token = " + "a" * 40, "both"),
        ("sync_token = " + "a" * 40, "neither"),
        ("primary_url = http://a\nsync_token = short", "sync_token"),
        ("primary_url = http://a\nsync_token = " + "a" * 40 + "\nsync_poll_interval = soon", "hours"),
        ("backup_url = http://b\nsync_token = " + "a" * 40 + "\nbinlog_server_id = 0", "binlog_server_id"),
    ],
)
def test_config_errors_say_what_to_fix(tmp_path, backup, message):
    with pytest.raises(ConfigError, match=message):
        load_seafile_conf(_conf(tmp_path, DB + "[backup]\n" + backup + "\n"))


def test_config_requires_mysql(tmp_path):
    with pytest.raises(ConfigError, match="type = mysql"):
        load_seafile_conf(_conf(tmp_path, "[database]\ntype = sqlite\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_seafile_conf(tmp_path / "nowhere")


def test_store_writes_atomically_and_lists_only_object_names(tmp_path):
    store = FilesystemStore(tmp_path)
    oid = "ab" + "c" * 38
    store.write(ObjType.BLOCKS, REPO, oid, b"data")
    path = tmp_path / "storage/blocks" / REPO / "ab" / ("c" * 38)
    assert path.read_bytes() == b"data" and store.read(ObjType.BLOCKS, REPO, oid) == b"data"
    # A leftover temporary file from an interrupted write is not an object.
    (path.parent / f".{'d' * 38}.1234.tmp").write_bytes(b"partial")
    (path.parent / "junk").write_bytes(b"x")
    assert list(store.iter_ids(ObjType.BLOCKS, REPO)) == [oid]
    assert os.listdir(path.parent).count("c" * 38) == 1
    assert store.read(ObjType.BLOCKS, REPO, "ab" + "d" * 38) is None


def test_backup_section_extensions(tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    conf = load_seafile_conf(_conf(tmp_path, DB + "[backup]\nbackup_url = https://b:8091\nsync_token = " + "a" * 40
                                   + f"\nlisten = 10.0.0.1:9000\nworkers = 4\nssl_cert = {cert}\nssl_key = {cert}\n"))
    assert conf.backup.mode == "primary" and conf.backup.listen == ("10.0.0.1", 9000)
    assert conf.backup.workers == 4 and conf.backup.ssl_cert == cert and conf.backup.binlog_server_id is None
    conf = load_seafile_conf(_conf(tmp_path, DB + "[backup]\nbackup_url = https://b:8091\nsync_token = " + "a" * 40
                                   + "\nbinlog_server_id = 4000000001\n"))
    assert conf.backup.binlog_server_id == 4000000001
    with pytest.raises(ConfigError, match="go together"):
        load_seafile_conf(_conf(tmp_path, DB + "[backup]\nbackup_url = https://b\nsync_token = " + "a" * 40
                                + f"\nssl_cert = {cert}\n"))
    with pytest.raises(ConfigError, match="host:port"):
        load_seafile_conf(_conf(tmp_path, DB + "[backup]\nbackup_url = https://b\nsync_token = " + "a" * 40
                                + "\nlisten = nowhere\n"))


def test_a_write_batch_places_objects_only_when_flushed_and_in_the_order_put(tmp_path, monkeypatch):
    store = FilesystemStore(tmp_path)
    placed: list[str] = []
    real_place = WriteBatch._place

    def place(self, tmp, final):
        placed.append(final)
        real_place(self, tmp, final)

    monkeypatch.setattr(WriteBatch, "_place", place)
    batch = store.batch(max_objects=3)
    ids = [f"{i:02x}" + "e" * 38 for i in range(5)]
    batch.put([(ObjType.BLOCKS, REPO, oid, oid.encode()) for oid in ids[:2]])
    assert batch.has(ObjType.BLOCKS, REPO, ids[0]) and not store.exists(ObjType.BLOCKS, REPO, ids[0])
    batch.put([(ObjType.FS, REPO, ids[2], b"fs")])  # the third object fills the batch: flushed
    assert placed == [store.path(ObjType.BLOCKS, REPO, ids[0]), store.path(ObjType.BLOCKS, REPO, ids[1]),
                      store.path(ObjType.FS, REPO, ids[2])]
    assert store.read(ObjType.FS, REPO, ids[2]) == b"fs" and not batch.has(ObjType.FS, REPO, ids[2])
    batch.put([(ObjType.COMMITS, REPO, ids[3], b"commit"), (ObjType.COMMITS, REPO, ids[3], b"again")])
    batch.seal()
    assert store.read(ObjType.COMMITS, REPO, ids[3]) == b"commit" and len(placed) == 4
    # A failed sync discards what it staged: no object, no temporary file left behind.
    batch.put([(ObjType.BLOCKS, REPO, ids[4], b"never placed")])
    batch.discard()
    assert not store.exists(ObjType.BLOCKS, REPO, ids[4])
    assert [p.name for p in (tmp_path / "storage").rglob(".*.tmp")] == []


def test_concurrent_durability_barriers_share_a_syncfs_that_started_after_each_asked(tmp_path, monkeypatch):
    calls: list[tuple[float, float]] = []

    def slow_syncfs(path):
        started = time.monotonic()
        time.sleep(0.05)
        calls.append((started, time.monotonic()))

    monkeypatch.setattr(storage, "syncfs", slow_syncfs)
    monkeypatch.setattr(storage, "_groups", {})
    asked: dict[int, float] = {}
    returned: dict[int, float] = {}

    # All ask at about the same moment (a busy machine spreads thread starts apart; a staggered start then
    # measured the scheduler, not the sharing).
    together = threading.Barrier(12)

    def barrier(n):
        together.wait()
        asked[n] = time.monotonic()
        storage.durable(tmp_path)
        returned[n] = time.monotonic()

    threads = [threading.Thread(target=barrier, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) < len(threads) / 2  # shared, not one each
    for n in asked:  # each caller was covered by a syncfs that began after it asked and ended before it returned
        assert any(asked[n] <= start and end <= returned[n] for start, end in calls), n

"""seafile.conf's `[..._backend]` sections, read as Seafile Professional reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from seafbackup_agent.config import load_seafile_conf
from seafbackup_agent.errors import ConfigError
from seafbackup_agent.objectstore.backend_conf import CephBackend, FsBackend, S3Backend, render_sections
from seafbackup_agent.objectstore.object_index import ObjectIndex
from seafbackup_agent.seafile.storage import ObjType

DATABASE = "[database]\ntype = mysql\nhost = db\nuser = seafile\npassword = pw\ndb_name = seafile_db\n"


def conf(tmp_path: Path, text: str):
    (tmp_path / "seafile.conf").write_text(DATABASE + text)
    return load_seafile_conf(tmp_path)


def test_no_sections_is_the_filesystem(tmp_path):
    c = conf(tmp_path, "")
    assert c.backends == dict.fromkeys(ObjType, FsBackend()) and c.on_filesystem


def test_the_manuals_s3_and_ceph_examples(tmp_path):
    c = conf(tmp_path, """
[commit_object_backend]
name = s3
bucket = my-commit-objects
key_id = your-key-id
key = your-secret-key
use_v4_signature = true
aws_region = eu-central-1

[fs_object_backend]
name = s3
bucket = my-fs-objects
key_id = your-key-id
key = your-secret-key
host = 192.168.1.123:8080
path_style_request = true

[block_backend]
name = ceph
ceph_config = /etc/ceph/ceph.conf
pool = seafile-blocks
ceph_client_id = seafile
""")
    commits, fs, blocks = (c.backends[t] for t in (ObjType.COMMITS, ObjType.FS, ObjType.BLOCKS))
    assert commits == S3Backend("my-commit-objects", "your-key-id", "your-secret-key", use_v4_signature=True,
                                aws_region="eu-central-1")
    assert commits.endpoint_url is None  # AWS itself
    assert fs == S3Backend("my-fs-objects", "your-key-id", "your-secret-key", host="192.168.1.123", port=8080,
                           path_style_request=True)
    assert fs.endpoint_url == "http://192.168.1.123:8080"
    assert blocks == CephBackend(Path("/etc/ceph/ceph.conf"), "seafile-blocks", "seafile")
    assert "your-secret-key" not in repr(c.backends)
    assert not c.on_filesystem
    # What setup writes on the backup reads back the same.
    text = "".join(f"\n[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                   for s, values in render_sections(c.backends).items())
    assert conf(tmp_path, text).backends == c.backends


def test_fs_with_a_dir(tmp_path):
    c = conf(tmp_path, "[block_backend]\nname = fs\ndir = /mnt/blocks\n")
    assert c.backends[ObjType.BLOCKS] == FsBackend(Path("/mnt/blocks")) and not c.on_filesystem


@pytest.mark.parametrize(("text", "message"), [
    ("[block_backend]\nname = s3\nbucket = b\nkey_id = k\n", "lacks key"),
    ("[block_backend]\nname = ceph\npool = p\n", "lacks ceph_config"),
    ("[block_backend]\nname = swift\n", "name = swift is not a backend"),
    ("[block_backend]\nname = s3\nbucket = b\nkey_id = k\nkey = s\nhost = h:port\n", "no valid port"),
    ("[block_backend]\nname = s3\nbucket = b\nkey_id = k\nkey = s\nuse_https = maybe\n", "use_https must be"),
    ("[storage]\nenable_storage_classes = true\n", "enable_storage_classes"),
])
def test_what_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        conf(tmp_path, text)


def test_the_index_answers_only_what_was_put_and_rebuilds_when_untrusted(tmp_path):
    index = ObjectIndex(tmp_path / "index.sqlite")
    repo = "0d2b6a5e-6a43-4a2e-9d55-3f1c7b6b9a10"
    listed = [(repo, "a" * 40), (repo, "b" * 40)]
    assert index.ensure(ObjType.BLOCKS, "s3:x/blocks", lambda: listed) == 2
    assert index.ensure(ObjType.BLOCKS, "s3:x/blocks", lambda: listed) == 0  # trusted: no LIST
    index.add(ObjType.BLOCKS, [(repo, "c" * 40)])
    assert index.contains(ObjType.BLOCKS, repo, "c" * 40) and not index.contains(ObjType.FS, repo, "c" * 40)
    index.distrust(ObjType.BLOCKS)
    assert index.ensure(ObjType.BLOCKS, "s3:x/blocks", lambda: listed[:1]) == 1
    assert not index.contains(ObjType.BLOCKS, repo, "b" * 40)
    assert index.ensure(ObjType.BLOCKS, "s3:other/blocks", lambda: []) == 0  # another bucket: rebuilt, empty
    assert index.count(ObjType.BLOCKS) == 0
    index.close()
    (tmp_path / "broken.sqlite").write_bytes(b"not a database at all" * 100)
    broken = ObjectIndex(tmp_path / "broken.sqlite")  # unreadable: started again
    assert not broken.trusted(ObjType.BLOCKS, "s3:x/blocks")
    broken.close()

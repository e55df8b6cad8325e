"""Seafile objects: encoded byte for byte as the real server writes them (docs/seafile-format.md §11)."""

import hashlib
import json
import struct
import zlib

import pytest

from seafbackup_agent.seafile.ids import EMPTY_ID
from seafbackup_agent.seafile.objects import (
    Dirent,
    FormatError,
    SeafDir,
    SeafFile,
    compute_commit_id,
    encode_commit,
    encode_dir,
    encode_file,
    jansson_dumps,
    parse_commit,
    parse_fs_object,
    verify_block,
)
from seafbackup_agent.seafile.treediff import TreeDiff, changed_fs_objects

SERVER_COMMIT = (
    '{"commit_id": "eefcf102112ad94e21f85c007cfd761e2de85c37", "root_id": "9af83b16d985083c773e4d1f5a71a4346db7777b", '
    '"repo_id": "96e09ca5-5454-4dfa-9d9e-461eb3e38930", "creator_name": "alice@example.com", '
    '"creator": "0000000000000000000000000000000000000000", "description": "Added \\"http-upload.txt\\".", '
    '"ctime": 1795586539, "parent_id": "88d1c304ba68bcd1360214faae68ecaf64d1a80e", "second_parent_id": null, '
    '"repo_name": "reflib", "repo_desc": "reference library", "repo_category": null, "no_local_history": 1, '
    '"version": 1}'
)
SERVER_DIR = (
    '{"dirents": [{"id": "b8b4a1b02750eaa4ef55dfed72c682a03683a52a", "mode": 33188, "modifier": "alice@example.com", '
    '"mtime": 1795586501, "name": "notes-renamed.md", "size": 280}, {"id": "e5cf415f0adaa3f80fbf86022c2e1177dbf2c24d", '
    '"mode": 33188, "modifier": "alice@example.com", "mtime": 1795586501, "name": "hello.txt", "size": 25}, '
    '{"id": "1c39564f1fac0f72a97e05e0b85db839673cc8a5", "mode": 16384, "mtime": 1795586539, "name": "docs"}], '
    '"type": 3, "version": 1}'
)


def test_commit_encoding_is_byte_identical_to_the_server_sample():
    fields = json.loads(SERVER_COMMIT)
    assert encode_commit(fields).decode() == SERVER_COMMIT


def test_commit_id_is_computed_as_the_server_does():
    f = json.loads(SERVER_COMMIT)
    assert compute_commit_id(
        root_id=f["root_id"], creator=f["creator"], creator_name=f["creator_name"],
        description=f["description"], ctime=f["ctime"],
    ) == f["commit_id"]


def test_dir_encoding_sorts_dirents_descending_and_matches_the_servers_root_id():
    entries = [
        Dirent(e["name"], e["id"], e["mode"], e["mtime"], e.get("modifier"), e.get("size"))
        for e in json.loads(SERVER_DIR)["dirents"]
    ]
    dir_id, stored = encode_dir(reversed(entries))
    assert zlib.decompress(stored).decode() == SERVER_DIR
    # The sample commit's root is this very directory.
    assert dir_id == json.loads(SERVER_COMMIT)["root_id"]


def test_file_encoding_matches_the_servers_file_id():
    file_id, stored = encode_file(25, ["f2431bcafe06b700d41b65b06a81d45d673e0ff7"])
    assert file_id == "e5cf415f0adaa3f80fbf86022c2e1177dbf2c24d"
    assert json.loads(zlib.decompress(stored)) == {
        "block_ids": ["f2431bcafe06b700d41b65b06a81d45d673e0ff7"], "size": 25, "type": 1, "version": 1,
    }


def test_empty_dir_and_empty_file_are_the_empty_id_and_never_stored():
    assert encode_dir([]) == (EMPTY_ID, b"")
    assert encode_file(0, []) == (EMPTY_ID, b"")


def test_jansson_escapes_controls_in_upper_case_and_keeps_unicode_raw():
    assert jansson_dumps({"n": "a\x1fb/é\n"}, sort_keys=True) == '{"n": "a\\u001Fb/é\\n"}'.encode()


def test_parse_commit_reads_both_parents_and_rejects_a_foreign_repo():
    fields = json.loads(SERVER_COMMIT)
    fields["second_parent_id"] = "1" * 40
    commit = parse_commit(encode_commit(fields))
    assert commit.parents == ("88d1c304ba68bcd1360214faae68ecaf64d1a80e", "1" * 40)
    with pytest.raises(FormatError, match="belongs to library"):
        parse_commit(encode_commit(fields), expected_repo_id="00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    ("key", "value"),
    [("root_id", "xyz"), ("repo_id", "not-a-uuid"), ("creator", "short"), ("ctime", "1"), ("parent_id", "ABC")],
)
def test_parse_commit_rejects_what_seafile_rejects(key, value):
    fields = json.loads(SERVER_COMMIT)
    fields[key] = value
    with pytest.raises(FormatError):
        parse_commit(encode_commit(fields))


def test_fs_object_is_verified_against_the_sha1_of_its_decompressed_bytes():
    dir_id, stored = encode_dir([Dirent("a", "2" * 40, 33188, 1, "x", 3)])
    parsed = parse_fs_object(dir_id, stored)
    assert isinstance(parsed, SeafDir) and parsed.dirents[0].name == "a"
    # Other compressed bytes of the same JSON are the same object.
    assert parse_fs_object(dir_id, zlib.compress(zlib.decompress(stored), 1)) == parsed
    with pytest.raises(FormatError, match="does not match its id"):
        parse_fs_object("3" * 40, stored)
    with pytest.raises(FormatError, match="not a zlib stream"):
        parse_fs_object(dir_id, b"garbage")


def _stored_dir(entries: list) -> tuple[str, bytes]:
    body = json.dumps({"dirents": entries, "type": 3, "version": 1}).encode()
    return hashlib.sha1(body).hexdigest(), zlib.compress(body)


GOOD = {"id": "2" * 40, "mode": 33188, "mtime": 1, "name": "a", "modifier": "x", "size": 3}


@pytest.mark.parametrize("entry", [
    {**GOOD, "id": "A" * 40},
    {**GOOD, "id": "2" * 39 + " "},
    {**GOOD, "id": "2" * 38 + " 2"},
    {**GOOD, "id": "2" * 41},
    {**GOOD, "id": 2},
    {**GOOD, "name": 7},
    {**GOOD, "mode": "33188"},
    {k: v for k, v in GOOD.items() if k != "id"},
    {k: v for k, v in GOOD.items() if k != "name"},
    ["not", "an", "entry"],
    "2" * 40,
])
def test_a_directory_with_one_malformed_entry_among_good_ones_is_rejected(entry):
    # Large directories are read a column at a time; one bad entry anywhere must still be found and named.
    entries = [{**GOOD, "name": f"f{i}"} for i in range(50)]
    entries.insert(17, entry)
    obj_id, stored = _stored_dir(entries)
    with pytest.raises(FormatError, match="malformed entry"):
        parse_fs_object(obj_id, stored)


def test_ids_of_39_and_41_characters_side_by_side_are_not_two_ids():
    obj_id, stored = _stored_dir([{**GOOD, "id": "2" * 39}, {**GOOD, "id": "3" * 41, "name": "b"}])
    with pytest.raises(FormatError, match="malformed entry"):
        parse_fs_object(obj_id, stored)


def test_entries_read_a_column_at_a_time_equal_those_read_one_by_one():
    parsed = parse_fs_object(hashlib.sha1(SERVER_DIR.encode()).hexdigest(), zlib.compress(SERVER_DIR.encode()))
    expected = [Dirent(e["name"], e["id"], e["mode"], e["mtime"], e.get("modifier"), e.get("size"))
                for e in json.loads(SERVER_DIR)["dirents"]]
    assert isinstance(parsed, SeafDir) and list(parsed.dirents) == expected
    assert [(d.is_dir, d.is_file) for d in parsed.dirents] == [(False, True), (False, True), (True, False)]
    # An entry the columns cannot take (mtime null, as some clients wrote it) is read one by one: mtime 0.
    obj_id, stored = _stored_dir([{**GOOD, "mtime": None}, {**GOOD, "name": "b"}])
    parsed = parse_fs_object(obj_id, stored)
    assert isinstance(parsed, SeafDir) and [d.mtime for d in parsed.dirents] == [0, 1]


def test_version_0_objects_are_readable():
    blocks = [hashlib.sha1(b"x").digest(), hashlib.sha1(b"y").digest()]
    file_body = struct.pack(">IQ", 1, 2) + b"".join(blocks)
    file_id = hashlib.sha1(b"".join(blocks)).hexdigest()
    parsed = parse_fs_object(file_id, file_body, version=0)
    assert isinstance(parsed, SeafFile) and parsed.block_ids == tuple(b.hex() for b in blocks)

    child, name, mode = file_id, b"f.txt", 33188
    dir_body = struct.pack(">I", 3) + struct.pack(">I", mode) + child.encode() + struct.pack(">I", len(name)) + name
    dir_id = hashlib.sha1(child.encode() + name + struct.pack("<I", mode)).hexdigest()
    parsed_dir = parse_fs_object(dir_id, dir_body, version=0)
    assert isinstance(parsed_dir, SeafDir) and parsed_dir.dirents[0].id == child


def test_verify_block():
    verify_block(hashlib.sha1(b"data").hexdigest(), b"data")
    with pytest.raises(FormatError):
        verify_block(hashlib.sha1(b"data").hexdigest(), b"tampered")


def test_a_tree_diff_holds_exactly_what_changed_and_says_when_it_is_incomplete():
    store: dict[str, bytes] = {}

    def put(encoded: tuple[str, bytes]) -> str:
        store[encoded[0]] = encoded[1]
        return encoded[0]

    def tree(text: str) -> str:
        f = put(encode_file(len(text), [hashlib.sha1(text.encode()).hexdigest()]))
        same = put(encode_file(4, ["a" * 40]))
        sub = put(encode_dir([Dirent("f.txt", f, 0o100644, 1), Dirent("same.txt", same, 0o100644, 1)]))
        keep = put(encode_dir([Dirent("k.txt", same, 0o100644, 1)]))
        return put(encode_dir([Dirent("sub", sub, 0o40000, 1), Dirent("keep", keep, 0o40000, 1)]))

    old_root, new_root = tree("old"), tree("new")
    diff = changed_fs_objects(store.get, new_root, old_root, version=1)
    # The root, sub/ and sub/f.txt changed; keep/ and sub/same.txt are at the same path in the old tree.
    assert diff.complete and len(diff.objects) == 3 and new_root in diff.objects
    assert all(store[i] == raw for i, raw in diff.objects.items())
    assert changed_fs_objects(store.get, new_root, new_root, version=1) == TreeDiff({}, complete=True)
    assert not changed_fs_objects(store.get, new_root, old_root, version=1, max_objects=2).complete
    missing = dict(store)
    del missing[next(i for i in diff.objects if i != new_root)]  # a changed object unreadable on the primary
    assert not changed_fs_objects(missing.get, new_root, old_root, version=1).complete


def test_the_next_diff_of_a_large_directory_takes_its_old_version_as_the_last_diff_parsed_it():
    store: dict[str, bytes] = {}
    reads: list[str] = []

    def read(obj_id: str) -> bytes | None:
        reads.append(obj_id)
        return store.get(obj_id)

    def version_of_big_dir(changed: int) -> str:
        files = []
        for i in range(1000):
            file_id, stored = encode_file(4, [hashlib.sha1(f"{i}-{i == changed}".encode()).hexdigest()])
            store[file_id] = stored
            files.append(Dirent(f"f{i:04d}", file_id, 0o100644, 1))
        dir_id, stored = encode_dir(files)
        store[dir_id] = stored
        return dir_id

    first, second, third = version_of_big_dir(-1), version_of_big_dir(1), version_of_big_dir(2)
    changed_fs_objects(read, second, first, version=1)  # reads (and keeps) `second` as the new directory
    reads.clear()
    diff = changed_fs_objects(read, third, second, version=1)
    assert second not in reads, "the old directory was read and parsed again"
    # The same answer as from the stored objects alone: the new directory and the files at 1 and 2.
    assert set(diff.objects) == {third, *(d.id for d in parse_fs_object(third, store[third]).dirents[-3:-1])}
    assert diff.complete

"""real_vllm.utils: atomic writes keep the plain-open mode without touching the umask; folders
are installed whole; the unit hash is stable."""

import os
import stat
import threading

import pytest

from real_vllm import utils


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_write_gives_the_plain_open_mode(tmp_path, umask_027):
    target = tmp_path / "data.bin"

    def private_writer(tmp):  # as safetensors does: a 0600 file
        tmp.unlink()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.write(fd, b"payload")
        os.close(fd)

    utils.atomic_write(target, private_writer)
    assert target.read_bytes() == b"payload"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # 0666 & ~0027
    assert os.umask(0o027) == 0o027  # left as it was
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]  # no temporary left


def test_atomic_write_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("old")

    def failing(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        utils.atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_plain_file_mode_does_not_change_the_umask_seen_by_other_threads(tmp_path, umask_027):
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(int(open("/proc/self/status").read().split("Umask:")[1].split()[0], 8))

    thread = threading.Thread(target=watch)
    thread.start()
    for _ in range(200):
        utils.plain_file_mode(tmp_path)
    stop.set()
    thread.join()
    assert set(seen) == {0o027}


def test_install_folder_replaces_a_stale_folder_and_keeps_a_complete_one(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stale").write_text("x")
    new = tmp_path / "new"
    new.mkdir()
    (new / "ok").write_text("1")
    utils.install_folder(new, target, lambda folder: (folder / "ok").is_file())
    assert sorted(p.name for p in target.iterdir()) == ["ok"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "ok").write_text("2")
    utils.install_folder(other, target, lambda folder: (folder / "ok").is_file())
    assert (target / "ok").read_text() == "1"  # a complete folder is kept


def test_unit_hash_is_stable_and_in_the_unit_interval():
    # SHA-256("salt\0text")[:8] as a big-endian integer over 2^64, computed independently.
    import hashlib

    expected = int(hashlib.sha256(b"s\x00t").hexdigest()[:16], 16) / 2**64
    assert utils.unit_hash("t", "s") == expected
    values = [utils.unit_hash(str(i), "x") for i in range(1000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(v < 0.5 for v in values) / 1000 < 0.55


def test_read_versioned_json_names_what_is_missing_or_foreign(tmp_path):
    path = tmp_path / "meta.json"
    with pytest.raises(FileNotFoundError, match=r"is not a data folder \(no meta.json\); make one"):
        utils.read_versioned_json(path, "data folder", "fmt", 1, "make one")
    path.write_text('{"format": "fmt", "format_version": 2}')
    with pytest.raises(ValueError, match="is not a fmt v1 file"):
        utils.read_versioned_json(path, "data folder", "fmt", 1, "make one")
    path.write_text('{"format": "fmt", "format_version": 1, "x": 3}')
    assert utils.read_versioned_json(path, "data folder", "fmt", 1, "make one")["x"] == 3

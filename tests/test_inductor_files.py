"""Inductor's files in graphopt's cache are checked before inductor may load them
(graphopt.inductor_files), on a folder laid out as inductor lays it out (no compile here: the end-to-end
case, a truncated and a garbage .so under `graphopt eval`, is in test_compile_cache.py): a recorded file
cut short or rewritten is removed, in one line; files no finished compile recorded are removed from
graphopt's own folder when no other graphopt process uses it, and kept otherwise or in a folder the user
named; a .so another process is compiling is not recorded half-written."""
from __future__ import annotations

import fcntl
import os

import pytest

from graphopt import cache_store, inductor_files

FILES = {"ab/cabc.main.cpp": b"int main() { return 0; }\n" * 20, "ab/cabc.main.so": b"\x7fELF" + bytes(4000),
         "t5/ct5.py": b"def call(args):\n    return args\n" * 50,
         "fxgraph/3c/f3c/entry": b"pickled graph" * 30, "locks/cabc.lock": b""}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """graphopt's inductor folder holding one compile's files (nothing recorded yet)."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(inductor_files, "_held", {})
    yield _lay_out(tmp_path / "cache" / "inductor-torch9.9")
    _release()


def _lay_out(folder):
    for rel, data in FILES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def _release():
    for fd in inductor_files._held.values():
        os.close(fd)
    inductor_files._held.clear()


def test_recorded_files_cut_short_or_rewritten_are_removed_in_one_line(folder):
    assert inductor_files.record(folder) == 4  # the lock file is inductor's, not an artifact
    so, py = folder / "ab/cabc.main.so", folder / "t5/ct5.py"
    so.write_bytes(FILES["ab/cabc.main.so"][:1000])  # truncated: SIGBUS when inductor loads it
    py.write_bytes(b"garbage(" + bytes(len(FILES["t5/ct5.py"]) - 8))  # same size, other bytes
    lines = []
    removed = inductor_files.verify(folder, log=lines.append)
    assert sorted(removed) == ["ab/cabc.main.so: 1000 bytes, 4004 recorded",
                               "t5/ct5.py: sha256 differs from the recorded one"]
    assert len(lines) == 1 and "discarded 2 files of the compile cache" in lines[0] and str(folder) in lines[0]
    assert not so.exists() and not py.exists()
    assert (folder / "ab/cabc.main.cpp").exists() and (folder / "fxgraph/3c/f3c/entry").exists()
    _release()
    assert inductor_files.verify(folder, log=lines.append) == [] and len(lines) == 1  # the rest is sound


def test_files_nobody_recorded_go_only_when_graphopt_is_alone_in_its_own_folder(folder, tmp_path):
    other = cache_store.open_lock(f"inductor-files-{folder.name}-in-use")
    fcntl.flock(other, fcntl.LOCK_SH)  # another graphopt process compiling here now
    try:
        assert inductor_files.verify(folder, log=lambda m: None) == []
    finally:
        os.close(other)
    _release()
    lines = []
    removed = inductor_files.verify(folder, log=lines.append)  # alone: leftovers of a stopped compile
    assert len(removed) == 4 and all(r.endswith("not recorded by a finished compile") for r in removed)
    assert len(lines) == 1 and (folder / "locks/cabc.lock").exists()
    _release()
    theirs = _lay_out(tmp_path / "their-inductor")  # TORCHINDUCTOR_CACHE_DIR of the user's: not graphopt's files
    assert inductor_files.verify(theirs, log=lambda m: None) == [] and (theirs / "ab/cabc.main.so").exists()
    inductor_files.record(theirs)
    (theirs / "ab/cabc.main.so").write_bytes(b"")
    assert inductor_files.verify(theirs, log=lambda m: None) == ["ab/cabc.main.so: 0 bytes, 4004 recorded"]


def test_a_so_being_compiled_is_not_recorded(folder):
    fd = os.open(folder / "locks/cabc.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # inductor's lock of that key: gcc is writing the .so in place
    try:
        assert inductor_files.record(folder) == 2  # the .py and the FX graph entry only
    finally:
        os.close(fd)
    assert inductor_files.record(folder) == 2  # the .cpp and the .so, once built


def test_a_damaged_record_is_discarded_and_the_folder_counts_as_unrecorded(folder):
    inductor_files.record(folder)
    entry = cache_store.cache_root() / "entries" / "inductor-files" / folder.name
    entry.write_bytes(entry.read_bytes()[:-5])
    lines = []
    removed = inductor_files.verify(folder, log=lines.append)
    assert "discarded the corrupt cache entry" in lines[0] and len(removed) == 4 and len(lines) == 2

"""graphopt's cache folder (graphopt.cache_store): entries are written with their size and sha256 and
checked when read (a truncated or rewritten entry is discarded in one line and is a miss); `graphopt
cache` lists them per kind; `graphopt cache --clear` removes only what graphopt wrote, refuses a folder
that is not a graphopt cache (naming it), and names the TORCHINDUCTOR_CACHE_DIR it does not clear."""
from __future__ import annotations

import pytest

from graphopt import cache_store
from graphopt.cli import main
from graphopt.errors import UserError


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    return tmp_path / "cache"


def test_put_then_get_gives_the_bytes_back_and_marks_the_folder(root):
    data = bytes(range(256)) * 5
    path = cache_store.put("fx-graph", "abc123", data)
    assert path == root / "entries" / "fx-graph" / "abc123" and (root / cache_store.MARKER).is_file()
    assert cache_store.get("fx-graph", "abc123") == data
    assert cache_store.get("fx-graph", "other") is None
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]  # no temporary file left
    cache_store.put("fx-graph", "abc123", b"new")  # replaced whole
    assert cache_store.get("fx-graph", "abc123") == b"new"


@pytest.mark.parametrize("damage", ["truncated", "same size, other bytes", "no header"])
def test_a_damaged_entry_is_discarded_in_one_line_and_is_a_miss(root, damage):
    path = cache_store.put("fx-graph", "k", b"0123456789" * 100)
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[:-10], "same size, other bytes": raw[:-1] + b"X",
                      "no header": b"\x7fELF garbage"}[damage])
    lines = []
    assert cache_store.get("fx-graph", "k", log=lines.append) is None
    assert len(lines) == 1 and str(path) in lines[0] and "discarded the corrupt cache entry" in lines[0]
    assert not path.exists()  # the next put builds it afresh
    cache_store.put("fx-graph", "k", b"fresh")
    assert cache_store.get("fx-graph", "k") == b"fresh"


@pytest.mark.parametrize("kind,key", [("fx graph", "k"), ("fx", "../k"), ("fx", ""), ("", "k")])
def test_kinds_and_keys_are_plain_file_names(root, kind, key):
    with pytest.raises(ValueError, match="expected letters, digits"):
        cache_store.put(kind, key, b"x")


def test_cache_command_lists_entries_per_kind(root, capsys):
    cache_store.put("fx-graph", "a", b"x" * 2**20)
    cache_store.put("fx-graph", "b", b"y")
    cache_store.put("plans", "c", b"z")
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "fx-graph: 2 (1.0 MiB)" in out and "plans: 1 (0.0 MiB)" in out and str(root) in out


def test_clear_refuses_a_folder_that_is_not_a_graphopt_cache(tmp_path, monkeypatch, capsys):
    """The reported case: GRAPHOPT_CACHE_DIR at a folder of the user's, then --clear."""
    mine = tmp_path / "mine"
    (mine / "p").mkdir(parents=True)
    (mine / "p" / "notes.txt").write_text("keep\n")
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(mine))
    assert main(["cache", "--clear"]) == 2
    err = capsys.readouterr().err
    assert f"'{mine}' is not a graphopt cache folder" in err and "nothing removed" in err
    assert len(err.strip().splitlines()) == 1
    assert (mine / "p" / "notes.txt").read_text() == "keep\n"
    with pytest.raises(UserError, match="is not a graphopt cache folder"):
        cache_store.clear(mine)


def test_clear_removes_only_what_graphopt_wrote(root, capsys):
    cache_store.put("fx-graph", "a", b"x" * 1000)
    inductor = root / "inductor-torch9.9"
    (inductor / "ab").mkdir(parents=True)
    (inductor / "ab" / "kernel.so").write_bytes(b"\0" * 1000)
    with cache_store.lock("something"):
        pass
    (root / "notes.txt").write_text("mine")
    (root / "p").mkdir()
    (root / "p" / "data.csv").write_text("1,2")
    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"removed graphopt's cache in {root}" in out and "kept what graphopt did not write: notes.txt, p" in out
    assert sorted(p.name for p in root.iterdir()) == sorted([cache_store.MARKER, "notes.txt", "p"])
    assert (root / "notes.txt").read_text() == "mine" and (root / "p" / "data.csv").read_text() == "1,2"
    assert main(["cache", "--clear"]) == 0  # still graphopt's folder (marker kept): nothing more to remove
    assert "nothing to clear" in capsys.readouterr().out


def test_clear_of_a_folder_only_graphopt_used_removes_the_folder(root, capsys):
    cache_store.put("fx-graph", "a", b"x")
    assert main(["cache", "--clear"]) == 0
    assert not root.exists()


def test_clear_names_the_inductor_folder_the_user_set(root, tmp_path, monkeypatch, capsys):
    theirs = tmp_path / "their-inductor"
    (theirs / "ab").mkdir(parents=True)
    (theirs / "ab" / "kernel.so").write_bytes(b"\0")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(theirs))
    cache_store.put("fx-graph", "a", b"x")
    assert main(["cache", "--clear"]) == 0
    out = capsys.readouterr().out
    assert f"not cleared: {theirs} (TORCHINDUCTOR_CACHE_DIR is set" in out
    assert (theirs / "ab" / "kernel.so").exists() and not root.exists()

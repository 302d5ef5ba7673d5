"""lm-eval's own task folder indexed once per cache folder (graphopt.harness.task_index_cache): a kept index
equals lm-eval's fresh build, a changed file rebuilds it, a damaged or unrepresentable one is never trusted.
A small folder stands in for lm-eval's ~14000 built-in files (monkeypatched as the built-in folder)."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("lm_eval")
from lm_eval.tasks._index import TaskIndex  # noqa: E402

import graphopt.harness.task_index_cache as tic  # noqa: E402
from graphopt import cache_store  # noqa: E402
from graphopt.harness.tasks import _index_of_folders  # noqa: E402

FILES = {
    "a/_base.yaml": "dataset_path: json\noutput_type: multiple_choice\ndoc_to_choice: '{{choices}}'\n",
    "a/task_a.yaml": "include: _base.yaml\ntask: task_a\ntag: [family]\ndoc_to_text: '{{q}}'\n",
    "b/task_b.yaml": "task: task_b\ntag: family\noutput_type: generate_until\n"
                     "generation_kwargs: {until: ['\\n'], do_sample: false}\nmetric_list: [{metric: exact_match}]\n",
    "b/group.yaml": "group: both\ntask: [task_a, {task: task_b, num_fewshot: 2}]\n",
}


def _write(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _rows(index):
    return {k: (e.name, e.kind, e.yaml_path, e.cfg, e.tags) for k, e in index.items()}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """(the stand-in built-in folder, a build that counts its calls) in a cache folder of its own."""
    monkeypatch.setenv(cache_store.ENV, str(tmp_path / "cache"))
    root = _write(tmp_path / "builtin", FILES)
    monkeypatch.setattr(tic, "builtin_tasks_folder", lambda: root)
    calls = []

    def build(paths, **options):
        calls.append([str(p) for p in paths])
        return TaskIndex.build(paths, **options)
    return root, build, calls


def test_a_kept_index_equals_lm_evals_build_and_is_read_not_parsed(folder):
    root, build, calls = folder
    fresh = _rows(TaskIndex.build([root]))
    assert set(fresh) == {"task_a", "task_b", "both", "family"}  # tasks, a group, a tag
    assert _rows(tic.cached_folder_index(build, root, {})) == fresh and len(calls) == 1
    assert _rows(tic.cached_folder_index(build, root, {})) == fresh and len(calls) == 1  # read back, not built
    assert _rows(tic.cached_folder_index(build, root, {"resolve_includes": False})) != fresh  # options: a key
    assert len(calls) == 2


def test_a_changed_file_is_parsed_again(folder):
    root, build, calls = folder
    tic.cached_folder_index(build, root, {})
    path = root / "a/task_a.yaml"
    path.write_text(path.read_text().replace("{{q}}", "{{question}}"))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime however fast the write
    index = tic.cached_folder_index(build, root, {})
    assert len(calls) == 2 and index["task_a"].cfg["doc_to_text"] == "{{question}}"
    (root / "c").mkdir()
    (root / "c/task_c.yaml").write_text("task: task_c\n")  # a new file
    assert "task_c" in tic.cached_folder_index(build, root, {}) and len(calls) == 3


def test_a_damaged_entry_is_one_line_and_rebuilt(folder, capsys):
    root, build, calls = folder
    tic.cached_folder_index(build, root, {})
    entry, = (cache_store.cache_root() / cache_store.ENTRIES / tic.KIND).iterdir()
    entry.write_bytes(entry.read_bytes()[:-20])
    capsys.readouterr()
    assert _rows(tic.cached_folder_index(build, root, {})) == _rows(TaskIndex.build([root])) and len(calls) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("graphopt:")]
    assert len(lines) == 1 and "discarded the corrupt cache entry" in lines[0], lines
    tic.cached_folder_index(build, root, {})
    assert len(calls) == 2  # kept again, whole


def test_configs_json_would_change_are_not_kept(folder):
    """A YAML key that is not a string (doc_to_choice {0: ..}) comes back from JSON as "0": such an index is
    used as built and parsed again next time, never read back changed."""
    root, build, calls = folder
    (root / "b/task_d.yaml").write_text("task: task_d\ndoc_to_choice: {0: no, 1: yes}\n")
    for n in (1, 2):
        assert tic.cached_folder_index(build, root, {})["task_d"].cfg["doc_to_choice"] == {0: False, 1: True}
        assert len(calls) == n
    assert not (cache_store.cache_root() / cache_store.ENTRIES / tic.KIND).exists()


def test_folders_merge_as_lm_eval_merges_them(folder, tmp_path):
    """The built-in folder from the cache, an --include_path folder parsed, a name in both taken from the
    later folder (lm-eval's rule): the same index as lm-eval's one build of both."""
    root, build, calls = folder
    include = _write(tmp_path / "mine", {"task_a.yaml": "task: task_a\ndataset_path: json\ntag: mine\n"})
    want = _rows(TaskIndex.build([root, include]))
    for _ in range(2):
        assert _rows(_index_of_folders(build, [root, include], {})) == want
    assert calls == [[str(root)], [str(include)], [str(include)]]  # the built-in folder parsed once


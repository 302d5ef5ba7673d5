"""Optimised graphs kept across runs (graphopt.optimized_cache): the key follows everything that
determines the graph, a kept graph scores bit for bit as a fresh one, and a damaged entry is ignored
with one line and rebuilt."""
import copy

import pytest
import torch

import graphopt.optimized_cache as oc
from graphopt import cache_store
from graphopt.optimize_model import optimize
from graphopt.pipeline import PassContext, parse_pipeline
from graphopt.scoring.batch import ScoreModule
from tests._builders import distinct_score_inputs, random_model


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _model(preset="tiny-gqa", **changes):
    torch.manual_seed(0)
    return random_model(preset, **changes)


def _key(model=None, inputs=None, pipeline="exact-cpu", rank=0, world_size=1):
    model = model or _model()
    ctx = PassContext((), model.args, rank, world_size)
    return oc.plan_key(ScoreModule(model), inputs or distinct_score_inputs(2, 12, 6), parse_pipeline(pipeline), ctx)


def test_the_key_changes_with_every_input_of_it(monkeypatch):
    base = _key()
    assert _key() == base and _key(inputs=distinct_score_inputs(3, 20, 9)) == base  # same shape class
    ids, pos, mask, idx, tgt = distinct_score_inputs(2, 12, 6)
    changed = {
        "pipeline": _key(pipeline="exact"),
        "pass option": _key(pipeline=["exact", {"name": "cast_dtype", "attention": "float32"}]),
        "depth": _key(_model(n_layers=3)),
        "width": _key(_model(dim=96)),
        "tied": _key(_model("tiny-tied", n_kv_heads=2)),
        "dtype": _key(_model().to(torch.bfloat16)),
        "model args": _key(_model(rope_theta=5e5)),
        "batch of one": _key(inputs=distinct_score_inputs(1, 12, 6)),
        "input dtype": _key(inputs=(ids.int(), pos, mask, idx, tgt)),
        "rank": _key(rank=1, world_size=2),
    }
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    changed["torch"] = _key()
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "OTHER")
    changed["cpu"] = _key()
    monkeypatch.undo()
    monkeypatch.setattr(oc, "source_digest", lambda: "0" * 64)
    changed["graphopt source"] = _key()
    assert all(k != base for k in changed.values()), [name for name, k in changed.items() if k == base]
    assert len(set(changed.values())) == len(changed)


@pytest.mark.parametrize("preset,pipeline", [("tiny-gqa", "exact-cpu"), ("tiny-qwen3", "fast-cpu")])
def test_a_kept_graph_scores_as_a_fresh_one_bit_for_bit(preset, pipeline):
    model, inputs = _model(preset), distinct_score_inputs(2, 12, 6)
    fresh = optimize(ScoreModule(copy.deepcopy(model)), inputs, pipeline, cache=False)
    first = optimize(ScoreModule(copy.deepcopy(model)), inputs, pipeline)
    kept = optimize(ScoreModule(copy.deepcopy(model)), inputs, pipeline, keep_module_weights=False)
    assert (fresh.setup["path"], first.setup["cached"], kept.setup["cached"]) == ("blocks", False, True)
    assert kept.setup["capture_s"] == kept.setup["passes_s"] == 0.0 and kept.setup["first_call_s"] is None
    assert "kept graph" in kept.setup_summary() and "capture" in first.setup_summary()
    assert [(r.name, r.matches) for r in kept.records] == [(r.name, r.matches) for r in fresh.records]
    inputs_of = lambda opt: [(n.name, n.meta["val"].dtype, n.meta["val"].dim())  # noqa: E731 (what a reader of
                             for n in opt.graph.graph.find_nodes(op="placeholder")]  # the graph's inputs sees)
    assert inputs_of(kept) == inputs_of(fresh)
    for B, T, N in [(2, 12, 6), (3, 7, 5), (1, 9, 4)]:
        x = distinct_score_inputs(B, T, N, seed=B)
        with torch.no_grad():
            assert torch.equal(kept(*x), fresh(*x)), (B, T, N)
    assert kept.setup["first_call_s"] > 0 and "first call" in kept.setup_summary()


def test_other_weights_of_the_same_structure_use_the_kept_graph():
    """The entry holds no weight: a model of the same shape with other weights gets its own."""
    inputs = distinct_score_inputs(2, 12, 6)
    optimize(ScoreModule(_model()), inputs, "exact-cpu")
    other = _model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.5)
    kept = optimize(ScoreModule(copy.deepcopy(other)), inputs, "exact-cpu")
    fresh = optimize(ScoreModule(copy.deepcopy(other)), inputs, "exact-cpu", cache=False)
    assert kept.setup["cached"]
    with torch.no_grad():
        assert torch.equal(kept(*inputs), fresh(*inputs))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_entry_is_ignored_with_one_line_and_rebuilt(damage, cache_dir, capsys):
    model, inputs = _model(), distinct_score_inputs(2, 12, 6)
    optimize(ScoreModule(copy.deepcopy(model)), inputs, "exact")
    (path,) = (cache_dir / "entries" / oc.KIND).iterdir()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:  # a well-formed entry whose content is no plan
        cache_store.put(oc.KIND, path.name, b'{"format": 1, "outer": "no graph"}')
    capsys.readouterr()
    again = optimize(ScoreModule(copy.deepcopy(model)), inputs, "exact")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("graphopt:")]
    assert len(lines) == 1 and ("corrupt cache entry" if damage == "truncated" else "ignored the kept") in lines[0]
    assert not again.setup["cached"]
    third = optimize(ScoreModule(copy.deepcopy(model)), inputs, "exact")  # the rebuilt entry is kept
    assert third.setup["cached"]
    with torch.no_grad():
        assert torch.equal(third(*inputs), again(*inputs))

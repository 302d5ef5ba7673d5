"""Sweep expansion: counts and pass lists per mode; run keys are stable and change with the config."""
from graphopt.runner.config import config_from_dict
from graphopt.runner.sweep import expand

BASE = ["cse", "dce", {"name": "fuse_rmsnorm", "fuse_residual": True}, "fuse_rope"]


def _cfg(**kw):
    raw = {"name": "s", "model": "tiny"}
    raw.update(kw)
    return config_from_dict(raw)


def test_listed():
    runs = expand(_cfg(runs=[{"name": "x", "passes": ["cse"]}, {"name": "y", "capture": "none", "scoring": {"strategy": "padded"}}]))
    assert [r.name for r in runs] == ["reference", "x", "y"] and runs[0].is_reference
    assert runs[1].pass_names == ["cse"] and runs[1].dtype == "float32" and runs[1].scoring.strategy == "per_pair"


def test_ablation_all_minus_one():
    runs = expand(_cfg(sweep={"mode": "ablation", "base": BASE}))
    assert len(runs) == 1 + 1 + len(BASE)
    assert runs[1].name == "all" and runs[1].pass_names == ["cse", "dce", "fuse_rmsnorm", "fuse_rope"]
    assert runs[4].name == "-fuse_rmsnorm" and runs[4].pass_names == ["cse", "dce", "fuse_rope"]
    assert runs[1].passes[2].to_dict() == {"name": "fuse_rmsnorm", "fuse_residual": True}


def test_cumulative_prefixes():
    runs = expand(_cfg(sweep={"mode": "cumulative", "base": BASE}))
    assert len(runs) == 1 + len(BASE) + 1
    assert [r.pass_names for r in runs[1:]] == [[], ["cse"], ["cse", "dce"], ["cse", "dce", "fuse_rmsnorm"], ["cse", "dce", "fuse_rmsnorm", "fuse_rope"]]


def test_powerset_with_base_and_listed_runs():
    runs = expand(_cfg(sweep={"mode": "powerset", "base": ["cse"], "over": ["fuse_rope", "fuse_swiglu", "dce"]},
                       runs=[{"name": "extra", "passes": ["prune_lm_head"]}]))
    assert len(runs) == 1 + 2 ** 3 + 1
    sets = [tuple(r.pass_names) for r in runs[1:-1]]
    assert len(set(sets)) == 8 and all(s[0] == "cse" for s in sets)
    assert ("cse", "fuse_rope", "fuse_swiglu", "dce") in sets and ("cse",) in sets
    assert runs[-1].name == "extra"


def test_run_keys_stable_and_sensitive():
    a = expand(_cfg(sweep={"mode": "ablation", "base": BASE}))
    b = expand(_cfg(sweep={"mode": "ablation", "base": BASE}))
    assert [r.key for r in a] == [r.key for r in b]
    assert len({r.key for r in a}) == len(a)
    c = expand(_cfg(sweep={"mode": "ablation", "base": BASE}, data={"limit": 3}))
    assert not {r.key for r in a} & {r.key for r in c}  # data is part of every key
    opt = expand(_cfg(sweep={"mode": "ablation", "base": ["cse", "dce", {"name": "fuse_rmsnorm", "fuse_residual": False}, "fuse_rope"]}))
    assert opt[0].key == a[0].key and opt[1].key != a[1].key  # pass options are part of the key
    d = expand(_cfg(runs=[{"name": "x", "passes": ["cse"], "dtype": "bfloat16"}]))
    e = expand(_cfg(runs=[{"name": "renamed", "passes": ["cse"], "dtype": "bfloat16"}]))
    assert d[1].key == e[1].key  # the name is a label, not part of the result


def test_duplicate_of_reference_is_measured_once():
    runs = expand(_cfg(runs=[{"name": "eager", "capture": "none"}, {"name": "x", "passes": ["cse"]}]))
    assert [r.name for r in runs] == ["reference", "x"]


def test_explicit_default_options_are_the_same_run():
    """A spec is canonical once parsed: an option given at its default value is the same run."""
    a = expand(_cfg(runs=[{"name": "x", "passes": [{"name": "cast_dtype", "dtype": "bfloat16"}]}]))
    b = expand(_cfg(runs=[{"name": "x", "passes": ["cast_dtype"]}]))
    assert a[1].key == b[1].key and a[1].passes_label() == "cast_dtype"

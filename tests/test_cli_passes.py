"""`graphopt passes`: every registered pass is listed with its description, exactness and options."""
import json

from graphopt.cli import main
from graphopt.pipeline import list_passes


def test_lists_every_registered_pass(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    infos = list_passes()
    assert {"prune_lm_head", "fused_logprob", "cast_dtype", "prune_structured", "dce", "cse"} <= {p.name for p in infos}
    assert f"{len(infos)} passes" in out
    lines = out.splitlines()
    for p in infos:
        row = next(line for line in lines if line.startswith(p.name + " "))
        assert ("exact" if p.exact else "approx") in row
        assert p.description.split()[0] in row
        for key, opt in p.options.items():
            assert f"{key}: {opt.type.__name__} = {opt.default!r}" in out


def test_json_and_name_filter(capsys):
    assert main(["passes", "--json", "prune_structured", "cast_dtype"]) == 0
    rows = json.loads(capsys.readouterr().out)["passes"]
    assert [r["name"] for r in rows] == ["prune_structured", "cast_dtype"]
    assert rows[0]["exact"] is False
    assert rows[0]["options"]["ratio"] == {"type": "float", "default": 0.0, "choices": [],
                                           "help": "fraction of FFN channels and of query heads (budget global: "
                                                   "of all layers' FFN channels and kv groups) to remove, in [0, 1)"}
    assert rows[0]["options"]["what"]["default"] == "ffn"
    assert rows[0]["options"]["what"]["choices"] == ["ffn", "heads", "both"]
    assert rows[1]["options"]["dtype"]["default"] == "bfloat16"
    assert any("merge_qkv after prune_structured" in r for r in rows[0]["order"])


def test_unknown_pass_is_a_user_error(capsys):
    assert main(["passes", "prune_lm_heads"]) == 2
    err = capsys.readouterr().err
    assert "unknown pass 'prune_lm_heads'" in err and "prune_lm_head" in err and "Traceback" not in err


def test_named_pipelines_are_listed_with_their_passes(capsys):
    from graphopt.pipeline import list_pipelines
    assert main(["passes", "--json"]) == 0
    pipelines = {p["name"]: p for p in json.loads(capsys.readouterr().out)["pipelines"]}
    assert {"exact", "fast", "int8", "gpu"} <= set(pipelines) == set(list_pipelines())
    assert pipelines["fast"]["passes"][:-1] == pipelines["exact"]["passes"]
    assert pipelines["fast"]["passes"][-1] == "cast_dtype"  # bfloat16 is the option's default
    assert pipelines["gpu"]["passes"][-1] == "prefix_attention"
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "named pipelines" in out and "exact " in out

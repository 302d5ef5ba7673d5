"""What a run from a kept graph imports: torch's compiler stack (torch._dynamo, torch._inductor: ~1 s of
a 2-core process's start) only when something compiles, captures or calls a custom op. graphopt's Triton
ops find their kernels when first asked (graphopt.kernels._triton.triton_op), a checkpoint's model is
built on the meta device without nn.init's fills, and a kept graph's inputs get meta values, not fake
tensors. Each check runs in a fresh interpreter (the test process has imported everything)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from graphopt.checkpoints.save_hf import save_hf_checkpoint
from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
from tests._builders import random_model


def _fresh(code: str, env=None) -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_triton_ops_register_without_inductor_and_find_their_kernels_when_asked():
    """(Compiled kernels: torch's finder looks for @triton.jit functions, which TRITON_INTERPRET=1 replaces.)"""
    got = _fresh("""
        import json, sys, torch
        import graphopt.kernels
        before = sorted(m for m in ("torch._inductor", "torch._dynamo") if m in sys.modules)
        import torch._library.triton as T
        from graphopt.kernels.linear_logprob import _linear_logprob_kernel, linear_logprob_triton
        found = list(T.get_triton_kernels_for_op("graphopt::linear_logprob"))
        torch_finds = T.get_inner_triton_kernels(linear_logprob_triton)  # torch's own search, from the launcher
        print(json.dumps({"before": before, "found": [id(k) == id(_linear_logprob_kernel) for k in found],
                          "same_as_torch": [id(k) for k in found] == [id(k) for k in torch_finds]}))
    """, env={"TRITON_INTERPRET": "0"})
    assert got["before"] == [] and got["found"] == [True] and got["same_as_torch"], got


def test_a_run_from_a_kept_graph_imports_no_compiler(tmp_path):
    """load_model + optimize() reading a kept block plan: neither torch._dynamo nor torch._inductor is
    imported (the first run, which captures, imports them; the second does not need them)."""
    model = random_model("tiny-gqa", seed=1)
    save_hf_checkpoint(model, tmp_path / "m", WordHashTokenizer(model.args.vocab_size))
    code = f"""
        import json, sys, torch
        import graphopt
        from graphopt.optimize_model import optimize
        from graphopt.scoring.batch import ScoreModule
        from tests._builders import distinct_score_inputs
        model, _ = graphopt.load_model({str(tmp_path / "m")!r})
        loaded = sorted(m for m in ("torch._inductor", "torch._dynamo") if m in sys.modules)
        opt = optimize(ScoreModule(model), distinct_score_inputs(2, 12, 6), "exact-cpu")
        print(json.dumps({{"loaded": loaded, "cached": opt.setup["cached"], "path": opt.setup["path"],
                           "after": sorted(m for m in ("torch._inductor", "torch._dynamo") if m in sys.modules)}}))
    """
    env = {"GRAPHOPT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": os.getcwd()}
    first = _fresh(code, env)
    assert first["loaded"] == [] and not first["cached"] and first["path"] == "blocks", first
    second = _fresh(code, env)
    assert second == {"loaded": [], "cached": True, "path": "blocks", "after": []}, second


@pytest.mark.parametrize("preset", ["tiny-gqa", "tiny-tied"])
def test_a_model_built_without_initial_fills_loads_the_checkpoint_exactly(tmp_path, preset):
    import torch

    import graphopt
    model = random_model(preset, seed=3)
    save_hf_checkpoint(model, tmp_path / "m", WordHashTokenizer(model.args.vocab_size))
    loaded, _ = graphopt.load_model(str(tmp_path / "m"))
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(loaded.rope_cos, model.rope_cos) and torch.equal(loaded.rope_sin, model.rope_sin)
    assert torch.nn.init.normal_.__module__ == "torch.nn.init"  # the fills are torch's own again

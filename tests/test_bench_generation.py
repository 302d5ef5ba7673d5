"""benchmarks/_generation_peers.py without timing: agreement finds the first differing step and the reference's
top-1 - top-2 logit there; transformers' batched, left-padded greedy generate (hf_generate) equals graphopt's
decode engine (graphopt_run) token for token on a tiny GQA model, with and without stop ids; weight_bytes
counts a tied table once."""
import pytest
import torch

pytest.importorskip("transformers")

from benchmarks._generation_peers import agreement, graphopt_run, hf_generate, hf_peer, weight_bytes  # noqa: E402
from graphopt.generation.engine import DecodeEngine  # noqa: E402
from graphopt.model import ModelArgs, Transformer  # noqa: E402
from tests._builders import random_model  # noqa: E402


def test_agreement_first_difference_and_margin():
    scores = [torch.tensor([[0.0, 3.0, 1.0], [2.0, 1.5, 0.0]]), torch.zeros(2, 3)]
    out = agreement([[1, 1], [2, 2], [5]], [[1, 0], [2, 2], [5, 6]], scores + [torch.zeros(2, 3)])
    assert out["identical"] == 1 and out["n"] == 3
    assert out["diffs"][0] == {"prompt": 0, "step": 1, "margin": 0.5}  # step 1: 2.0 - 1.5
    assert out["diffs"][1]["prompt"] == 2 and out["diffs"][1]["step"] == 1  # a shorter completion differs where it ends


def test_hf_generate_batched_equals_the_engine():
    torch.manual_seed(0)
    model = random_model("tiny-gqa", seed=3)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (3, 9, 5, 12, 1)]
    hf = hf_peer(model)
    engine = DecodeEngine(model, None, slots=2)
    want = graphopt_run(engine, prompts, 6)["ids"]
    assert hf_generate(hf, prompts, 6, 3)["ids"] == want  # batches of 3, left padding
    stop = want[1][2]  # a token the second completion makes at its third step
    got = hf_generate(hf, prompts, 6, 2, stop_ids=(stop,))["ids"]
    assert got == [w[:w.index(stop)] if stop in w else w for w in want] and len(got[1]) == 2


def test_weight_bytes_counts_a_tied_table_once():
    model = Transformer(ModelArgs.from_name("tiny-tied"))
    assert model.output.weight is model.tok_embeddings.weight
    n = sum(p.numel() for p in model.parameters())  # parameters() yields the shared table once
    assert n == sum(v.numel() for k, v in model.state_dict().items() if k != "output.weight")
    assert weight_bytes(model) == 4 * n
    assert weight_bytes(model.to(torch.bfloat16)) == 2 * n

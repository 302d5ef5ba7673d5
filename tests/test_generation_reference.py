"""The eager reference generator (graphopt.generation.reference) against transformers' generate(do_sample=False)
on a tiny random HF Llama (GQA, tied head) loaded into both, token for token; and the stop rules of
finish_of as a generator applies them (stop ids, a stop rule, max_new_tokens 0 and the window check)."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("transformers")

from graphopt.generation.reference import ReferenceGenerator  # noqa: E402
from graphopt.generation.requests import GenerationRequest  # noqa: E402
from tests._tiny_hf_llama import write_tiny_hf_llama  # noqa: E402

WORDS = "the a man dog runs into house garden water ball then quickly and takes puts on red blue it is".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import graphopt
    from transformers import LlamaForCausalLM

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(100)]
    folder = write_tiny_hf_llama(tmp_path_factory.mktemp("tiny_llama"), texts, vocab_size=320, max_positions=96)
    ours, tok = graphopt.load_model(str(folder), dtype="float32")
    hf = LlamaForCausalLM.from_pretrained(folder).eval()
    prompts = [[0] + tok.encode(" ".join(rng.choice(WORDS) for _ in range(n))) for n in (1, 3, 5, 8, 12, 16)]
    return ours, hf, prompts


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                          pad_token_id=0)  # min_new_tokens: no stop at EOS, so every step is compared
    return out[0, len(prompt):].tolist()


def test_greedy_equals_transformers_generate(models):
    ours, hf, prompts = models
    generator = ReferenceGenerator(ours)
    completions = generator.generate([GenerationRequest(tuple(p), max_new_tokens=20) for p in prompts])
    for prompt, completion in zip(prompts, completions):
        assert completion.ids == _hf_greedy(hf, prompt, 20)
        assert completion.finish == "length" and completion.steps == 20
    stats = generator.stats
    assert stats["generated_tokens"] == 20 * len(prompts) and stats["decode_tokens"] == 19 * len(prompts)
    assert stats["prefill_tokens"] == sum(map(len, prompts)) and stats["decode_tok_s"] > 0
    assert 0 < stats["first_token_seconds"] <= stats["seconds"]


def test_stop_ids_stop_rule_and_zero_tokens(models):
    ours, _, prompts = models
    generator = ReferenceGenerator(ours)
    prompt = tuple(prompts[3])
    (free,) = generator.generate([GenerationRequest(prompt, max_new_tokens=12)])
    stop = free.ids[4]
    first = free.ids.index(stop)
    at_stop, by_rule, none = generator.generate([
        GenerationRequest(prompt, max_new_tokens=12, stop_ids=(stop,)),
        GenerationRequest(prompt, max_new_tokens=12, stop_at=lambda ids: 2 if len(ids) == 3 else None),
        GenerationRequest(prompt, max_new_tokens=0)])
    assert (at_stop.ids, at_stop.finish, at_stop.steps) == (free.ids[:first], "eos", first + 1)
    assert (by_rule.ids, by_rule.finish, by_rule.steps) == (free.ids[:2], "stop", 3)
    assert (none.ids, none.finish, none.steps) == ([], "length", 0)


def test_request_longer_than_the_window_is_refused(models):
    ours, _, _ = models
    with pytest.raises(ValueError, match=r"request 1: 90 prompt tokens \+ 8 new tokens need 97 positions, more "
                                         r"than the model's max_seq_len 96"):
        ReferenceGenerator(ours).generate([GenerationRequest((0, 5), 4), GenerationRequest(tuple([5] * 90), 8)])

"""`--model graphopt` against lm-eval's own `hf` model on the local few-shot suites in the shapes of mmlu,
leaderboard_mmlu_pro and leaderboard_bbh (tests/_few_shot_tasks.py), offline, on a tiny random HF Llama with
a BPE trained on the suites' text: the same acc / acc_norm, per-request log-likelihoods within 1e-4 and the
same is_greedy, while graphopt computes each task's shared few-shot prompt once (the prefix tree's cache
graph runs and its prefills are few)."""
from __future__ import annotations

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from graphopt.harness.lm import GraphoptLM  # noqa: E402
from tests._few_shot_tasks import write_few_shot_tasks  # noqa: E402

SUITES = ["local_mmlu", "local_mmlu_pro", "local_bbh"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import tokenizers
    from lm_eval.tasks import TaskManager
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("lm_eval_few_shot")
    tasks = root / "tasks"
    tasks.mkdir()
    write_few_shot_tasks(tasks)
    manager = TaskManager(include_path=str(tasks))
    text = []
    for name, task in manager.load(SUITES)["tasks"].items():
        task.build_all_requests(rank=0, world_size=1)
        text += [ctx + cont for ctx, cont in (i.args for i in task.instances)]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(text, tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    model_dir = root / "model"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).eval().save_pretrained(model_dir)
    return model_dir, manager


def _evaluate(model, model_args, manager):
    from lm_eval import simple_evaluate
    return simple_evaluate(model=model, model_args=model_args, tasks=SUITES, batch_size=8, device="cpu",
                           task_manager=manager, log_samples=True)


def _responses(results, task):
    out = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        out += [r[0] for r in sample["resps"]]
    return out


def test_few_shot_suites_equal_lm_eval_hf_with_each_prompt_computed_once(setup):
    model_dir, manager = setup
    want = _evaluate("hf", f"pretrained={model_dir},dtype=float32", manager)
    lm = GraphoptLM(pretrained=str(model_dir), progress=False)  # pipeline auto, the prefix tree
    got = _evaluate(lm, None, manager)
    tasks = [t for t in want["samples"]]
    assert len(tasks) >= 6
    for task in tasks:
        for metric in ("acc,none", "acc_norm,none"):
            if metric in want["results"][task]:
                assert got["results"][task][metric] == want["results"][task][metric], (task, metric)
        ours, theirs = _responses(got, task), _responses(want, task)
        assert len(ours) == len(theirs) > 0
        assert max(abs(float(a[0]) - float(b[0])) for a, b in zip(ours, theirs)) < 1e-4, task
        assert [bool(a[1]) for a in ours] == [bool(b[1]) for b in theirs], task
    assert lm.scorer.layout == "tree" and lm.scorer.cache_runnable is not None
    targets = {str(n.target) for n in lm.scorer.cache_runnable.graph.graph.nodes if n.op == "call_function"}
    assert "mkldnn._linear_pointwise.default" in targets  # the cache graph went through exact-cpu

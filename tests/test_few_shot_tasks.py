"""The local few-shot suites (tests/_few_shot_tasks.py) load in lm-eval offline in the shapes of mmlu,
leaderboard_mmlu_pro and leaderboard_bbh, and the prefix tree over all their requests (tokenised as
lm-eval does, by a BPE trained on their text) shares each task's few-shot prompt and scores every
request as each pair alone (fp32, 1e-5)."""
from dataclasses import replace

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
tokenizers = pytest.importorskip("tokenizers")

from graphopt.checkpoints.tokenizers import load_tokenizer  # noqa: E402
from graphopt.model import ModelArgs, Transformer, init_random_weights  # noqa: E402
from graphopt.scoring.batch import Request, ScoreModule  # noqa: E402
from graphopt.scoring.prefix_cache import KVLayout, PrefillModule, cached_score_module  # noqa: E402
from graphopt.scoring.prefix_tree import TreeRunners, plan_tree, score_tree  # noqa: E402
from graphopt.scoring.reference import reference_loglik  # noqa: E402
from graphopt.scoring.requests import encode_pair  # noqa: E402
from tests._few_shot_tasks import write_few_shot_tasks  # noqa: E402


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    """{suite: {task: [(doc_id, context, continuation)]}}, every question of every task."""
    from lm_eval.tasks import TaskManager
    root = tmp_path_factory.mktemp("few_shot")
    names = write_few_shot_tasks(root)
    manager, out = TaskManager(include_path=str(root)), {}
    for suite in names:
        out[suite] = {}
        for name, task in manager.load([suite])["tasks"].items():
            task.build_all_requests(rank=0, world_size=1)
            out[suite][name] = (task, [(i.doc_id, *i.args) for i in task.instances])
    return out


def test_suites_have_the_shapes_of_lm_evals(suites):
    assert set(suites["local_mmlu"]) == {"local_mmlu_high_school_geography", "local_mmlu_astronomy",
                                         "local_mmlu_nutrition"}
    shapes = {"local_mmlu": (5, 4, "acc", "The following are multiple choice questions (with answers) about "),
              "local_mmlu_pro": (5, 10, "acc", ""), "local_bbh": (3, 2, "acc_norm", "")}
    for suite, tasks in suites.items():
        shots, n_choices, metric, description = shapes[suite]
        for name, (task, requests) in tasks.items():
            assert task.config.num_fewshot == shots and task.config.fewshot_config.sampler == "first_n"
            assert [m["metric"] for m in task.config.metric_list] == [metric]
            by_doc = {}
            for doc, ctx, cont in requests:
                by_doc.setdefault(doc, []).append((ctx, cont))
            assert len(by_doc) >= 5 and {len(v) for v in by_doc.values()} == {n_choices}, name
            contexts = [v[0][0] for v in by_doc.values()]
            assert contexts[0].startswith(description)
            shared = min(len(_common(contexts[0], c)) for c in contexts[1:])
            assert shared > 0.6 * len(contexts[0]), name  # the first_n shots: most of every prompt


def _common(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


@pytest.fixture(scope="module")
def tokenizer(suites, tmp_path_factory):
    text = [ctx + cont for tasks in suites.values() for _, reqs in tasks.values() for _, ctx, cont in reqs]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.train_from_iterator(text, tokenizers.trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("few_shot_tok") / "tokenizer.json"
    tok.save(str(path))
    return load_tokenizer(path)


@pytest.mark.parametrize("suite", ["local_mmlu", "local_mmlu_pro", "local_bbh"])
def test_prefix_tree_over_a_suite_equals_each_pair_alone(suites, tokenizer, suite):
    """All tasks of the suite in one tree (default budget and min_shared_tokens): one cached prefix per
    task at least, several times fewer tokens than lm-eval's pairs, scores within 1e-5 of the reference."""
    requests = []
    for t, (_, reqs) in enumerate(suites[suite].values()):
        for k, (doc, ctx, cont) in enumerate(reqs):
            c, x = encode_pair(tokenizer, ctx, cont)
            requests.append(Request(1000 * t + doc, k, tuple(c), tuple(x), len(cont)))
    args = replace(ModelArgs.from_name("tiny-gqa"), max_seq_len=1024)
    assert tokenizer.vocab_size <= args.vocab_size
    model = init_random_weights(Transformer(args), seed=7).eval()
    runners = TreeRunners(cached_score_module(model), KVLayout.of_args(args), PrefillModule(model),
                          ScoreModule(model, greedy=True).eval())
    plan = plan_tree(requests, runners.layout.bytes_per_token)
    assert plan.stats["cached_nodes"] >= len(suites[suite])
    computed = plan.stats["tokens_prefill"] + plan.stats["tokens_rows"]
    assert computed * 3 < plan.stats["tokens_packed"] < plan.stats["tokens_per_pair"]
    loglik, _ = score_tree(requests, runners, progress=False)
    torch.testing.assert_close(loglik, reference_loglik(model, requests), atol=1e-5, rtol=0)

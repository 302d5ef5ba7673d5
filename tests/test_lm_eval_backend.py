"""graphopt as an lm-eval model against lm-eval's own `hf` model, offline, on a tiny random HF Llama built
here (tied embeddings, 6 query / 2 kv heads, a tokenizer that adds BOS by default, 64-token window) and
local tasks in the shapes of hellaswag, arc_easy, piqa and a wikitext-style perplexity task."""
from __future__ import annotations

import json
from pathlib import Path
import random

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from graphopt import cache_store  # noqa: E402
from graphopt.errors import UserError  # noqa: E402
from graphopt.harness import task_index_cache  # noqa: E402
from graphopt.harness.lm import GraphoptLM  # noqa: E402

WORDS = ("the a man woman dog cat runs walks into house garden water ball then quickly slowly and takes "
         "puts on off red blue small big very it is was will be to of with for").split()
TASKS = ["tiny_hellaswag", "tiny_arc", "tiny_piqa", "tiny_wikitext"]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("lm_eval_backend")
    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_text(rng, 30) for _ in range(200)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])  # adds BOS
    model_dir = root / "model"
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).eval().save_pretrained(model_dir)
    return model_dir, _write_tasks(root / "tasks", rng)


def _write_tasks(task_dir, rng):
    task_dir.mkdir()

    def data(name, rows):
        path = task_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return json.dumps(str(path))

    hs = data("hs", [{"ind": i, "activity_label": "Walking", "ctx_a": _text(rng, rng.randint(8, 40)),
                      "ctx_b": _text(rng, 2), "endings": [_text(rng, rng.randint(3, 12)) for _ in range(4)],
                      "label": rng.randrange(4), "source_id": "x", "split": "val", "split_type": "indomain",
                      "ctx": ""} for i in range(12)])
    arc = data("arc", [{"id": str(i), "question": _text(rng, rng.randint(5, 15)) + "?", "answerKey": "ABCD"[i % 4],
                        "choices": {"text": [_text(rng, rng.randint(1, 4)) for _ in range(4)],
                                    "label": list("ABCD")}} for i in range(10)])
    piqa = data("piqa", [{"goal": _text(rng, rng.randint(5, 12)), "sol1": _text(rng, rng.randint(3, 9)),
                          "sol2": _text(rng, rng.randint(3, 9)), "label": i % 2} for i in range(10)])
    wiki = data("wiki", [{"page": _text(rng, rng.randint(20, 150))} for _ in range(4)])  # > 64 tokens: windows
    import shutil

    import lm_eval as le
    from pathlib import Path
    shutil.copy(Path(le.__file__).parent / "tasks" / "hellaswag" / "utils.py", task_dir / "utils.py")
    common = "dataset_path: json\ndataset_name: null\nvalidation_split: validation\n"
    mc_metrics = ("metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
                  "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (task_dir / "tiny_hellaswag.yaml").write_text(
        f"task: tiny_hellaswag\n{common}dataset_kwargs:\n  data_files:\n    validation: {hs}\n"
        "output_type: multiple_choice\nprocess_docs: !function utils.process_docs\n"
        "doc_to_text: '{{query}}'\ndoc_to_target: '{{label}}'\ndoc_to_choice: choices\n" + mc_metrics)
    (task_dir / "tiny_arc.yaml").write_text(  # lm-eval's arc_easy.yaml, local data
        f"task: tiny_arc\n{common}dataset_kwargs:\n  data_files:\n    validation: {arc}\n"
        "output_type: multiple_choice\ndoc_to_text: 'Question: {{question}}\\nAnswer:'\n"
        "doc_to_target: '{{choices.label.index(answerKey)}}'\ndoc_to_choice: '{{choices.text}}'\n" + mc_metrics)
    (task_dir / "tiny_piqa.yaml").write_text(  # lm-eval's piqa.yaml, local data
        f"task: tiny_piqa\n{common}dataset_kwargs:\n  data_files:\n    validation: {piqa}\n"
        "output_type: multiple_choice\ndoc_to_text: 'Question: {{goal}}\\nAnswer:'\ndoc_to_target: label\n"
        "doc_to_choice: '{{[sol1, sol2]}}'\n" + mc_metrics)
    (task_dir / "tiny_wikitext.yaml").write_text(
        f"task: tiny_wikitext\n{common}dataset_kwargs:\n  data_files:\n    validation: {wiki}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{page}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return task_dir


def _evaluate(model, model_args, task_manager, tasks=TASKS):
    from lm_eval import simple_evaluate
    return simple_evaluate(model=model, model_args=model_args, tasks=tasks, batch_size=4, device="cpu",
                           task_manager=task_manager, log_samples=True)


@pytest.fixture(scope="module")
def task_manager(setup):
    """lm-eval's index of these tasks alone (indexing every task YAML lm-eval ships takes seconds; the
    command's own index of them all is read by the command tests)."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(setup[1]), include_defaults=False)


@pytest.fixture(scope="module")
def hf_results(setup, task_manager):
    model_dir, _ = setup
    return _evaluate("hf", f"pretrained={model_dir},dtype=float32", task_manager)


def _responses(results, task):
    """[(loglik, is_greedy) or loglik] per request, in lm-eval's order (doc, then choice)."""
    out = []
    for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"]):
        out += [r[0] for r in sample["resps"]]
    return out


@pytest.mark.parametrize("pipeline", ["auto", "none"])
def test_same_answers_as_lm_eval_hf(setup, task_manager, hf_results, pipeline):
    """acc / acc_norm identical, per-request log-likelihoods within 1e-4, is_greedy identical, perplexities
    within 1e-5 relative; the optimised path's graph really has the fused, greedy-aware head."""
    model_dir, task_dir = setup
    lm = GraphoptLM(pretrained=str(model_dir), pipeline=pipeline, progress=False)
    ours = _evaluate(lm, None, task_manager)
    for task in TASKS[:3]:
        for metric in ("acc,none", "acc_norm,none"):
            assert ours["results"][task][metric] == hf_results["results"][task][metric], (task, metric)
        got, want = _responses(ours, task), _responses(hf_results, task)
        assert len(got) == len(want) > 0
        assert max(abs(float(a[0]) - float(b[0])) for a, b in zip(got, want)) < 1e-4, task
        assert [bool(a[1]) for a in got] == [bool(b[1]) for b in want], task
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        a, b = ours["results"]["tiny_wikitext"][metric], hf_results["results"]["tiny_wikitext"][metric]
        assert abs(a - b) <= 1e-5 * abs(b), (metric, a, b)
    if pipeline == "auto":  # exact-cpu: the head is one chunked packed log-prob with the argmax inside
        targets = {str(n.target) for n in lm.scorer.runnable.graph.graph.nodes if n.op == "call_function"}
        assert "mkldnn._linear_pointwise.default" in targets and "aten.log_softmax.int" not in targets
        assert lm.stats["n_batches"] < sum(len(_responses(ours, t)) for t in TASKS[:3]) / 4  # packed, not per pair


def test_is_greedy_matches_hf_on_greedy_continuations(setup):
    """Continuations made of the model's own argmax tokens are greedy for both, altered ones for neither."""
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaForCausalLM

    model_dir, _ = setup
    hf = HFLM(pretrained=str(model_dir), dtype="float32", batch_size=4, device="cpu")
    ours = GraphoptLM(pretrained=str(model_dir), pipeline="exact", progress=False)
    model = LlamaForCausalLM.from_pretrained(model_dir).eval()
    rng, requests = random.Random(1), []
    for i in range(8):
        ctx = hf.tok_encode(_text(rng, rng.randint(3, 20)))
        ids = torch.tensor([ctx])
        with torch.no_grad():
            for _ in range(4):  # greedy decoding, 4 tokens
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        cont = ids[0, len(ctx):].tolist()
        if i % 2:
            cont[-1] = (cont[-1] + 1) % model.config.vocab_size  # no longer greedy at the last token
        requests.append((("c", f"{i}"), ctx, cont))
    want = hf._loglikelihood_tokens(requests, disable_tqdm=True)
    got = ours._loglikelihood_tokens(requests, disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want] == [i % 2 == 0 for i in range(8)]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got, want)) < 1e-4


def test_identical_requests_get_one_value(setup):
    """Repeated (context, continuation) requests give bit-identical answers from the packed path, so a tie
    between identical choices breaks as lm-eval's hf model breaks it (the first); a scorer whose logits depend
    on the row offset makes the packed copies' raw scores differ for certain (tests/_builders.OffsetDependent)."""
    from graphopt.scoring.batch import ScoreModule
    from tests._builders import OffsetDependent

    model_dir, _ = setup
    ours = GraphoptLM(pretrained=str(model_dir), pipeline="exact", progress=False)
    ours.scorer.runnable = ScoreModule(OffsetDependent(ours.model), greedy=True).eval()
    rng = random.Random(3)
    ctx = ours.tok_encode(_text(rng, 12))
    a, b = ours.tok_encode(" " + _text(rng, 4)), ours.tok_encode(" " + _text(rng, 5))
    got = ours._loglikelihood_tokens([(("c", "a"), ctx, a), (("c", "b"), ctx, b), (("c", "a"), ctx, a)],
                                     disable_tqdm=True)
    assert got[0] == got[2] and got[0][0] != got[1][0]


@pytest.mark.parametrize("add_bos_token", [None, True, False])
def test_token_ids_as_lm_eval_hf_bos_included(setup, add_bos_token):
    """HFLM's tok_encode and pairing, BOS by the tokenizer's default or as forced; graphopt eval's
    build_requests builds the same ids."""
    from lm_eval.models.huggingface import HFLM

    from graphopt.scoring.requests import encode_pair

    model_dir, _ = setup
    extra = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
    hf = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", **extra)
    ours = GraphoptLM(pretrained=str(model_dir), progress=False, **extra)
    rng = random.Random(2)
    pairs = [(_text(rng, 6), " " + _text(rng, 3)), (_text(rng, 4) + " ", "then"), ("", " " + _text(rng, 3)),
             ("<s>" + _text(rng, 3), " it")]
    for ctx, cont in pairs:
        if ctx:
            want = hf._encode_pair(ctx, cont)
            assert ours._encode_pair(ctx, cont) == want
            assert list(map(list, encode_pair(ours.tok, ctx, cont, add_bos_token))) == list(map(list, want))
        assert ours.tok_encode(ctx + cont) == hf.tok_encode(ctx + cont)
    assert (hf.tok_encode("a man")[0] == 0) == (add_bos_token is not False)  # the tokenizer's default adds it


def test_unknown_model_arg_is_an_error_naming_it(setup):
    with pytest.raises(UserError, match=r"unknown key 'pipline' \(did you mean pipeline\?\)"):
        GraphoptLM(pretrained=str(setup[0]), pipline="exact")
    with pytest.raises(UserError, match="dtype='float8'"):
        GraphoptLM(pretrained=str(setup[0]), dtype="float8")
    with pytest.raises(UserError, match="pipeline='exact\\+nonsense'"):
        GraphoptLM(pretrained=str(setup[0]), pipeline="exact+nonsense")


COMMAND_TASKS = "tiny_hellaswag,tiny_wikitext"


def _command_args(setup) -> list[str]:
    """`graphopt lm-eval` arguments but --model_args and --output_path, on COMMAND_TASKS with samples logged."""
    return ["--model", "graphopt", "--tasks", COMMAND_TASKS, "--include_path", str(setup[1]), "--log_samples",
            "--batch_size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_process_command(setup, tmp_path_factory):
    """(exit code, printed output, stderr, output folder) of `graphopt lm-eval` in this process: what the command
    test reads, and the one-process side of the torchrun comparison."""
    import contextlib
    import io

    import graphopt.harness.lm as lm
    from graphopt.cli import main
    from lm_eval.tasks._index import TaskIndex
    lm._UNREPORTED.clear()  # models other tests made in this process print at exit, not here
    out_dir, printed, said = tmp_path_factory.mktemp("one"), io.StringIO(), io.StringIO()
    build, built = TaskIndex.__dict__["build"], []  # the folders each build parses
    TaskIndex.build = staticmethod(lambda paths, **kw: built.extend(map(str, paths)) or build.__func__(paths, **kw))
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(said):
            code = main(["lm-eval", *_command_args(setup), "--model_args",
                         f"pretrained={setup[0]},pipeline=auto,progress=False", "--output_path", str(out_dir)])
    finally:
        TaskIndex.build = build
    return code, printed.getvalue(), said.getvalue(), out_dir, built


def test_command_prints_lm_eval_table_and_writes_its_files(one_process_command):
    code, out, err, out_dir, _ = one_process_command
    assert code == 0 and "tiny_hellaswag" in out and "acc_norm" in out
    assert err.count("graphopt time: startup") == 1 and "scoring" in err, err  # where the time went, once
    results = list(out_dir.rglob("results_*.json"))
    assert len(results) == 1 and "tiny_hellaswag" in json.loads(results[0].read_text())["results"]


def test_command_indexes_each_task_folder_once(one_process_command, setup):
    """graphopt's check of the command's generative tasks and lm-eval's own run share one index of the task
    folders, and lm-eval's ~14000 built-in files (5-6 s) are parsed at most once per cache folder (kept by
    graphopt.harness.task_index_cache; tests/test_task_index_cache.py). Fails if lm-eval's private index
    method moves (graphopt.harness.tasks.task_index_built_once then changes nothing: every folder is
    parsed twice, in one build of both)."""
    import lm_eval.tasks

    built = one_process_command[4]
    builtin = str(Path(lm_eval.tasks.__file__).parent)
    assert built.count(builtin) <= 1 and built.count(str(setup[1])) == 1, built
    assert task_index_cache.KIND in cache_store.entries()  # lm-eval's real index kept: JSON carries it whole


def test_world_asked_for_is_checked_before_the_model_loads(setup, monkeypatch):
    """data_parallel / tensor_parallel need torchrun's processes, in the right number, and a head layout
    the shards divide; pipeline_parallel is refused with the reason."""
    model_dir = str(setup[0])
    with pytest.raises(UserError, match=r"data_parallel 2 x tensor_parallel 1 = 2 processes, but this is 1; "
                                        r"launch .*torchrun --nproc-per-node 2"):
        GraphoptLM(pretrained=model_dir, data_parallel=2)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"data_parallel 3 x tensor_parallel 1 = 3 processes, but torchrun started 4"):
        GraphoptLM(pretrained=model_dir, data_parallel=3)
    with pytest.raises(UserError, match=r"tensor_parallel=4: .*n_heads 6 is not divisible by world_size 4"):
        GraphoptLM(pretrained=model_dir, tensor_parallel=4)
    with pytest.raises(UserError, match=r"pipeline_parallel=2: not available in the lm-eval backend"):
        GraphoptLM(pretrained=model_dir, pipeline_parallel=2)
    with pytest.raises(UserError, match=r"tensor_parallel=2 with pipeline=none"):
        GraphoptLM(pretrained=model_dir, tensor_parallel=2, pipeline="none")


def _samples(out_dir, task):
    files = list(out_dir.rglob(f"samples_{task}_*.jsonl"))
    assert len(files) == 1, files
    rows = sorted((json.loads(line) for line in files[0].read_text().splitlines()), key=lambda s: s["doc_id"])
    return [float(r[0][0]) if isinstance(r[0], list) else float(r[0]) for s in rows for r in s["resps"]]


@pytest.mark.distributed
def test_data_parallel_x_tensor_parallel_under_torchrun(setup, one_process_command, tmp_path):
    """`torchrun --nproc-per-node 4 -m graphopt lm-eval --model graphopt --model_args ...,data_parallel=2,
    tensor_parallel=2`: two replicas, each sharded two ways (the tensor_parallel pass inside the auto
    pipeline, each rank reading its shard of the checkpoint); one results file and one printed table
    (rank 0); per-request log-likelihoods equal to one process within 1e-5, metrics identical."""
    import os
    import subprocess
    import sys

    model_dir, _ = setup
    tasks, common = COMMAND_TASKS, _command_args(setup)
    env = dict(os.environ, OMP_NUM_THREADS="1", GRAPHOPT_COLLECTIVE_TIMEOUT_S="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "-m", "graphopt", "lm-eval",
           *common, "--model_args", f"pretrained={model_dir},data_parallel=2,tensor_parallel=2,progress=False",
           "--output_path", str(tmp_path / "four")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, "\n".join(l for l in done.stderr.splitlines() if "Error" in l or "failed" in l or "rank" in l)[-6000:]
    assert done.stdout.count("|tiny_hellaswag") == 1, done.stdout  # one table: rank 0's
    assert len(list((tmp_path / "four").rglob("results_*.json"))) == 1

    code, _, _, one_dir, _ = one_process_command  # the same command in one process
    assert code == 0
    four = json.loads(next((tmp_path / "four").rglob("results_*.json")).read_text())["results"]
    one = json.loads(next(one_dir.rglob("results_*.json")).read_text())["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert four["tiny_hellaswag"][metric] == one["tiny_hellaswag"][metric]
    for task in tasks.split(","):
        got, want = _samples(tmp_path / "four", task), _samples(one_dir, task)
        assert len(got) == len(want) > 0
        assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-5, task


def test_every_process_reports_rank_0_and_lm_eval_returns_results_on_local_rank_0_only(setup, task_manager,
                                                                                       monkeypatch):
    """graphopt answers every request in every process and reports rank 0 / world size 1 to lm-eval, lm-eval
    0.4.13's convention for a model that splits work itself; lm-eval then returns results (which its CLI
    prints and writes) on LOCAL_RANK 0 only. Fails when lm-eval stops gating on LOCAL_RANK: `graphopt
    lm-eval` under torchrun would then print and write from every process of a node."""
    model_dir, _ = setup
    lm = GraphoptLM(pretrained=str(model_dir), pipeline="exact", progress=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _evaluate(lm, None, task_manager, tasks=["tiny_piqa"]) is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert "acc,none" in _evaluate(lm, None, task_manager, tasks=["tiny_piqa"])["results"]["tiny_piqa"]
    assert (lm.rank, lm.world_size) == (0, 1)


def test_only_global_rank_0_prints_and_writes(monkeypatch):
    """Other nodes' LOCAL_RANK 0 processes (global rank > 0) run lm-eval without its writing flags and with
    stdout silenced; rank 0 keeps every argument."""
    from graphopt.commands.lm_eval import rank0_writes

    argv = ["--model", "graphopt", "--output_path", "out/", "--log_samples", "--tasks", "x", "-o=y",
            "--wandb_args", "project=p", "--limit", "3"]
    monkeypatch.setenv("RANK", "0")
    assert rank0_writes(argv) == (argv, None)
    monkeypatch.setenv("RANK", "3")
    kept, quiet = rank0_writes(argv)
    assert kept == ["--model", "graphopt", "--tasks", "x", "--limit", "3"] and quiet is not None
    quiet.close()

"""`--model graphopt` on lm-eval's generate_until against lm-eval's own `hf` model, offline: a tiny random HF
Llama (tests/_tiny_hf_llama.py) with a BPE trained on arithmetic word problems and a jinja chat template,
local tasks (dataset_path: json) in gsm8k's shape (its doc_to_text, `until`, strict-match / flexible-extract
regex filters, exact_match), with the chat template, and a task whose stop strings / EOS / window are
chosen from what the model generates so that every way a completion ends is exercised. Every response,
every filtered response and every metric equal hf's."""
from __future__ import annotations

import json
import random

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from graphopt.errors import UserError  # noqa: E402
from graphopt.generation.reference import ReferenceGenerator  # noqa: E402
from graphopt.harness.lm import GraphoptLM  # noqa: E402
from benchmarks._gsm8k_data import gsm8k_yaml, word_problems, write_rows  # noqa: E402
from tests._tiny_hf_llama import write_tiny_hf_llama  # noqa: E402

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}\n"
                 "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}\n{% else %}<|assistant|>{{ m['content'] }}"
                 "{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model folder, task folder, a second EOS id): the model's EOS row of the head is made to follow a token
    it generates, so that some completions end at EOS, and its generation_config lists a plain token as a
    second EOS id."""
    from safetensors.torch import load_file, save_file

    import graphopt

    root = tmp_path_factory.mktemp("lm_eval_generate")
    rng = random.Random(0)
    train, test = word_problems(rng, 6), word_problems(rng, 30)
    texts = [r["question"] + " " + r["answer"] for r in train + test] * 3 + ["Question: Answer: <|user|> <|assistant|>"]
    model_dir = write_tiny_hf_llama(root / "model", texts, vocab_size=420, max_positions=256,
                                    chat_template=CHAT_TEMPLATE, tied=False, init_std=0.3)
    stops_docs = [{"text": " ".join(r["question"].split()[: rng.randint(3, 14)])} for r in test[:16]]
    stops_docs.append({"text": " ".join(r["question"] for r in test[:12])})  # longer than the window: truncated
    model, tok = graphopt.load_model(str(model_dir))
    gen = ReferenceGenerator(model)
    prompts = [tuple([0] + tok.encode(d["text"])) for d in stops_docs[:4]]
    from graphopt.generation.requests import GenerationRequest
    free = gen.generate([GenerationRequest(p, 12) for p in prompts])
    eos_like = free[2].ids[5]  # EOS follows this token of the third completion: its logit = 1.02 x that token's
    weights_file = model_dir / "model.safetensors"
    weights = load_file(weights_file)
    head = weights["lm_head.weight"]
    head[1] = head[eos_like] * 1.02
    save_file(weights, weights_file, metadata={"format": "pt"})
    model, tok = graphopt.load_model(str(model_dir))
    free = ReferenceGenerator(model).generate([GenerationRequest(p, 12) for p in prompts])
    # a second EOS id, a plain text token, as Llama-3-Instruct's generation_config lists <|eot_id|> besides EOS
    eos2 = next(t for t in free[3].ids[2:] if t not in free[0].ids[:4] + free[1].ids[:8] + [1])
    config_path = model_dir / "generation_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "eos_token_id": [1, eos2]}))
    first = tok.decode(free[0].ids)
    stops = [first[:3], tok.decode(free[1].ids)[6:9]]  # an empty answer for the first doc; a cut in the second
    task_dir = root / "tasks"
    task_dir.mkdir()
    train_f, test_f = write_rows(task_dir / "train.jsonl", train), write_rows(task_dir / "test.jsonl", test)
    (task_dir / "tiny_gsm8k.yaml").write_text(gsm8k_yaml("tiny_gsm8k", train_f, test_f, shots=2, max_gen_toks=24))
    (task_dir / "tiny_gsm8k_chat.yaml").write_text(gsm8k_yaml("tiny_gsm8k_chat", train_f, test_f, shots=2,
                                                              max_gen_toks=24, extra="gen_prefix: 'The answer is'\n"))
    stops_f = write_rows(task_dir / "stops.jsonl", stops_docs)
    common = ("dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
              "output_type: generate_until\ntest_split: test\ndoc_to_text: '{{{{text}}}}'\ndoc_to_target: ''\n"
              "metric_list:\n  - metric: exact_match\n")
    (task_dir / "tiny_stops.yaml").write_text(
        f"task: tiny_stops\n{common.format(data=stops_f)}generation_kwargs:\n  until: {json.dumps(stops)}\n"
        "  do_sample: false\n  max_gen_toks: 12\n")
    for name, kwargs in (("tiny_sampling", "do_sample: true\n  temperature: 0.7"), ("tiny_warm", "temperature: 0.5"),
                         ("tiny_beams", "do_sample: false\n  num_beams: 4")):
        (task_dir / f"{name}.yaml").write_text(
            f"task: {name}\n{common.format(data=stops_f)}generation_kwargs:\n  until: ['.']\n  {kwargs}\n")
    return model_dir, task_dir, eos2


@pytest.fixture(scope="module")
def task_manager(setup):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(setup[1]))


def _evaluate(model, model_args, task_manager, tasks, **kwargs):
    from lm_eval import simple_evaluate
    return simple_evaluate(model=model, model_args=model_args, tasks=tasks, batch_size=4, device="cpu",
                           task_manager=task_manager, log_samples=True, **kwargs)


class Recording:
    """The model's own generator (built on first use), keeping the completions it returned."""

    def __init__(self, lm: GraphoptLM):
        self.lm, self.generator, self.completions = lm, None, []

    def generate(self, requests, progress=False):
        self.generator = self.generator or self.lm._make_generator()
        out = self.generator.generate(requests, progress)
        self.completions += out
        return out


def _graphopt(model_dir, **model_args) -> GraphoptLM:
    lm = GraphoptLM(pretrained=str(model_dir), progress=False, **model_args)
    lm._generator = Recording(lm)
    return lm


def _same_samples(ours, theirs, task):
    a = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
    b = sorted(theirs["samples"][task], key=lambda s: s["doc_id"])
    assert len(a) == len(b) > 0
    assert [s["arguments"] for s in a] == [s["arguments"] for s in b]  # the same prompts
    assert [s["resps"] for s in a] == [s["resps"] for s in b]
    assert [s["filtered_resps"] for s in a] == [s["filtered_resps"] for s in b]
    assert ours["results"][task] == theirs["results"][task]
    return [s["resps"][0][0] for s in a]


@pytest.fixture(scope="module")
def lm(setup) -> GraphoptLM:
    """One model for the tasks run with its defaults (its decode engine built once)."""
    return _graphopt(setup[0])


CHAT = dict(apply_chat_template=True, system_instruction="You solve word problems.", fewshot_as_multiturn=True)


@pytest.fixture(scope="module")
def hf_chat(setup, task_manager):
    return _evaluate("hf", f"pretrained={setup[0]},dtype=float32", task_manager, ["tiny_gsm8k_chat"], **CHAT)


def test_gsm8k_shaped_task_equals_lm_eval_hf(setup, task_manager, lm):
    """Two-shot prompts of real text, gsm8k's stop strings, max_gen_toks from the task, its regex filters."""
    model_dir, *_ = setup
    ours = _evaluate(lm, None, task_manager, ["tiny_gsm8k"])
    theirs = _evaluate("hf", f"pretrained={model_dir},dtype=float32", task_manager, ["tiny_gsm8k"])
    answers = _same_samples(ours, theirs, "tiny_gsm8k")
    assert len(set(answers)) > 5 and all(c.steps <= 24 for c in lm.generator.completions)
    assert ours["results"]["tiny_gsm8k"]["exact_match,flexible-extract"] >= 0


def test_stop_strings_eos_empty_answer_and_truncation_equal_lm_eval_hf(setup, task_manager):
    """The stops task: max_gen_toks 12, a window of 96 tokens (model arg max_length) that the last prompt
    overflows; completions ending at a stop string (one at once: an empty answer), at EOS, and at
    max_gen_toks, all as hf."""
    model_dir, _, eos2 = setup
    lm = _graphopt(model_dir, max_length=96)
    with pytest.warns(UserWarning, match="left-truncated"):
        ours = _evaluate(lm, None, task_manager, ["tiny_stops"])
    theirs = _evaluate("hf", f"pretrained={model_dir},dtype=float32,max_length=96", task_manager,
                       ["tiny_stops"])
    answers = _same_samples(ours, theirs, "tiny_stops")
    done = lm.generator.completions
    assert answers[0] == "" and done[0].steps <= 2  # the first token(s) hold a stop string
    assert any(0 < c.steps < 12 and c.ids[-1] != 1 for c in done)  # cut by a stop string
    assert any(c.ids and c.ids[-1] == 1 for c in done)  # ended at EOS (kept in ids, dropped from the text)
    assert any(c.ids and c.ids[-1] == eos2 for c in done)  # at the second EOS id (its text kept, as hf)
    assert any(c.steps == 12 for c in done)  # max_gen_toks
    assert len(lm.generator.completions) == 17 and len(done[-1].ids) <= 12
    long_prompt = lm.tok_encode(ours["samples"]["tiny_stops"][-1]["arguments"][0][0])
    assert len(long_prompt) > 96 - 12


def test_chat_template_and_system_instruction_equal_lm_eval_hf(task_manager, lm, hf_chat):
    """--apply_chat_template (tokenizer_config.json's jinja template: BOS in the text, so none added), a system
    instruction, few-shot as turns, a gen_prefix continuing the assistant's message."""
    ours = _evaluate(lm, None, task_manager, ["tiny_gsm8k_chat"], **CHAT)
    _same_samples(ours, hf_chat, "tiny_gsm8k_chat")
    prompt = ours["samples"]["tiny_gsm8k_chat"][0]["arguments"][0][0]
    assert prompt.startswith("<s><|system|>You solve word problems.\n<|user|>Question:")
    assert prompt.endswith("<|assistant|>The answer is") and prompt.count("</s>") == 2  # two shots answered
    assert lm.tok_encode(prompt)[:2] != [0, 0]


def test_command_writes_the_same_samples_as_lm_eval_hf(setup, hf_chat, tmp_path, capsys):
    """`graphopt lm-eval --model graphopt ... --apply_chat_template --system_instruction` writes the samples
    lm-eval's hf model gives, and says where the time went, generation included."""
    import graphopt.harness.lm as lm_module
    from graphopt.cli import main

    lm_module._UNREPORTED.clear()  # models other tests made in this process print at exit, not here
    model_dir, task_dir, _ = setup
    code = main(["lm-eval", "--model", "graphopt", "--model_args", f"pretrained={model_dir},progress=False",
                 "--tasks", "tiny_gsm8k_chat", "--include_path", str(task_dir), "--apply_chat_template",
                 "--system_instruction", CHAT["system_instruction"], "--fewshot_as_multiturn", "--log_samples",
                 "--output_path", str(tmp_path)])
    assert code == 0
    rows = [json.loads(line) for f in tmp_path.rglob("samples_tiny_gsm8k_chat_*.jsonl")
            for line in f.read_text().splitlines()]
    want = {s["doc_id"]: s["resps"] for s in hf_chat["samples"]["tiny_gsm8k_chat"]}
    assert {r["doc_id"] for r in rows} == set(want) and len(want) == 30  # (a row per doc and filter)
    assert all(r["resps"] == want[r["doc_id"]] for r in rows)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("graphopt time:")]
    assert len(lines) == 1 and ", generation " in lines[0] and "(no graph)" not in lines[0], lines  # its graph counted
    assert "scoring 0.0s (first call 0.0s)" in lines[0], lines  # nothing scored: the step graph's call is generation's


@pytest.mark.parametrize("task, why", [("tiny_sampling", r"ask for sampling \(do_sample: True, temperature: 0.7\)"),
                                       ("tiny_warm", r"ask for sampling \(do_sample: None, temperature: 0.5\)"),
                                       ("tiny_beams", r"num_beams=4 is not available")])
def test_sampling_refused_naming_the_task(setup, task_manager, task, why):
    model_dir, *_ = setup
    with pytest.raises(UserError, match=f"task {task}: generation_kwargs {why}"):
        _evaluate(GraphoptLM(pretrained=str(model_dir), progress=False), None, task_manager, [task])


def test_command_refuses_sampling_before_the_model_loads(setup, capsys):
    """The task configs with --gen_kwargs over them, as lm-eval applies them (tiny_gsm8k alone is greedy)."""
    from graphopt.cli import main

    _, task_dir, _ = setup
    code = main(["lm-eval", "--model", "graphopt", "--model_args", "pretrained=/nonexistent", "--include_path",
                 str(task_dir), "--tasks", "tiny_gsm8k", "--gen_kwargs", "do_sample=True,temperature=0.8"])
    err = capsys.readouterr().err
    assert code == 2 and "task tiny_gsm8k: generation_kwargs ask for sampling" in err, err  # (no load: bad path)


def test_max_gen_toks_of_a_task_that_sets_none_is_the_models(setup):
    """lm-eval's hf model: 256 (fixed), which a 256-token window cannot hold with a prompt (hf asserts; graphopt
    names the task); graphopt's model arg max_gen_toks (default 256) sets it."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model_dir, *_ = setup
    request = Instance("generate_until", {}, ("Question: Tom has 3 pens.", {"until": ["."]}), 0, ("tiny_x", 0, 1))
    lm = _graphopt(model_dir)
    assert lm.max_gen_toks == HFLM.max_gen_toks.fget(None) == 256
    with pytest.raises(UserError, match=r"task tiny_x: max_gen_toks 256 leaves no room for a prompt in the model's "
                                        r"window of 256 tokens"):
        lm.generate_until([request], disable_tqdm=True)
    lm = _graphopt(model_dir, max_gen_toks=5)
    lm.generate_until([request], disable_tqdm=True)
    assert lm.stats["generated_tokens"] <= 5 and lm._generator.completions[0].steps <= 5
    assert lm._generator.completions[0].steps == 5 or lm._generator.completions[0].finish == "stop"


def test_no_chat_template_is_one_clear_error(tmp_path):
    model_dir = write_tiny_hf_llama(tmp_path / "m", ["a b c d e f"] * 20, vocab_size=270, max_positions=32)
    lm = GraphoptLM(pretrained=str(model_dir), progress=False)
    with pytest.raises(UserError, match=r"--apply_chat_template: .* has no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])


def test_auto_pipeline_builds_the_engine_on_its_cpu_default(lm):
    """pipeline=auto decodes through generation's own CPU pipeline (decode-cpu: the plain ops, whose fewer calls
    a decode step wants, on oneDNN-packed matmuls), not the scorer's exact-cpu with its kernel fusions."""
    names = lm._make_generator().graph.pass_names
    assert "mkldnn_linear" in names and "cache_attention" in names, names
    assert not {"fuse_rmsnorm", "fuse_rope", "fuse_swiglu"} & set(names), names

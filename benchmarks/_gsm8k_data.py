"""A gsm8k-shaped local task for lm-eval 0.4.13, shared by benchmarks/lm_eval_generate.py and
tests/test_lm_eval_generate.py: lm-eval's own tasks/gsm8k/gsm8k.yaml (its prompt, `until`, filters and
exact_match) with `dataset_path: json`, over arithmetic word problems whose worked answers end in '#### N'."""
from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Tom", "Ana", "Raj", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Omar", "Lena", "Kofi", "Yuki"]
THINGS = ["apples", "books", "coins", "pens", "eggs", "cards", "stamps", "shells", "marbles", "stickers"]
GSM8K_YAML = """\
# lm-eval's tasks/gsm8k/gsm8k.yaml with dataset_path json, local files, max_gen_toks {max_gen_toks}
task: {task}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:", "</s>", "<|im_end|>"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen_toks}
num_fewshot: {shots}
{extra}filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""


def word_problems(rng: random.Random, n: int) -> list[dict]:
    """gsm8k-shaped rows {question, answer}: a one- or two-step word problem and its worked answer ending in
    '#### N', the arithmetic computed."""
    rows = []
    for _ in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        a, b, c = rng.randint(2, 40), rng.randint(2, 12), rng.randint(1, 9)
        kind = rng.randrange(5)
        if kind == 0:
            q, work, ans = (f"{name} has {a} {thing}. {name} buys {b} more at the market. How many {thing} does "
                            f"{name} have now?", f"{name} has {a} + {b} = {a + b} {thing}.", a + b)
        elif kind == 1:
            a += b
            q, work, ans = (f"{name} had {a} {thing} and gave {b} of them to a friend. How many {thing} are left?",
                            f"{a} - {b} = {a - b} {thing} are left.", a - b)
        elif kind == 2:
            q, work, ans = (f"A box holds {a} {thing}. How many {thing} are in {b} boxes?",
                            f"{b} boxes hold {a} * {b} = {a * b} {thing}.", a * b)
        elif kind == 3:
            q, work, ans = (f"{name} shares {a * b} {thing} equally among {b} friends. How many {thing} does each "
                            f"friend get?", f"Each friend gets {a * b} / {b} = {a} {thing}.", a)
        else:
            q, work, ans = (f"{name} reads {a} pages a day for {b} days and then {c} more pages on the weekend. "
                            f"How many pages did {name} read in all?",
                            f"In {b} days {name} reads {a} * {b} = {a * b} pages. Then {a * b} + {c} = "
                            f"{a * b + c} pages.", a * b + c)
        rows.append({"question": q, "answer": f"{work}\n#### {ans}"})
    return rows


def write_rows(path: Path, rows: list[dict]) -> str:
    """rows as jsonl at path -> the path as a YAML-safe (JSON) string."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return json.dumps(str(Path(path).resolve()))


def gsm8k_yaml(task: str, train: str, test: str, shots: int, max_gen_toks: int, extra: str = "") -> str:
    """The task's YAML; train / test as write_rows returns them; extra: more YAML lines (e.g. gen_prefix)."""
    return GSM8K_YAML.format(task=task, train=train, test=test, shots=shots, max_gen_toks=max_gen_toks, extra=extra)

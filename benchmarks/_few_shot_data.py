"""Local lm-eval tasks (offline, `dataset_path: json`) in the exact YAML shapes of lm-eval 0.4.13's few-shot
suites, and the benchmark's data for them.

Writers (any rows; tests/_few_shot_tasks.py uses them with its small hand-written sets):
- write_mmlu: the installed mmlu `_default_template_yaml` (first_n shots from the dev split, the "Answer:"
  prompt, choices A-D) reading json, one YAML per subject with mmlu's description and its local files
  (a hub config name in lm-eval's), a group; `num_fewshot: 5` in the template (lm-eval's mmlu takes it
  from the command line).
- write_mmlu_pro: the installed leaderboard_mmlu_pro YAML and utils.py (options A-J, first_n 5-shot from
  the validation split: the same five examples before every question).
- write_bbh: the installed leaderboard bbh_mc `_fewshot_template_yaml` (acc_norm, first_n 3-shot) and each
  subtask's own YAML (description, choices, its 3 shots written in it) with local test rows.

The benchmark's suites (write_suites): mmlu subjects and mmlu_pro rows made of the prose that ships with
Python (graphopt.data.real_text_questions), bbh subtasks generated the way BBH's own are (answers
computed) under BBH's own shots, and the zero-shot hellaswag-format task of real text.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import yaml

from graphopt.data.real_text import write_real_text_jsonl
from graphopt.data.real_text_questions import KINDS, questions

MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"


def installed(*parts) -> Path:
    """A file of lm-eval's installed tasks folder."""
    import lm_eval
    return Path(lm_eval.__file__).parent / "tasks" / Path(*parts)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def local_yaml(template: str, data_files: dict[str, str]) -> str:
    """An installed YAML's text with its hub dataset replaced by local json files."""
    lines = [ln for ln in template.splitlines() if not ln.startswith(("dataset_path:", "dataset_name:"))]
    files = "".join(f"    {split}: {json.dumps(path)}\n" for split, path in data_files.items())
    return "dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n" + files + "\n".join(lines) + "\n"


def write_mmlu(root: Path, group: str, subjects: dict[str, tuple[list[dict], list[dict]]]) -> list[str]:
    """subjects: {subject: (dev rows (the shots), test rows)}, rows {"question", "choices" (4), "answer" (0-3)}.
    -> the task names (f"{group}_{subject}"), in a group `group`."""
    d = root / group
    d.mkdir(parents=True)
    template = installed("mmlu", "default", "_default_template_yaml").read_text()
    (d / "_default_template_yaml").write_text(template.replace("dataset_path: cais/mmlu", "dataset_path: json")
                                              + "num_fewshot: 5\n")
    names = []
    for subject, (dev, test) in subjects.items():  # lm-eval's per-subject YAML, local files for the hub config
        files = {split: write_jsonl(d / f"{subject}_{split}.jsonl", [{**r, "subject": subject} for r in rows])
                 for split, rows in (("test", test), ("dev", dev))}
        task = f"{group}_{subject}"
        (d / f"{task}.yaml").write_text(yaml.safe_dump({
            "dataset_name": None, "dataset_kwargs": {"data_files": files},
            "description": MMLU_DESCRIPTION.format(subject.replace("_", " ")),
            "include": "_default_template_yaml", "task": task, "task_alias": subject}, sort_keys=False))
        names.append(task)
    (d / f"_{group}.yaml").write_text(yaml.safe_dump({"group": group, "task": names, "aggregate_metric_list": [
        {"metric": "acc", "weight_by_size": True}]}))
    return names


def mmlu_pro_row(i: int, question: str, options: list[str], answer: int, category: str) -> dict:
    """A row in TIGER-Lab/MMLU-Pro's schema."""
    return {"question_id": i, "question": question, "options": options, "answer": "ABCDEFGHIJ"[answer],
            "answer_index": answer, "category": category, "src": category}


def write_mmlu_pro(root: Path, task: str, validation: list[dict], test: list[dict]) -> list[str]:
    """validation (its first 5 rows are the shots) and test rows in MMLU-Pro's schema (mmlu_pro_row)."""
    d = root / task
    d.mkdir(parents=True)
    files = {"test": write_jsonl(d / "test.jsonl", test), "validation": write_jsonl(d / "validation.jsonl", validation)}
    src = installed("leaderboard", "mmlu_pro")
    shutil.copy(src / "utils.py", d / "utils.py")
    text = local_yaml((src / "mmlu_pro.yaml").read_text(), files).replace("task: leaderboard_mmlu_pro", f"task: {task}")
    (d / f"{task}.yaml").write_text(text)
    return [task]


def write_bbh(root: Path, group: str, tests: dict[str, list[dict]]) -> list[str]:
    """tests: {bbh subtask (its installed YAML gives description, choices, shots): rows {"input", "target"}}.
    -> the task names (f"{group}_{subtask}"), in a group `group`."""
    d = root / group
    d.mkdir(parents=True)
    src = installed("leaderboard", "bbh_mc")
    (d / "_fewshot_template_yaml").write_text(
        "\n".join(ln for ln in (src / "_fewshot_template_yaml").read_text().splitlines()
                  if not ln.startswith("dataset_path:")) + "\n")
    names = []
    for sub, rows in tests.items():
        cfg = yaml.safe_load((src / f"{sub}.yaml").read_text())
        task = f"{group}_{sub}"
        cfg.update(task=task, dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"test": write_jsonl(d / f"{sub}.jsonl", rows)}})
        (d / f"{task}.yaml").write_text(yaml.safe_dump(cfg))
        names.append(task)
    (d / f"_{group}.yaml").write_text(yaml.safe_dump({"group": group, "task": names, "aggregate_metric_list": [
        {"metric": "acc_norm", "aggregation": "mean", "weight_by_size": True}]}))  # as _leaderboard_bbh.yaml
    return names


# ----------------------------------------------------------------- bbh subtasks, generated as BBH's own

NAMES = ["Fidel", "Jerry", "Vina", "Millicent", "Raymond", "Kristian", "Millie", "Maybelle", "Leda", "Osvaldo",
         "Michaela", "Jamey", "Sherrie", "Tamika", "Helene", "Alexis", "Delbert", "Gwenn", "Lorine", "Ka"]
COUNTABLE = {"fruits": ["apple", "banana", "plum", "peach", "grape", "orange", "strawberry", "nectarine",
                        "raspberry", "blackberry"],
             "vegetables": ["carrot", "onion", "potato", "cabbage", "yam", "stalk of celery", "head of broccoli",
                            "lettuce head", "garlic", "cauliflower"],
             "musical instruments": ["violin", "flute", "clarinet", "piano", "trumpet", "drum", "trombone",
                                     "accordion"],
             "animals": ["cat", "dog", "goat", "rabbit", "snake", "frog", "mouse", "cow", "pig", "duck"]}
NUMBER_WORDS = ["", "a", "two", "three", "four"]
COLORS = ["red", "blue", "green", "yellow", "pink", "white", "purple", "black", "orange", "brown"]
PARTNERS = ["Lola", "Rodrigo", "Patrick", "Melissa", "Izzi", "Karl", "Ophelia", "Jamie", "Sam", "Helga"]


def boolean_expressions(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        words = [rng.choice(["True", "False"])]
        for _ in range(rng.randrange(1, 4)):
            words += [rng.choice(["and", "or"]), *(["not"] * rng.randrange(0, 2)), rng.choice(["True", "False"])]
        expr = " ".join(words)
        rows.append({"input": f"{expr} is", "target": str(eval(expr))})  # noqa: S307 (our own True/False/and/or)
    return rows


def web_of_lies(rng: random.Random, n: int, names: list[str] = NAMES[:10]) -> list[dict]:
    rows = []
    for _ in range(n):
        who = rng.sample(names, 5)
        truth = rng.random() < 0.5
        text = [f"{who[0]} {'tells the truth' if truth else 'lies'}."]
        for a, b in zip(who, who[1:]):
            says_truth = rng.random() < 0.5
            text.append(f"{b} says {a} {'tells the truth' if says_truth else 'lies'}.")
            truth = truth == says_truth
        rows.append({"input": f"Question: {' '.join(text)} Does {who[-1]} tell the truth?",
                     "target": "Yes" if truth else "No"})
    return rows


def navigate(rng: random.Random, n: int) -> list[dict]:
    """'Always face forward' walks; half of them end back at the start (the last steps undo the rest)."""
    step = {"forward": (0, 1), "backward": (0, -1), "left": (-1, 0), "right": (1, 0)}
    rows = []
    for _ in range(n):
        moves = [(rng.choice(list(step)), rng.randint(1, 10)) for _ in range(rng.randint(2, 5))]
        x = sum(step[d][0] * k for d, k in moves)
        y = sum(step[d][1] * k for d, k in moves)
        if rng.random() < 0.5:  # walk back
            moves += [("left" if x > 0 else "right", abs(x))] * (x != 0) + [("backward" if y > 0 else "forward",
                                                                             abs(y))] * (y != 0)
            x = y = 0
        text = " ".join(f"Take {k} step{'s' * (k != 1)} {d}." for d, k in moves)
        rows.append({"input": "If you follow these instructions, do you return to the starting point? Always face "
                              f"forward. {text}\nOptions:\n- Yes\n- No", "target": "Yes" if x == y == 0 else "No"})
    return rows


def _plural(thing: str) -> str:
    head, _, rest = thing.partition(" of ")
    if rest:  # "stalk of celery" -> "stalks of celery"
        return f"{_plural(head)} of {rest}"
    if thing == "mouse":
        return "mice"
    if thing.endswith("y") and thing[-2] not in "aeiou":
        return thing[:-1] + "ies"
    return thing + ("es" if thing.endswith(("ch", "sh", "to")) else "s")


def object_counting(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        kinds = rng.sample(list(COUNTABLE), 2)
        items = [(rng.randint(1, 4), k, thing) for k in kinds for thing in rng.sample(COUNTABLE[k], rng.randint(2, 4))]
        rng.shuffle(items)
        said = [(f"an {t}" if c == 1 and t[0] in "aeiou" else f"{NUMBER_WORDS[c]} {t if c == 1 else _plural(t)}")
                for c, _, t in items]
        text = ", ".join(said[:-1]) + ", and " + said[-1]
        asked = kinds[0]
        rows.append({"input": f"I have {text}. How many {asked} do I have?",
                     "target": str(sum(c for c, k, _ in items if k == asked))})
    return rows


def tracking_shuffled_objects_three_objects(rng: random.Random, n: int) -> list[dict]:
    people = ["Alice", "Bob", "Claire"]
    rows = []
    for _ in range(n):
        ball = rng.random() < 0.5
        things = rng.sample(COLORS if ball else PARTNERS, 3)
        held = dict(zip(people, things))
        swaps = [rng.sample(people, 2) for _ in range(3)]
        for a, b in swaps:
            held[a], held[b] = held[b], held[a]
        asked = rng.choice(people)
        said = [f"{a} and {b}" for a, b in swaps]
        if ball:
            start = ", ".join(f"{p} has a {t} ball" for p, t in zip(people[:2], things)) + \
                f", and Claire has a {things[2]} ball"
            text = (f"Alice, Bob, and Claire are playing a game. At the start of the game, they are each holding a "
                    f"ball: {start}.\nAs the game progresses, pairs of players trade balls. First, {said[0]} swap "
                    f"balls. Then, {said[1]} swap balls. Finally, {said[2]} swap balls. At the end of the game, "
                    f"{asked} has the")
            options = [f"{t} ball" for t in things]
        else:
            start = ", ".join(f"{p} is dancing with {t}" for p, t in zip(people[:2], things)) + \
                f", and Claire is dancing with {things[2]}"
            text = (f"Alice, Bob, and Claire are dancers at a square dance. At the start of a song, they each have a "
                    f"partner: {start}.\nThroughout the song, the dancers often trade partners. First, {said[0]} "
                    f"switch partners. Then, {said[1]} switch partners. Finally, {said[2]} switch partners. At the "
                    f"end of the dance, {asked} is dancing with")
            options = list(things)
        opts = "\n".join(f"({letter}) {o}" for letter, o in zip("ABC", options))
        rows.append({"input": f"{text}\nOptions:\n{opts}", "target": f"({'ABC'[things.index(held[asked])]})"})
    return rows


BBH_GENERATED = {"boolean_expressions": boolean_expressions, "navigate": navigate, "object_counting": object_counting,
                 "tracking_shuffled_objects_three_objects": tracking_shuffled_objects_three_objects,
                 "web_of_lies": lambda rng, n: web_of_lies(rng, n, NAMES)}

# ------------------------------------------------------------------------------- the benchmark's suites

MMLU_SUBJECTS = {  # subject -> (question kind, text)
    "python_language_reference": ("topic", "reference"), "python_standard_library": ("topic", "library"),
    "sentence_continuation": ("next_sentence", None), "missing_words": ("missing_word", None),
    "documentation_sources": ("source_sentence", None)}
SUITES = ("mmlu", "mmlu_pro", "bbh", "hellaswag")


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (k < n % parts) for k in range(parts)]


def mmlu_subjects(n: int, seed: int = 0) -> dict[str, tuple[list[dict], list[dict]]]:
    """n test questions over MMLU_SUBJECTS (5 dev questions each, never a test question's text)."""
    return {subject: (questions(kind, 5, 4, seed, source), questions(kind, k, 4, seed, source, skip=5))
            for (subject, (kind, source)), k in zip(MMLU_SUBJECTS.items(), _split(n, len(MMLU_SUBJECTS)))}


def mmlu_pro_rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(5 validation rows, n test rows), 10 options each, the kinds taken in turn."""
    def rows(total: int, skip: list[int], offset: int) -> list[dict]:
        made = {kind: questions(kind, k, 10, seed, skip=s) for kind, k, s in zip(KINDS, _split(total, len(KINDS)), skip)}
        order = [(kind, j) for j in range(max(map(len, made.values()))) for kind in KINDS if j < len(made[kind])]
        return [mmlu_pro_row(offset + i, made[kind][j]["question"], made[kind][j]["choices"], made[kind][j]["answer"],
                             kind) for i, (kind, j) in enumerate(order)]
    return rows(5, [0] * len(KINDS), 0), rows(n, _split(5, len(KINDS)), 5)


def bbh_tests(n: int, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    return {sub: make(rng, k) for (sub, make), k in zip(BBH_GENERATED.items(), _split(n, len(BBH_GENERATED)))}


def write_suites(root: Path, n: int, seed: int = 0, suites=SUITES) -> dict[str, list[str]]:
    """The benchmark's suites under root (an lm-eval include_path), n questions each:
    {suite: [task names]} with suite in SUITES; the group / task to pass to --tasks is f"pt_{suite}"."""
    from benchmarks._ttr_setup import write_lm_eval_task

    out = {}
    for suite in suites:
        name = f"pt_{suite}"
        if suite == "mmlu":
            out[suite] = write_mmlu(root, name, mmlu_subjects(n, seed))
        elif suite == "mmlu_pro":
            out[suite] = write_mmlu_pro(root, name, *mmlu_pro_rows(n, seed))
        elif suite == "bbh":
            out[suite] = write_bbh(root, name, bbh_tests(n, seed))
        elif suite == "hellaswag":
            (root / name).mkdir(parents=True)
            data = write_real_text_jsonl(root / name / "data.jsonl", n, seed)
            out[suite] = [write_lm_eval_task(root / name, name, data)]
        else:
            raise ValueError(f"unknown suite {suite!r} (suites: {', '.join(SUITES)})")
    return out

"""Local lm-eval tasks in the exact YAML shapes of lm-eval 0.4.13's few-shot suites, with real text, read
offline (`dataset_path: json`): `write_few_shot_tasks(dir)` -> {group or task name: [task names]}.

- mmlu: the installed `_default_template_yaml` (first_n shots from the dev split, the "Answer:"
  prompt, choices A-D) reading json, one YAML per subject with its description and its local data
  files (a hub config name in lm-eval's), a group; `num_fewshot: 5` is in the template (lm-eval's
  mmlu takes it from the command line).
- leaderboard_mmlu_pro: the installed YAML and utils.py (10 options, first_n 5-shot from validation).
- leaderboard_bbh: the installed `_fewshot_template_yaml` (acc_norm, first_n 3-shot) and the
  subtasks' own YAML (description, choices, the 3 shots written in it) with local test data:
  boolean_expressions and web_of_lies generated (their answers computed), sports_understanding written.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import yaml

MMLU = {  # subject -> (dev: 5 shots, test) rows of (question, [A, B, C, D], answer index)
    "high_school_geography": (
        [("Which river flows through Cairo?", ["Nile", "Congo", "Niger", "Zambezi"], 0),
         ("The Tropic of Cancer lies at about which latitude?", ["0 degrees", "23.5 degrees north",
                                                                  "45 degrees south", "66.5 degrees north"], 1),
         ("Which country has the largest population in South America?", ["Argentina", "Colombia", "Brazil",
                                                                          "Peru"], 2),
         ("A delta is formed where a river", ["meets a glacier", "leaves a lake", "enters a canyon",
                                               "deposits sediment as it enters a sea or lake"], 3),
         ("The Himalayas were formed by the collision of India with", ["Africa", "Eurasia", "Australia",
                                                                        "Antarctica"], 1)],
        [("Which ocean lies between Africa and Australia?", ["Atlantic", "Arctic", "Indian", "Pacific"], 2),
         ("The capital of Canada is", ["Toronto", "Ottawa", "Vancouver", "Montreal"], 1),
         ("Which desert covers much of northern Africa?", ["Gobi", "Kalahari", "Atacama", "Sahara"], 3),
         ("Urbanization is best described as", ["the growth of the share of people living in cities",
                                                "the spread of farmland", "the decline of trade",
                                                "the movement of rivers"], 0),
         ("Monsoon rains in South Asia are driven mainly by", ["ocean tides", "seasonal wind reversals",
                                                               "volcanic ash", "the rotation of the Moon"], 1),
         ("Which line divides the Earth into the Northern and Southern Hemispheres?",
          ["The Prime Meridian", "The International Date Line", "The Equator", "The Arctic Circle"], 2)]),
    "astronomy": (
        [("Which planet is closest to the Sun?", ["Venus", "Mercury", "Mars", "Earth"], 1),
         ("What causes the phases of the Moon?", ["Earth's shadow", "clouds on the Moon",
                                                  "the changing angle at which we see its sunlit half",
                                                  "the Moon's rotation"], 2),
         ("A light-year is a unit of", ["time", "brightness", "mass", "distance"], 3),
         ("The Sun is mainly powered by", ["nuclear fusion of hydrogen into helium", "burning coal",
                                           "radioactive decay", "gravitational collapse alone"], 0),
         ("Which planet has the most prominent ring system?", ["Jupiter", "Neptune", "Saturn", "Uranus"], 2)],
        [("The Milky Way is a", ["globular cluster", "spiral galaxy", "nebula", "single star"], 1),
         ("Why do we see only one side of the Moon?", ["it does not rotate",
                                                       "its rotation is tidally locked to its orbit",
                                                       "the other side is dark", "Earth blocks the view"], 1),
         ("Which of these is a dwarf planet?", ["Pluto", "Mars", "Io", "Titan"], 0),
         ("A star much more massive than the Sun ends its life most likely as", ["a white dwarf", "a comet",
                                                                                 "a planet",
                                                                                 "a neutron star or black hole"], 3),
         ("The seasons on Earth are caused mainly by", ["the distance to the Sun", "the tilt of Earth's axis",
                                                        "sunspots", "the Moon"], 1),
         ("Which instrument splits light into its component colors?", ["a spectrograph", "a barometer",
                                                                        "a seismometer", "a compass"], 0)]),
    "nutrition": (
        [("Which vitamin is produced in the skin when exposed to sunlight?", ["Vitamin A", "Vitamin C",
                                                                               "Vitamin D", "Vitamin K"], 2),
         ("The main function of dietary fiber is to", ["provide protein", "aid digestion and regularity",
                                                       "store oxygen", "build bone"], 1),
         ("Iron deficiency most commonly leads to", ["anemia", "scurvy", "rickets", "goiter"], 0),
         ("Which macronutrient provides the most energy per gram?", ["carbohydrate", "protein", "water",
                                                                     "fat"], 3),
         ("Scurvy is caused by a lack of", ["vitamin B12", "vitamin C", "calcium", "iodine"], 1)],
        [("Which mineral is most important for strong bones and teeth?", ["sodium", "calcium", "zinc",
                                                                          "copper"], 1),
         ("Proteins are made of", ["fatty acids", "simple sugars", "amino acids", "nucleotides"], 2),
         ("Which food is the richest source of omega-3 fatty acids?", ["white rice", "oily fish", "potatoes",
                                                                       "apples"], 1),
         ("Iodine is added to table salt to prevent", ["goiter", "anemia", "diabetes", "night blindness"], 0),
         ("Which vitamin is needed for normal blood clotting?", ["vitamin E", "vitamin B1", "vitamin C",
                                                                 "vitamin K"], 3),
         ("The body stores most of its excess energy as", ["protein", "glycogen and fat", "water",
                                                           "vitamins"], 1)]),
}

MMLU_PRO_OPTIONS = ["photosynthesis", "respiration", "transpiration", "fermentation", "osmosis", "diffusion",
                    "evaporation", "condensation", "germination", "pollination"]
MMLU_PRO = [  # (question, ten options (a fixed pool, rotated), answer index)
    ("The process by which green plants use light to make sugar from carbon dioxide and water is", 0),
    ("Water vapor leaving a plant through the stomata of its leaves is called", 2),
    ("Yeast turning sugar into alcohol and carbon dioxide without oxygen is", 3),
    ("The movement of water across a semipermeable membrane toward the higher solute concentration is", 4),
    ("A seed beginning to sprout and grow into a seedling undergoes", 8),
    ("Cells releasing the energy stored in glucose by using oxygen carry out", 1),
    ("Bees carrying pollen from one flower to another perform", 9),
    ("Molecules spreading from a region of high to low concentration without a membrane is", 5),
    ("Dew forming on grass on a cool morning is an example of", 7),
    ("A puddle drying up on a warm afternoon is an example of", 6),
    ("Algae producing oxygen in sunlight are carrying out", 0),
]

SPORTS = [("Is the following sentence plausible? \"The goalkeeper caught the ball inside the penalty area.\"",
           "yes"),
          ("Is the following sentence plausible? \"The quarterback threw a touchdown pass in the third quarter.\"",
           "yes"),
          ("Is the following sentence plausible? \"The tennis player hit a home run over the net.\"", "no"),
          ("Is the following sentence plausible? \"The striker was called offside in the World Cup final.\"",
           "yes"),
          ("Is the following sentence plausible? \"The swimmer dribbled past two defenders.\"", "no"),
          ("Is the following sentence plausible? \"The pitcher struck out the batter with a curveball.\"", "yes"),
          ("Is the following sentence plausible? \"The golfer scored a slam dunk on the eighteenth hole.\"", "no"),
          ("Is the following sentence plausible? \"The point guard made a three-pointer at the buzzer.\"", "yes")]
NAMES = ["Fidel", "Jerry", "Vina", "Millicent", "Raymond", "Kristian", "Millie", "Maybelle", "Leda", "Osvaldo"]


def _boolean_expressions(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        words = [rng.choice(["True", "False"])]
        for _ in range(rng.randrange(1, 4)):
            words += [rng.choice(["and", "or"]), *(["not"] * rng.randrange(0, 2)), rng.choice(["True", "False"])]
        expr = " ".join(words)
        rows.append({"input": f"{expr} is", "target": str(eval(expr))})  # noqa: S307 (our own True/False/and/or)
    return rows


def _web_of_lies(rng: random.Random, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        names = rng.sample(NAMES, 5)
        truth = rng.random() < 0.5
        text = [f"{names[0]} {'tells the truth' if truth else 'lies'}."]
        for a, b in zip(names, names[1:]):
            says_truth = rng.random() < 0.5
            text.append(f"{b} says {a} {'tells the truth' if says_truth else 'lies'}.")
            truth = truth == says_truth
        rows.append({"input": f"Question: {' '.join(text)} Does {names[-1]} tell the truth?",
                     "target": "Yes" if truth else "No"})
    return rows


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return json.dumps(str(path))


def _installed(*parts) -> Path:
    import lm_eval
    return Path(lm_eval.__file__).parent / "tasks" / Path(*parts)


def _local(template: str, data_files: dict[str, str]) -> str:
    """An installed YAML's text with its hub dataset replaced by local json files."""
    lines = [ln for ln in template.splitlines() if not ln.startswith(("dataset_path:", "dataset_name:"))]
    files = "".join(f"    {split}: {path}\n" for split, path in data_files.items())
    return "dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n" + files + "\n".join(lines) + "\n"


def write_mmlu(root: Path) -> list[str]:
    d = root / "mmlu"
    d.mkdir()
    data, names = {}, []
    for subject, (dev, test) in MMLU.items():
        for split, rows in (("dev", dev), ("test", test)):
            data[subject, split] = _jsonl(d / f"{subject}_{split}.jsonl",
                                          [{"question": q, "subject": subject, "choices": c, "answer": a}
                                           for q, c, a in rows])
    template = _installed("mmlu", "default", "_default_template_yaml").read_text()
    (d / "_default_template_yaml").write_text(template.replace("dataset_path: cais/mmlu", "dataset_path: json")
                                              + "num_fewshot: 5\n")
    for subject in MMLU:  # lm-eval's per-subject YAML; the subject's local files instead of a hub config
        task = f"local_mmlu_{subject}"
        (d / f"{task}.yaml").write_text(yaml.safe_dump({
            "dataset_name": None, "dataset_kwargs": {"data_files": {"test": json.loads(data[subject, "test"]),
                                                                    "dev": json.loads(data[subject, "dev"])}},
            "description": f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n",
            "include": "_default_template_yaml", "task": task, "task_alias": subject}, sort_keys=False))
        names.append(task)
    (d / "_local_mmlu.yaml").write_text(yaml.safe_dump({"group": "local_mmlu", "task": names,
                                                         "aggregate_metric_list": [{"metric": "acc",
                                                                                    "weight_by_size": True}]}))
    return names


def write_mmlu_pro(root: Path) -> list[str]:
    d = root / "mmlu_pro"
    d.mkdir()
    rows = []
    for i, (question, answer) in enumerate(MMLU_PRO):
        options = MMLU_PRO_OPTIONS[i % 10:] + MMLU_PRO_OPTIONS[:i % 10]  # rotated: answers spread over A-J
        k = options.index(MMLU_PRO_OPTIONS[answer])
        rows.append({"question_id": i, "question": question, "options": options, "answer": "ABCDEFGHIJ"[k],
                     "answer_index": k, "category": "biology"})
    files = {"test": _jsonl(d / "test.jsonl", rows[5:]), "validation": _jsonl(d / "validation.jsonl", rows[:5])}
    src = _installed("leaderboard", "mmlu_pro")
    shutil.copy(src / "utils.py", d / "utils.py")
    text = _local((src / "mmlu_pro.yaml").read_text(), files).replace("task: leaderboard_mmlu_pro",
                                                                       "task: local_mmlu_pro")
    (d / "local_mmlu_pro.yaml").write_text(text)
    return ["local_mmlu_pro"]


def write_bbh(root: Path, rng: random.Random) -> list[str]:
    d = root / "bbh"
    d.mkdir()
    src = _installed("leaderboard", "bbh_mc")
    (d / "_fewshot_template_yaml").write_text(
        "\n".join(ln for ln in (src / "_fewshot_template_yaml").read_text().splitlines()
                  if not ln.startswith("dataset_path:")) + "\n")
    tests = {"boolean_expressions": _boolean_expressions(rng, 8), "web_of_lies": _web_of_lies(rng, 8),
             "sports_understanding": [{"input": q, "target": t} for q, t in SPORTS]}
    names = []
    for sub, rows in tests.items():
        cfg = yaml.safe_load((src / f"{sub}.yaml").read_text())
        task = f"local_bbh_{sub}"
        cfg.update(task=task, dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"test": str(d / f"{sub}.jsonl")}})
        _jsonl(d / f"{sub}.jsonl", rows)
        (d / f"{task}.yaml").write_text(yaml.safe_dump(cfg))
        names.append(task)
    (d / "_local_bbh.yaml").write_text(yaml.safe_dump({"group": "local_bbh", "task": names}))
    return names


def write_few_shot_tasks(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """The three suites under root (an lm-eval include_path): {"local_mmlu": [...], "local_mmlu_pro": [...],
    "local_bbh": [...]}, each value the task names."""
    rng = random.Random(seed)
    return {"local_mmlu": write_mmlu(root), "local_mmlu_pro": write_mmlu_pro(root), "local_bbh": write_bbh(root, rng)}

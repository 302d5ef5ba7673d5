"""Synthetic HellaSwag: the embedded default data set (no files, no network).

Rows have HellaSwag's raw schema and go through the same formatting as the real data
(`format_row`), so the bracket / [title] / capitalisation path is exercised. Lengths follow the real
validation set roughly: contexts 10-60 words, endings 5-35 words; about a third of the rows look like
the WikiHow part ("[header] How to ... [title] ... [step] ..."), the rest like ActivityNet captions.
Deterministic in (n, seed).
"""
from __future__ import annotations

import random

from graphopt.data.hellaswag import N_ENDINGS, HellaSwagRow, format_row

DEFAULT_N = 200

ACTIVITIES = [
    "Removing ice from car", "Baking cookies", "Playing violin", "Washing dishes", "Shaving",
    "Personal Care and Style", "Home and Garden", "Food and Entertaining", "Sports and Fitness",
    "Playing harmonica", "Cleaning windows", "Tennis serve with ball bouncing", "Making a sandwich",
    "Education and Communications", "Mowing the lawn", "Kayaking", "Hand washing clothes",
    "Health", "Relationships", "Pets and Animals", "Doing karate", "Ironing clothes", "Rock climbing",
    "Finance and Business", "Painting", "Brushing teeth", "Skiing", "Travel", "Knitting",
]
SUBJECTS = ["a man", "a woman", "the girl", "the boy", "two people", "a young child", "the instructor",
            "a group of friends", "the camera", "an older man", "the athlete", "she", "he", "they"]
VERBS = ["picks up", "puts down", "walks toward", "holds", "shows", "cleans", "pours", "cuts",
         "throws", "lifts", "turns", "paints", "points at", "ties", "brushes", "opens", "closes",
         "spins", "places", "wipes", "carries", "adjusts", "measures", "folds"]
OBJECTS = ["the bucket", "a brush", "the car", "a large bowl", "the rope", "a towel", "the ball",
           "a sponge", "the window", "a knife", "the instrument", "the dog", "a small box", "the paddle",
           "a piece of paper", "the shirt", "the lawn mower", "a cup of water", "the skis", "the canvas"]
PLACES = ["in the kitchen", "on the field", "near the river", "in front of the house", "at the gym",
          "on the stage", "in a small room", "outside in the snow", "by the window", "on the beach"]
ADVERBS = ["slowly", "carefully", "quickly", "again", "while talking", "several times", "with both hands",
           "and smiles", "for a while", "as the music plays"]
TIPS = ["Make sure the surface is clean before you begin", "Ask a friend to help you if needed",
        "Use warm water and a mild soap", "Keep your back straight the whole time",
        "Check the instructions on the package", "Do not rush this part",
        "Wear gloves to protect your hands", "Practice a little every day"]


def _clause(rng: random.Random) -> str:
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.6:
        words.append(rng.choice(PLACES))
    if rng.random() < 0.5:
        words.append(rng.choice(ADVERBS))
    return " ".join(words)


def _sentences(rng: random.Random, min_words: int, max_words: int) -> str:
    target = rng.randint(min_words, max_words)
    out: list[str] = []
    while sum(len(s.split()) for s in out) < target:
        out.append(_clause(rng).capitalize() + ".")
    text = " ".join(out)
    words = text.split()
    if len(words) > max_words:  # trim to the range, keep a sentence end
        text = " ".join(words[:max_words]).rstrip(".,") + "."
    return text


def _ending(rng: random.Random, wikihow: bool) -> str:
    if wikihow and rng.random() < 0.5:
        text = f"{rng.choice(TIPS)}. [substeps] {_sentences(rng, 4, 25)}"
    else:
        text = _clause(rng) + ". " + (_sentences(rng, 1, 22) if rng.random() < 0.7 else "")
    words = text.split()
    if len(words) < 5:
        text += " " + _clause(rng)
    if len(text.split()) > 35:
        text = " ".join(text.split()[:35]).rstrip(".,") + "."
    if rng.random() < 0.1:
        text = text.replace(" ", "  ", 1)  # the real data has stray double spaces
    return text.strip() if rng.random() < 0.8 else " " + text


def _raw_row(rng: random.Random, i: int) -> dict:
    activity = rng.choice(ACTIVITIES)
    wikihow = rng.random() < 0.35
    if wikihow:
        ctx_a = (f"[header] How to {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)} "
                 f"[title] {_sentences(rng, 4, 20)} [step] {_sentences(rng, 4, 30)}")
        ctx_b = ""
        source_id = f"wikihow~{rng.randint(1000, 99999)}"
    else:
        ctx_a = _sentences(rng, 8, 50)
        ctx_b = rng.choice(SUBJECTS) + (" " + rng.choice(VERBS) if rng.random() < 0.5 else "")
        if rng.random() < 0.2:
            ctx_b = ctx_b.upper() if rng.random() < 0.5 else ctx_b.title()  # odd capitalisation
        source_id = f"activitynet~v_{rng.getrandbits(40):010x}"
    endings = [_ending(rng, wikihow) for _ in range(N_ENDINGS)]
    return {"ind": i, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": (ctx_a + " " + ctx_b).strip(), "endings": endings, "source_id": source_id,
            "split": "val", "split_type": "indomain", "label": str(rng.randrange(N_ENDINGS))}


def synthetic_raw(n: int = DEFAULT_N, seed: int = 0) -> list[dict]:
    """Raw records (the Rowan/hellaswag schema, label as a string) that `synthetic_hellaswag` formats."""
    rng = random.Random(seed)
    return [_raw_row(rng, i) for i in range(n)]


def synthetic_hellaswag(n: int = DEFAULT_N, seed: int = 0) -> list[HellaSwagRow]:
    """`n` deterministic HellaSwag-format rows, formatted exactly as the real data is."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [format_row(doc, i, where=f"<synthetic seed={seed}>") for i, doc in enumerate(synthetic_raw(n, seed))]

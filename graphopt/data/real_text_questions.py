"""Multiple-choice questions in MMLU's row schema ({"question", "choices", "answer"}) made of the same prose
as graphopt.data.real_text (the reference-manual topics and the standard library's docstrings that ship
with Python), so that few-shot prompts built from them have the lengths of real ones.

Kinds (each picks its right answer from the text and its distractors from elsewhere in it):
- topic: which part of the documentation a passage (a paragraph's first sentences) comes from; choices
  are topic titles. `source` "reference" (pydoc topics) or "library" (module docstrings) narrows the
  passages and titles to one of the two.
- next_sentence: which sentence follows a passage; distractors have about the same number of words.
- missing_word: which word fills the blank in a sentence; distractors are words of the text of about
  the same length that the sentence does not contain.
- source_sentence: which of the sentences comes from the documentation of a given topic.

Deterministic in (kind, n, n_choices, seed, source, skip) for a given Python version. Nothing is
downloaded.
"""
from __future__ import annotations

import functools
import random
import re

from graphopt.data.real_text import ENDING_WORDS, LENGTH_TOLERANCE, candidates, is_prose_sentence, paragraphs

KINDS = ("topic", "next_sentence", "missing_word", "source_sentence")
PASSAGE_WORDS = 70  # a topic question's passage: the paragraph's first sentences up to this many words
_WORD = re.compile(r"\b[a-z]{5,}\b")
_COMMON = frozenset("about above after again against because before being below between cannot could during "
                    "every other should their there these those through under until where which while would "
                    "itself something".split())


def _library(title: str) -> bool:
    return title.endswith(" module")


def _passages(source: str | None) -> list[tuple[str, str]]:
    """(title, passage) of every paragraph with two sentences or more, from `source` (None: both)."""
    out = []
    for title, sents in paragraphs():
        if len(sents) < 2 or (source is not None and (source == "library") != _library(title)):
            continue
        words, passage = 0, []
        for s in sents:
            if passage and words + len(s.split()) > PASSAGE_WORDS:
                break
            passage.append(s)
            words += len(s.split())
        out.append((title, " ".join(passage)))
    return out


@functools.lru_cache(maxsize=1)
def _prose_sentences() -> list[tuple[str, str]]:
    """(title, sentence) of every prose sentence of ENDING_WORDS words."""
    lo, hi = ENDING_WORDS
    return [(t, s) for t, sents in paragraphs() for s in sents if is_prose_sentence(s) and lo <= len(s.split()) <= hi]


@functools.lru_cache(maxsize=1)
def _vocabulary() -> list[str]:
    """Lower-case words of 5+ letters the text uses at least twice (distractors for missing_word)."""
    counts: dict[str, int] = {}
    for _, s in _prose_sentences():
        for w in _WORD.findall(s):
            counts[w] = counts.get(w, 0) + 1
    return sorted(w for w, c in counts.items() if c >= 2 and w not in _COMMON)


def _similar_length(pool: list[str], right: str, exclude: set[str], k: int, rng: random.Random) -> list[str]:
    """k sentences of `pool` whose word count is within LENGTH_TOLERANCE of `right`'s (widened if too few)."""
    n = len(right.split())
    for tol in (LENGTH_TOLERANCE, 2 * LENGTH_TOLERANCE, 10.0):
        near = sorted({s for s in pool if abs(len(s.split()) - n) <= tol * n and s != right and s not in exclude})
        if len(near) >= k:
            return rng.sample(near, k)
    raise ValueError(f"too few sentences to draw {k} distractors for {right!r}")


def _place(right: str, wrong: list[str], rng: random.Random) -> tuple[list[str], int]:
    answer = rng.randrange(len(wrong) + 1)
    return wrong[:answer] + [right] + wrong[answer:], answer


def _topic(item, k: int, rng: random.Random, titles: list[str]) -> dict:
    title, passage = item
    choices, answer = _place(title, rng.sample([t for t in titles if t != title], k), rng)
    return {"question": f"Which part of the Python documentation is this passage from?\n\"{passage}\"",
            "choices": choices, "answer": answer}


def _next_sentence(item, k: int, rng: random.Random, pool: list[tuple[str, str]]) -> dict:
    title, _, ctx, right = item
    others = [e for t, e in pool if t != title]  # another topic's sentence cannot continue this passage
    choices, answer = _place(right, _similar_length(others, right, set(ctx), k, rng), rng)
    return {"question": "Which sentence comes next in this passage of the Python documentation?\n\""
                        + " ".join(ctx) + "\"", "choices": choices, "answer": answer}


def _missing_word(item, k: int, rng: random.Random, vocabulary: list[str]) -> dict:
    sentence, word = item
    blank = re.sub(rf"\b{word}\b", "_____", sentence, count=1)
    used = set(_WORD.findall(sentence.lower()))
    near = [w for w in vocabulary if abs(len(w) - len(word)) <= 2 and w not in used and w != word]
    choices, answer = _place(word, rng.sample(near, k), rng)
    return {"question": f"Which word best fills the blank?\n\"{blank}\"", "choices": choices, "answer": answer}


def _source_sentence(item, k: int, rng: random.Random, by_title: dict[str, list[str]]) -> dict:
    title, right = item
    others = [s for t, ss in by_title.items() if t != title for s in ss]
    choices, answer = _place(right, _similar_length(others, right, set(by_title[title]), k, rng), rng)
    return {"question": f"Which of these sentences is from the Python documentation of \"{title}\"?",
            "choices": choices, "answer": answer}


def _items(kind: str, source: str | None) -> tuple[list, object]:
    """(the things a kind's questions are made of, what its distractors are drawn from)."""
    if kind == "topic":
        items = _passages(source)
        return items, sorted({t for t, _ in items})
    if kind == "next_sentence":
        contexts, endings = candidates()
        return list(contexts), sorted({(t, e) for t, _, e in endings})
    if kind == "missing_word":
        items = []
        for _, s in _prose_sentences():
            words = [w for w in _WORD.findall(s) if w not in _COMMON]
            if words:
                items.append((s, words[len(words) // 2]))  # a word from the middle of the sentence
        return items, _vocabulary()
    if kind == "source_sentence":
        by_title: dict[str, list[str]] = {}
        for t, s in _prose_sentences():
            by_title.setdefault(t, []).append(s)
        return [(t, s) for t, ss in by_title.items() for s in ss], by_title
    raise ValueError(f"unknown question kind {kind!r} (kinds: {', '.join(KINDS)})")


BUILD = {"topic": _topic, "next_sentence": _next_sentence, "missing_word": _missing_word,
         "source_sentence": _source_sentence}


def questions(kind: str, n: int, n_choices: int = 4, seed: int = 0, source: str | None = None,
              skip: int = 0) -> list[dict]:
    """n questions of `kind` with n_choices choices: [{"question", "choices", "answer"}]. The items (passages,
    sentences) are drawn without repetition in one seeded order; `skip` leaves out the first `skip` of that
    order (so the few-shot examples (skip 0, n 5) and the test questions (skip 5) never share an item)."""
    if source not in (None, "reference", "library"):
        raise ValueError(f"source must be None, 'reference' or 'library', got {source!r}")
    items, pool = _items(kind, source)
    order = random.Random(f"{kind}-{source}-{seed}").sample(range(len(items)), len(items))
    if skip + n > len(items):
        raise ValueError(f"only {len(items)} {kind} questions ({source or 'all'} text) can be made from this "
                         f"Python's documentation, asked for {skip + n}")
    rng = random.Random(f"{kind}-{source}-{seed}-{n_choices}-{skip}")
    return [BUILD[kind](items[i], n_choices - 1, rng, pool) for i in order[skip:skip + n]]

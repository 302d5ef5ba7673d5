"""A HellaSwag-format multiple-choice set made of real English prose that ships with Python itself:
the reference-manual topics of `pydoc_data.topics` (the text behind `help("for")`) and the module
docstrings of the standard library's sources (read with `ast`, never imported).

Each row: context = one or two consecutive sentences of a paragraph, the right ending = the sentence
that follows them, three distractors = sentences of about the same length from other topics. Rows have
hellaswag_val.jsonl's schema (ind, activity_label, ctx_a, ctx_b, ctx, endings, label, source_id, split,
split_type) and go through the same formatting (`format_row`); about a third are written like HellaSwag's
WikiHow rows ("[header] ... [title] ... [step] ...") so lm-eval's bracket preprocessing is exercised.
A real language model should pick the right ending far above chance (0.25); a random one cannot.

Deterministic in (n, seed) for a given Python version (the text is that version's documentation). No
files are needed and nothing is downloaded. `write_real_text_jsonl` writes it for `graphopt eval --data`
and lm-eval's hellaswag task with dataset_path json.
"""
from __future__ import annotations

import functools
import random
import re
from pathlib import Path

from graphopt.data.hellaswag import N_ENDINGS, HellaSwagRow, format_row, write_hellaswag_jsonl

CONTEXT_WORDS = (8, 60)  # context sentences, in words
ENDING_WORDS = (7, 30)  # each ending (~10-40 tokens); longer sentences are cut here, every ending alike
LENGTH_TOLERANCE = 0.35  # a distractor's length within +-35% of the right ending's, so length tells nothing
WIKIHOW_SHARE = 0.35

_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'\u2019][.!?])\s+(?=[A-Z\"])")
_ABBREVIATION = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|No)\.$")
_EMPHASIS = re.compile(r"\*+([^*\s][^*]*?)\*+")
_NOTES = ("Changed in version", "Added in version", "New in version", "Deprecated", "See also", "Note:")


def _topics() -> list[tuple[str, str]]:
    """(title, text) of the reference-manual topics (where this Python build has them) and of the
    standard library's module docstrings."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions leave pydoc_data out
        topics = {}
    return [(key.replace("-", " ").capitalize(), topics[key]) for key in sorted(topics)] + _stdlib_docstrings()


def _stdlib_docstrings() -> list[tuple[str, str]]:
    import ast
    import sysconfig

    out = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc:
            out.append((path.stem.replace("_", " ").strip().capitalize() + " module", doc))
    return out


def _prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running text, each on one line: no code, grammar, tables, lists or headings."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(ln.startswith((" ", "\t", "*", "-", "=", "+", "|", ">", "~", "^")) for ln in lines) or len(lines) < 2:
            continue  # indented code, bullet lists, headings' underlines, tables
        para = " ".join(ln.strip() for ln in lines).strip()
        if "::=" in para or ">>>" in para or "\u2022" in para or para.startswith(_NOTES):
            continue
        out.append(_EMPHASIS.sub(r"\1", para).replace("  ", " "))
    return out


def _sentences(paragraph: str) -> list[str]:
    parts, out = _SENTENCE_END.split(paragraph), []
    for part in parts:  # re-join splits after abbreviations ("e.g. The")
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] += " " + part
        else:
            out.append(part)
    return out


def is_prose_sentence(sentence: str) -> bool:
    """A sentence that reads as prose on its own: starts with a capital, ends with a full stop, no
    symbols of code or markup."""
    return (sentence[:1].isupper() and sentence.endswith(".") and not re.search(r"[`{}\[\]<>=\\#$^~|*]", sentence)
            and sentence.count('"') % 2 == 0 and sentence.count("(") == sentence.count(")"))


def _cut(sentence: str) -> str:
    words = sentence.split()
    return sentence if len(words) <= ENDING_WORDS[1] else " ".join(words[:ENDING_WORDS[1]])


@functools.lru_cache(maxsize=1)
def paragraphs() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(title, sentences) of every prose paragraph of the reference-manual topics and the standard library's
    docstrings, in order; a paragraph that several topics repeat is kept once (under its first title)."""
    out, seen = [], set()
    for title, text in _topics():
        for para in _prose_paragraphs(text):
            if para not in seen:
                seen.add(para)
                out.append((title, tuple(_sentences(para))))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def candidates() -> tuple[list[tuple[str, int, list[str], str]], list[tuple[str, int, str]]]:
    """(contexts, endings): contexts are (title, paragraph id, context sentences, next sentence) from every
    paragraph with at least two clean consecutive sentences; endings are (title, paragraph id, sentence)
    for every clean sentence. A paragraph that several topics repeat is kept once."""
    contexts, endings = [], []
    for pid, (title, sents) in enumerate(paragraphs(), 1):
        ok = [is_prose_sentence(s) for s in sents]
        for i, s in enumerate(sents):
            if ok[i] and ENDING_WORDS[0] <= len(s.split()):
                endings.append((title, pid, _cut(s)))
        for i in range(1, len(sents)):
            for k in (2, 1):  # two context sentences where there are two, else one
                if i - k < 0 or not all(ok[i - k:i + 1]):
                    continue
                ctx = sents[i - k:i]
                n_words = sum(len(s.split()) for s in ctx)
                if CONTEXT_WORDS[0] <= n_words <= CONTEXT_WORDS[1] and len(sents[i].split()) >= ENDING_WORDS[0]:
                    contexts.append((title, pid, ctx, _cut(sents[i])))
                    break
    return contexts, endings


def real_text_raw(n: int, seed: int = 0) -> list[dict]:
    """n raw rows in hellaswag_val.jsonl's schema (see the module docstring)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    contexts, endings = candidates()
    if n > len(contexts):
        raise ValueError(f"only {len(contexts)} real-text rows can be made from this Python's documentation, "
                         f"asked for {n}")
    rng = random.Random(seed)
    by_length: dict[int, list[tuple[str, int, str]]] = {}
    for title, pid, s in endings:
        by_length.setdefault(len(s.split()), []).append((title, pid, s))
    rows = []
    for i, (title, pid, ctx, right) in enumerate(rng.sample(contexts, n)):
        n_words = len(right.split())
        lo, hi = round(n_words * (1 - LENGTH_TOLERANCE)), round(n_words * (1 + LENGTH_TOLERANCE))
        pool = sorted({e for k in range(lo, hi + 1) for t, p, e in by_length.get(k, [])  # other topics' paragraphs
                       if t != title and p != pid and e != right and e not in ctx})
        assert len(pool) >= N_ENDINGS - 1, f"too few {lo}-{hi} word sentences outside {title!r} for distractors"
        wrong = rng.sample(pool, N_ENDINGS - 1)
        label = rng.randrange(N_ENDINGS)
        choices = wrong[:label] + [right] + wrong[label:]
        if rng.random() < WIKIHOW_SHARE:  # "[header] Title [title] first sentence [step] ..." as WikiHow rows
            ctx_a = f"[header] {title} [title] {ctx[0]} [step]" + "".join(" " + s for s in ctx[1:])
        else:
            ctx_a = " ".join(ctx)
        rows.append({"ind": i, "activity_label": title, "ctx_a": ctx_a, "ctx_b": "", "ctx": ctx_a,
                     "endings": choices, "source_id": f"python-docs~{title}", "split": "val",
                     "split_type": "indomain", "label": label})
    return rows


def real_text_hellaswag(n: int = 200, seed: int = 0) -> list[HellaSwagRow]:
    """n rows formatted as lm-evaluation-harness formats HellaSwag (graphopt.data.format_row)."""
    return [format_row(doc, i, "<real text>") for i, doc in enumerate(real_text_raw(n, seed))]


def write_real_text_jsonl(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    """The rows as a hellaswag_val.jsonl-format file (for `graphopt eval --data`, lm-eval json tasks)."""
    return write_hellaswag_jsonl(path, real_text_raw(n, seed))

"""The real-text HellaSwag-format set: deterministic, well-formed rows of Python's own documentation, a
jsonl that graphopt and lm-eval's hellaswag processing read alike."""
import pytest

from graphopt.data import load_hellaswag, real_text_hellaswag, real_text_raw, write_real_text_jsonl
from graphopt.data import real_text
from graphopt.data.hellaswag import N_ENDINGS, preprocess

N = 120


@pytest.fixture(scope="module")
def raw():
    return real_text_raw(N, seed=0)


def test_same_rows_for_the_same_seed(raw):
    assert real_text_raw(N, seed=0) == raw
    assert real_text_raw(N, seed=1) != raw


def test_rows_are_well_formed(raw):
    assert len(raw) == N and [d["ind"] for d in raw] == list(range(N))
    wikihow = 0
    for d in raw:
        endings, label = d["endings"], d["label"]
        assert len(endings) == N_ENDINGS and 0 <= label < N_ENDINGS
        assert len(set(endings)) == N_ENDINGS  # the right ending differs from every distractor
        right_words = len(endings[label].split())
        lo, hi = real_text.ENDING_WORDS
        for e in endings:
            assert lo <= len(e.split()) <= hi and e[:1].isupper()
            assert abs(len(e.split()) - right_words) <= real_text.LENGTH_TOLERANCE * right_words + 1
            assert e not in d["ctx_a"]  # no ending repeats the context
        wikihow += d["ctx_a"].startswith("[header]")
    assert 0.15 * N < wikihow < 0.6 * N
    assert len({d["label"] for d in raw}) == N_ENDINGS


def test_the_right_ending_follows_the_context_in_the_source(raw):
    """The right ending is the next sentence of the context's own paragraph; the distractors come from
    other topics."""
    contexts, endings = real_text.candidates()
    follows = {(tuple(ctx), right): title for title, _, ctx, right in contexts}
    title_of = {}
    for title, _, sentence in endings:
        title_of.setdefault(sentence, set()).add(title)
    for d in raw:
        ctx_a = d["ctx_a"]
        right = d["endings"][d["label"]]
        matches = [t for (ctx, r), t in follows.items() if r == right and all(s in ctx_a for s in ctx)]
        assert d["activity_label"] in matches
        for i, e in enumerate(d["endings"]):
            if i != d["label"]:
                assert d["activity_label"] not in title_of[e]


def test_formatted_rows_lose_the_wikihow_brackets():
    rows = real_text_hellaswag(40, seed=3)
    assert len(rows) == 40
    for r in rows:
        assert "[" not in r.query and r.query.startswith(r.activity_label + ": ")
        assert 0 <= r.label < N_ENDINGS


def test_jsonl_reads_back_as_the_same_rows(tmp_path):
    path = write_real_text_jsonl(tmp_path / "real_text.jsonl", n=30, seed=2)
    assert load_hellaswag(path) == real_text_hellaswag(30, seed=2)


def test_lm_eval_hellaswag_processing_reads_the_jsonl(tmp_path):
    """What lm-eval's hellaswag task does with dataset_path json: datasets' json loader, then its own
    utils.process_docs; the same query, choices and gold as graphopt's rows."""
    datasets = pytest.importorskip("datasets")
    utils = pytest.importorskip("lm_eval.tasks.hellaswag.utils")
    path = write_real_text_jsonl(tmp_path / "real_text.jsonl", n=25, seed=4)
    docs = utils.process_docs(datasets.load_dataset("json", data_files={"validation": str(path)})["validation"])
    ours = load_hellaswag(path)
    assert [(d["query"], d["choices"], d["gold"]) for d in docs] == [(r.query, r.endings, r.label) for r in ours]
    text = "[header] T [title] a  b [step] c"
    assert preprocess(text) == utils.preprocess(text)


def test_too_many_rows_is_a_clear_error():
    contexts, _ = real_text.candidates()
    with pytest.raises(ValueError, match=rf"only {len(contexts)} real-text rows"):
        real_text_raw(len(contexts) + 1)


def test_stdlib_docstrings_alone_still_make_rows(monkeypatch):
    """A Python build without pydoc_data (some distributions leave it out) still has module docstrings."""
    import sys

    monkeypatch.setitem(sys.modules, "pydoc_data.topics", None)  # import -> ImportError
    real_text.paragraphs.cache_clear()
    real_text.candidates.cache_clear()
    try:
        rows = real_text_raw(50, seed=0)
        assert len(rows) == 50 and all(not d["activity_label"][:1].islower() for d in rows)
        assert all(d["activity_label"].endswith(" module") for d in rows)
    finally:
        real_text.paragraphs.cache_clear()
        real_text.candidates.cache_clear()

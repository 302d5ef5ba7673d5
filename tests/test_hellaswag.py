"""HellaSwag loading: lm-eval formatting char for char, every on-disk format, malformed rows, synthetic."""
from __future__ import annotations

import json

import pytest

from graphopt.data import HellaSwagRow, format_row, load_hellaswag, preprocess, synthetic_hellaswag
from graphopt.data.synthetic import synthetic_raw

WIKIHOW = {
    "ind": 7, "activity_label": "Home and Garden",
    "ctx_a": "[header] How to clean a pan [title] Soak the pan. [step] Fill the sink  with water.",
    "ctx_b": "", "ctx": "...", "source_id": "wikihow~123", "split": "val", "split_type": "indomain",
    "endings": [" [substeps] Use soap. ", "Scrub it [title] hard.", "Rinse  twice.", "Dry it   well."],
    "label": "2",
}
ACTIVITYNET = {
    "ind": 8, "activity_label": "Making a sandwich", "ctx_a": "A man is standing in a kitchen.",
    "ctx_b": "HE picks up a KNIFE", "ctx": "...", "source_id": "activitynet~v_abc", "split": "val",
    "split_type": "zeroshot",
    "endings": ["and cuts the bread.", "then [laughs] he sings.", "  puts it down. ", "eats the knife."],
    "label": 0,
}


def test_formatting_matches_lm_eval_char_for_char():
    # expected strings written by hand from lm-eval's utils.py (strip; " [title]" -> ". "; drop [..];
    # "  " -> " " once, so a triple space leaves a double one)
    row = format_row(WIKIHOW, 0)
    assert row.query == "Home and Garden: How to clean a pan. Soak the pan. Fill the sink with water."
    assert row.endings == [" Use soap.", "Scrub it. hard.", "Rinse twice.", "Dry it  well."]
    assert row.label == 2 and row.activity_label == "Home and Garden" and row.source_id == "wikihow~123"

    row = format_row(ACTIVITYNET, 1)
    # ctx_b.capitalize(): first letter upper, the rest lower
    assert row.query == "Making a sandwich: A man is standing in a kitchen. He picks up a knife"
    assert row.endings == ["and cuts the bread.", "then he sings.", "puts it down.", "eats the knife."]
    assert row.label == 0 and row.index == 1


def test_preprocess_edge_cases():
    assert preprocess("  a [title] b  ") == "a. b"
    assert preprocess("x [step] y [substeps] z") == "x y z"
    assert preprocess("[header] only") == " only"  # the bracket goes, the space stays (strip came first)
    assert preprocess("keep [unclosed") == "keep [unclosed"
    assert preprocess("a    b") == "a  b"


def _records() -> list[dict]:
    return [WIKIHOW, ACTIVITYNET] + synthetic_raw(8, seed=3)


def _expected(records):
    return [format_row(r, i) for i, r in enumerate(records)]


def _write_jsonl(path, records, label_as_int=True):
    with open(path, "w") as f:
        for r in records:
            r = dict(r, label=int(r["label"])) if label_as_int else r
            f.write(json.dumps(r) + "\n")


def _hf_records(records):
    # HF's Rowan/hellaswag schema: label is a string
    return [dict(r, label=str(r["label"]), ind=int(r["ind"])) for r in records]


def test_every_on_disk_format_gives_identical_rows(tmp_path):
    import datasets
    import pandas as pd

    val, train = _records(), synthetic_raw(5, seed=9)
    expected = _expected(val)

    jsonl = tmp_path / "hellaswag_val.jsonl"  # original release: label is an int
    _write_jsonl(jsonl, val)
    assert load_hellaswag(jsonl) == expected

    orig_dir = tmp_path / "orig"
    orig_dir.mkdir()
    _write_jsonl(orig_dir / "hellaswag_val.jsonl", val)
    _write_jsonl(orig_dir / "hellaswag_train.jsonl", train)
    assert load_hellaswag(orig_dir) == expected
    assert load_hellaswag(orig_dir, split="train") == _expected(train)

    single = tmp_path / "val.parquet"
    pd.DataFrame(_hf_records(val)).to_parquet(single)
    assert load_hellaswag(single) == expected

    repo = tmp_path / "Rowan_hellaswag"  # the hub repo's layout
    (repo / "data").mkdir(parents=True)
    pd.DataFrame(_hf_records(val)).to_parquet(repo / "data" / "validation-00000-of-00001.parquet")
    pd.DataFrame(_hf_records(train)).to_parquet(repo / "data" / "train-00000-of-00001.parquet")
    assert load_hellaswag(repo) == expected
    assert load_hellaswag(repo, split="train") == _expected(train)

    ds = datasets.Dataset.from_list(_hf_records(val))
    ds.save_to_disk(str(tmp_path / "saved_ds"))
    assert load_hellaswag(tmp_path / "saved_ds") == expected

    dd = datasets.DatasetDict({"validation": ds, "train": datasets.Dataset.from_list(_hf_records(train))})
    dd.save_to_disk(str(tmp_path / "saved_dd"))
    assert load_hellaswag(tmp_path / "saved_dd") == expected
    assert load_hellaswag(tmp_path / "saved_dd", split="train") == _expected(train)
    with pytest.raises(KeyError, match="no split 'test'"):
        load_hellaswag(tmp_path / "saved_dd", split="test")

    for src in (jsonl, single, repo, tmp_path / "saved_dd"):
        assert load_hellaswag(src, limit=3) == expected[:3]


def _malformed(tmp_path, index: int, **change) -> tuple:
    records = [dict(r) for r in _records()]
    for k, v in change.items():
        if v is _DROP:
            del records[index][k]
        else:
            records[index][k] = v
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, records, label_as_int=False)
    return path


_DROP = object()


@pytest.mark.parametrize("index,change,field", [
    (3, {"ctx_b": _DROP}, "ctx_b"),
    (2, {"activity_label": _DROP}, "activity_label"),
    (4, {"endings": ["a", "b", "c"]}, "endings"),
    (5, {"endings": ["a", "b", "c", 4]}, "endings"),
    (1, {"endings": "abcd"}, "endings"),
    (6, {"label": "7"}, "label"),
    (6, {"label": "x"}, "label"),
    (0, {"label": 1.5}, "label"),
    (7, {"ctx_a": None}, "ctx_a"),
    (7, {"ctx_a": 3}, "ctx_a"),
])
def test_malformed_row_names_file_row_and_field(tmp_path, index, change, field):
    path = _malformed(tmp_path, index, **change)
    with pytest.raises(ValueError) as err:
        load_hellaswag(path)
    msg = str(err.value)
    assert str(path) in msg and f"row {index}" in msg and repr(field) in msg, msg


def test_malformed_parquet_row(tmp_path):
    import pandas as pd

    records = _hf_records(_records())
    records[4]["endings"] = ["only", "three", "endings"]
    path = tmp_path / "validation.parquet"
    pd.DataFrame(records).to_parquet(path)
    with pytest.raises(ValueError, match=r"row 4: field 'endings'"):
        load_hellaswag(path)


def test_unlabelled_split(tmp_path):
    # the test split: HF has label "", the original jsonl has no label key
    path = _malformed(tmp_path, 0, label="")
    with pytest.raises(ValueError, match="row 0: field 'label' is empty.*unlabelled"):
        load_hellaswag(path)
    path = _malformed(tmp_path, 0, label=_DROP)
    with pytest.raises(ValueError, match="row 0: field 'label' is empty"):
        load_hellaswag(path)
    rows = load_hellaswag(path, allow_unlabelled=True)
    assert rows[0].label == -1 and rows[1].label == 0


def test_missing_paths_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_hellaswag(tmp_path / "nope.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no HellaSwag 'validation' data"):
        load_hellaswag(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(WIKIHOW) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\): not valid JSON"):
        load_hellaswag(bad)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="unknown HellaSwag file type"):
        load_hellaswag(tmp_path / "x.csv")


def test_synthetic_default():
    rows = load_hellaswag()
    assert len(rows) == 200 and all(isinstance(r, HellaSwagRow) for r in rows)
    assert rows == synthetic_hellaswag(200) and synthetic_hellaswag(50, seed=1) != synthetic_hellaswag(50, seed=2)
    assert load_hellaswag(None, limit=7) == rows[:7]
    ctx_words = [len(r.query.split(":", 1)[1].split()) for r in rows]
    end_words = [len(e.split()) for r in rows for e in r.endings]
    assert 10 <= min(ctx_words) and max(ctx_words) <= 62 and max(ctx_words) - min(ctx_words) > 30
    assert 5 <= min(end_words) and max(end_words) <= 35 and max(end_words) - min(end_words) > 20
    assert len({r.activity_label for r in rows}) > 15 and {r.label for r in rows} == {0, 1, 2, 3}
    raw = synthetic_raw(200)
    assert sum("[title]" in r["ctx_a"] for r in raw) > 30  # the bracket path is exercised...
    assert not any("[" in r.query or "]" in r.query for r in rows)  # ...and the brackets are gone
    assert all(len(r.endings) == 4 and all(isinstance(e, str) and e for e in r.endings) for r in rows)

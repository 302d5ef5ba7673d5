"""HellaSwag rows, read from local files and formatted exactly as lm-evaluation-harness's `hellaswag`
task does (lm_eval/tasks/hellaswag/utils.py, process_docs):

    ctx     = ctx_a + " " + ctx_b.capitalize()
    query   = preprocess(activity_label + ": " + ctx)
    endings = [preprocess(e) for e in endings]
    label   = int(label)

The model is then asked for log p(" " + ending | query) (target delimiter " ").

Sources (no network, ever; graphopt.data.load.load_hellaswag picks between them and the embedded
synthetic set):
  - a `datasets` directory written by `save_to_disk` (a Dataset, or a DatasetDict holding the split),
  - a directory with the parquet files of `Rowan/hellaswag` (any *.parquet whose path names the split,
    e.g. data/validation-00000-of-00001.parquet or validation/0000.parquet),
  - a single parquet file,
  - the original jsonl (hellaswag_val.jsonl: ind, activity_label, ctx_a, ctx_b, ctx, endings, label, ...),
    or a directory holding hellaswag_{train,val,test}.jsonl.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

N_ENDINGS = 4
REQUIRED_FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings")
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = "validation"
_SPLIT_FILE_NAMES = {"train": ("train",), "validation": ("validation", "val"), "test": ("test",)}


@dataclass(frozen=True)
class HellaSwagRow:
    index: int  # position of the row in its split
    query: str  # preprocessed "activity_label: ctx_a Ctx_b"
    endings: list[str]  # preprocessed; the continuation scored is " " + ending
    label: int  # index of the right ending; -1 only when loaded with allow_unlabelled=True
    activity_label: str
    source_id: str | None = None


def preprocess(text: str) -> str:
    """lm-evaluation-harness's hellaswag preprocess: strip, drop WikiHow bracket artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def format_row(doc: dict, index: int, where: str = "<rows>", allow_unlabelled: bool = False) -> HellaSwagRow:
    """One raw HellaSwag record -> HellaSwagRow. `where` names the file in error messages."""
    def bad(field: str, expected: str, got) -> ValueError:
        return ValueError(f"{where}: row {index}: field {field!r}: expected {expected}, got {_short(got)}")

    if not isinstance(doc, dict):
        raise bad("<row>", "a JSON object / record", doc)
    for field in REQUIRED_FIELDS:
        if field not in doc or doc[field] is None:
            raise ValueError(f"{where}: row {index}: field {field!r} is missing "
                             f"(a HellaSwag row needs {', '.join(REQUIRED_FIELDS)}, label)")
    for field in ("activity_label", "ctx_a", "ctx_b"):
        if not isinstance(doc[field], str):
            raise bad(field, "a string", doc[field])
    endings = doc["endings"]
    if hasattr(endings, "tolist"):  # numpy array from parquet / pandas
        endings = endings.tolist()
    if not isinstance(endings, (list, tuple)) or len(endings) != N_ENDINGS or not all(isinstance(e, str) for e in endings):
        raise bad("endings", f"a list of {N_ENDINGS} strings", endings)
    label = _parse_label(doc.get("label"), index, where, allow_unlabelled)
    formatted = [preprocess(e) for e in endings]
    for k, (raw, ending) in enumerate(zip(endings, formatted)):
        if not ending:  # acc_norm divides by the ending's length: an empty one has no score
            after = f" after lm-eval's preprocessing (it was {_short(raw)})" if raw.strip() else ""
            raise ValueError(f"{where}: row {index}: field 'endings': ending {k} is empty{after}; every ending "
                             f"needs at least one character")

    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    source_id = doc.get("source_id")
    return HellaSwagRow(
        index=index,
        query=preprocess(doc["activity_label"] + ": " + ctx),
        endings=formatted,
        label=label,
        activity_label=doc["activity_label"],
        source_id=None if source_id is None else str(source_id),
    )


def _parse_label(raw, index: int, where: str, allow_unlabelled: bool) -> int:
    # HF stores the label as a string ("0".."3"); the original jsonl as an int; the test split has ""
    # (HF) or no key (jsonl).
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        if allow_unlabelled:
            return -1
        raise ValueError(f"{where}: row {index}: field 'label' is empty: this split has no answers (the "
                         f"HellaSwag test split is unlabelled; use split='validation', or pass "
                         f"allow_unlabelled=True to load it with label -1)")
    if isinstance(raw, bool) or isinstance(raw, float) and not raw.is_integer():
        raise ValueError(f"{where}: row {index}: field 'label': expected an integer 0..{N_ENDINGS - 1}, got {_short(raw)}")
    try:
        label = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: row {index}: field 'label': expected an integer 0..{N_ENDINGS - 1}, "
                         f"got {_short(raw)}") from None
    if not 0 <= label < N_ENDINGS:
        raise ValueError(f"{where}: row {index}: field 'label': expected an integer 0..{N_ENDINGS - 1}, got {label}")
    return label


def _short(value, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# ---- readers: each yields raw records (dicts) in file order ----

def _read_jsonl(path: Path, limit: int | None) -> list[dict]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: row {len(docs)} (line {line_no}): not valid JSON: {e}") from None
    return docs


def _read_parquet(paths: list[Path], limit: int | None) -> list[dict]:
    import pyarrow.parquet as pq

    docs: list[dict] = []
    for path in paths:
        if limit is not None and len(docs) >= limit:
            break
        docs.extend(pq.read_table(path).to_pylist())
    return docs if limit is None else docs[:limit]


def _read_saved_dataset(path: Path, split: str, limit: int | None) -> list[dict]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise KeyError(f"{path}: the saved DatasetDict has no split {split!r} (splits: {', '.join(ds)})")
        ds = ds[split]
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds.to_list()


def _split_files(directory: Path, split: str, suffix: str) -> list[Path]:
    """Files under `directory` ending in `suffix` whose path relative to it names `split`."""
    names = _SPLIT_FILE_NAMES.get(split, (split,))
    found = []
    for p in sorted(directory.rglob(f"*{suffix}")):
        parts = re.split(r"[/\\_.\-]+", str(p.relative_to(directory)).lower())
        if any(n in parts for n in names):
            found.append(p)
    return found


def read_source(path: Path, split: str, limit: int | None) -> tuple[list[dict], str]:
    """Raw records of `split` from `path`, and the name used for it in error messages."""
    if not path.exists():
        raise FileNotFoundError(f"HellaSwag data not found: {path} (expected a jsonl or parquet file, a "
                                f"directory of Rowan/hellaswag parquet files, or a datasets.save_to_disk directory)")
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return _read_jsonl(path, limit), str(path)
        if path.suffix == ".parquet":
            return _read_parquet([path], limit), str(path)
        raise ValueError(f"{path}: unknown HellaSwag file type {path.suffix!r} (expected .jsonl or .parquet)")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return _read_saved_dataset(path, split, limit), f"{path} [{split}]"
    parquet = _split_files(path, split, ".parquet")
    if parquet:
        return _read_parquet(parquet, limit), ", ".join(map(str, parquet))
    jsonl = _split_files(path, split, ".jsonl")
    if len(jsonl) == 1:
        return _read_jsonl(jsonl[0], limit), str(jsonl[0])
    if len(jsonl) > 1:
        raise ValueError(f"{path}: several jsonl files match split {split!r}: {', '.join(map(str, jsonl))}; "
                         f"pass one file")
    raise FileNotFoundError(f"{path}: no HellaSwag {split!r} data in this directory (looked for a "
                            f"datasets.save_to_disk layout, *.parquet or *.jsonl files named after the split)")


def split_problem(path: str | Path | None, split: str) -> str | None:
    """Why `split` cannot choose rows of `path` (None: it can). A split picks a file (or a DatasetDict's
    split) in a directory; one file and the synthetic set hold one split each, read whole, so a split
    other than the default would be ignored while reported as used."""
    if split == DEFAULT_SPLIT or (path is not None and not Path(path).expanduser().is_file()):
        return None
    what = "the embedded synthetic set" if path is None else f"{path} is one file, which"
    return (f"split {split!r}: {what} holds a single split and is read whole; a split chooses among the files "
            f"of a directory (hellaswag_{{train,val,test}}.jsonl, Rowan/hellaswag parquet, datasets.save_to_disk): "
            f"give the directory, or the file of that split without a split")



def write_hellaswag_jsonl(path: str | Path, docs: list[dict]) -> Path:
    """Raw rows (hellaswag_val.jsonl's schema) as a jsonl file, one JSON object a line: what
    load_hellaswag and lm-eval's hellaswag task with dataset_path json read. Each row is checked with
    format_row first, so a file that is written can be read."""
    path = Path(path)
    for i, doc in enumerate(docs):
        format_row(doc, i, str(path))
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path

"""Result store: atomic per-run rows keyed by run key, whole-table file, resume keys, log-likelihoods."""
import os

import numpy as np
import pytest

from graphopt.runner.store import COLUMNS, ResultStore, load_results


def _row(key, order, status="ok", **kw):
    row = {c: None for c in COLUMNS}
    row.update(order=order, run=f"run{order}", run_key=key, is_reference=order == 0, status=status, error="",
               finished_at=f"2026-01-01T00:00:0{order}", latency_s=1.0 + order, acc=0.5)
    row.update(kw)
    return row


def test_rows_written_atomically_and_loaded_in_order(tmp_path):
    store = ResultStore(tmp_path)
    store.write_row(_row("k2", 2))
    store.write_row(_row("k0", 0))
    store.write_row(_row("k1", 1, status="error", error="boom"))
    table = store.load()
    assert list(table["run_key"]) == ["k0", "k1", "k2"] and list(table.columns[:len(COLUMNS)]) == COLUMNS
    assert store.done_keys() == {"k0", "k1", "k2"} and store.done_keys(include_errors=False) == {"k0", "k2"}
    assert store.get("k1")["error"] == "boom" and store.get("nope") is None
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temp files left behind
    assert len(load_results(tmp_path)) == 3


def test_rewriting_a_key_replaces_its_row(tmp_path):
    store = ResultStore(tmp_path)
    store.write_row(_row("k0", 0, status="error", error="x"))
    store.write_row(_row("k0", 0, latency_s=9.0))
    table = store.load()
    assert len(table) == 1 and table.loc[0, "status"] == "ok" and table.loc[0, "latency_s"] == 9.0


def test_partial_temp_file_is_ignored(tmp_path):
    store = ResultStore(tmp_path)
    store.write_row(_row("k0", 0))
    (store.rows_dir / ".k1.parquet.abc.tmp").write_bytes(b"PAR1 half written")  # a writer killed mid-write
    assert list(store.load()["run_key"]) == ["k0"]


def test_row_missing_columns_rejected(tmp_path):
    with pytest.raises(AssertionError, match="lacks"):
        ResultStore(tmp_path).write_row({"run_key": "k"})


def test_loglik_roundtrip(tmp_path):
    store = ResultStore(tmp_path)
    assert store.load_loglik("k") is None
    values = np.linspace(-3, -1, 12)
    store.save_loglik("k", values)
    np.testing.assert_array_equal(store.load_loglik("k"), values)
    assert store.load_loglik("k").dtype == np.float64


def test_load_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_results(tmp_path / "nope")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no results"):
        load_results(tmp_path / "empty")

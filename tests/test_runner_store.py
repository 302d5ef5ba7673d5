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


def test_speedup_and_tolerance_derived_from_the_stored_reference_row(tmp_path):
    """Issue #18 item 2: derived columns follow the reference row as stored, even after it is rewritten."""
    import json
    store = ResultStore(tmp_path)
    (tmp_path / "experiment.json").write_text(json.dumps({"tolerance": {"acc_points": 0.5, "max_abs_dloglik": 0.05}}))
    store.write_row(_row("ref", 0, reference_key="ref", latency_s=2.0, acc=0.50, max_abs_dloglik=0.0))
    store.write_row(_row("k1", 1, reference_key="ref", latency_s=0.5, acc=0.504, max_abs_dloglik=0.01,
                         speedup=99.0, within_tolerance=False))  # stored values computed against another reference
    store.write_row(_row("k2", 2, reference_key="ref", latency_s=1.0, acc=0.40, max_abs_dloglik=0.01,
                         within_tolerance=True))
    store.write_row(_row("old", 3, latency_s=1.0, speedup=7.0))  # stored before reference_key existed: as stored
    store.write_row(_row("bad", 4, status="error", reference_key="ref", latency_s=None))
    t = store.load().set_index("run_key")
    assert t.loc["ref", "speedup"] == 1.0 and t.loc["k1", "speedup"] == 4.0 and t.loc["k2", "speedup"] == 2.0
    assert bool(t.loc["k1", "within_tolerance"]) and not t.loc["k2", "within_tolerance"]  # 0.4 points vs 10
    assert t.loc["old", "speedup"] == 7.0
    assert t.loc["bad", "speedup"] != t.loc["bad", "speedup"] and not t.loc["bad", "within_tolerance"]  # NaN, False
    store.write_row(_row("ref", 0, reference_key="ref", latency_s=4.0, acc=0.40, max_abs_dloglik=0.0))  # re-measured
    t = store.load().set_index("run_key")
    assert t.loc["k1", "speedup"] == 8.0 and t.loc["k2", "speedup"] == 4.0
    assert not t.loc["k1", "within_tolerance"] and bool(t.loc["k2", "within_tolerance"])
    whole = load_results(tmp_path).set_index("run_key")  # results.parquet's table agrees too
    assert whole.loc["k1", "speedup"] == 8.0


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_stored_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        store = ResultStore(tmp_path)
        store.write_row(_row("k0", 0))
        store.save_loglik("k0", np.zeros(3))
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for path in (store.rows_dir / "k0.parquet", tmp_path / "results.parquet", store.loglik_path("k0")):
        assert path.stat().st_mode & 0o777 == expected, (path, oct(path.stat().st_mode & 0o777), oct(expected))

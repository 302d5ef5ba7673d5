"""Result store: one parquet file per run under OUTPUT_DIR/rows/<run_key>.parquet, each written
atomically (temp file + os.replace), so a sweep killed at any moment keeps every finished row and a
re-run skips them. OUTPUT_DIR/results.parquet is the whole table, rewritten atomically after each row.
Per-request log-likelihoods live in OUTPUT_DIR/loglik/<run_key>.npy (the reference's is what every
run is compared with)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# the columns every row has (in table order); extra keys are kept after them
COLUMNS = [
    "order", "run", "run_key", "is_reference", "capture", "passes", "compiler", "scoring", "dtype", "device",
    "world_size", "n_items", "n_requests", "n_tokens", "acc", "acc_norm", "agree", "max_abs_dloglik",
    "within_tolerance", "latency_s", "items_per_s", "tokens_per_s", "speedup", "compile_s", "peak_mem_mb",
    "n_params", "status", "error", "started_at", "finished_at", "wall_s", "config",
]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows_dir = self.root / "rows"
        self.loglik_dir = self.root / "loglik"

    # ---- rows
    def write_row(self, row: dict) -> None:
        assert row.get("run_key"), row
        missing = [c for c in COLUMNS if c not in row]
        assert not missing, f"result row lacks {missing}"
        frame = pd.DataFrame([row])
        _atomic_write(self.rows_dir / f"{row['run_key']}.parquet", lambda p: frame.to_parquet(p, index=False))
        table = self.load()
        _atomic_write(self.root / "results.parquet", lambda p: table.to_parquet(p, index=False))

    def load(self) -> pd.DataFrame:
        files = sorted(self.rows_dir.glob("*.parquet"))
        if not files:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        extra = [c for c in frame.columns if c not in COLUMNS]
        frame = frame[[c for c in COLUMNS if c in frame.columns] + extra]
        return frame.sort_values(["order", "finished_at"], kind="stable").reset_index(drop=True)

    def get(self, run_key: str) -> dict | None:
        path = self.rows_dir / f"{run_key}.parquet"
        if not path.exists():
            return None
        return pd.read_parquet(path).iloc[0].to_dict()

    def done_keys(self, include_errors: bool = True) -> set[str]:
        table = self.load()
        if not include_errors:
            table = table[table["status"] == "ok"]
        return set(table["run_key"])

    # ---- log-likelihoods
    def loglik_path(self, run_key: str) -> Path:
        return self.loglik_dir / f"{run_key}.npy"

    def save_loglik(self, run_key: str, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)

        def write(p):
            with open(p, "wb") as f:
                np.save(f, values)
        _atomic_write(self.loglik_path(run_key), write)

    def load_loglik(self, run_key: str) -> np.ndarray | None:
        path = self.loglik_path(run_key)
        return np.load(path) if path.exists() else None


def load_results(root: str | Path) -> pd.DataFrame:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"results directory {str(root)!r} does not exist")
    store = ResultStore(root)
    if not store.rows_dir.exists() and (root / "results.parquet").exists():
        return pd.read_parquet(root / "results.parquet")
    frame = store.load()
    if frame.empty:
        raise FileNotFoundError(f"{str(root)!r} holds no results (expected {store.rows_dir}/*.parquet)")
    return frame

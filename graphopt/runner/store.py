"""Result store: one parquet file per run under OUTPUT_DIR/rows/<run_key>.parquet, each written
atomically (temp file + os.replace), so a sweep killed at any moment keeps every finished row and a
re-run skips them. OUTPUT_DIR/results.parquet is the whole table, rewritten atomically after each row.
Per-request log-likelihoods live in OUTPUT_DIR/loglik/<run_key>.npy (the reference's is what every
run is compared with). Files get mode 0666 & ~umask, as open() would give them.

Columns derived from another row (speedup, within_tolerance) are recomputed whenever the table is
loaded (derive_columns), from the row named by each row's reference_key, so the table can never
disagree with the reference row it stores. agree and max_abs_dloglik compare log-likelihoods and
stay as measured."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

# the columns every row has (in table order); extra keys are kept after them
COLUMNS = [
    "order", "run", "run_key", "is_reference", "reference_key", "capture", "passes", "compiler", "scoring", "dtype",
    "device", "world_size", "n_items", "n_requests", "n_tokens", "acc", "acc_norm", "agree", "max_abs_dloglik",
    "within_tolerance", "latency_s", "items_per_s", "tokens_per_s", "speedup", "compile_s", "peak_mem_mb",
    "n_params", "status", "error", "started_at", "finished_at", "wall_s", "config",
]
TOLERANCE_KEYS = ("acc_points", "max_abs_dloglik")  # experiment.json's "tolerance" (within_tolerance)


def _umask() -> int:
    """The process umask, read without changing it (Linux /proc), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """write(temp path) next to `path`, then rename it over `path`: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are as shareable as their folder
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def derive_columns(frame: pd.DataFrame, tolerance: dict | None = None) -> pd.DataFrame:
    """speedup (reference latency / latency) and, given the experiment's tolerance {acc_points,
    max_abs_dloglik}, within_tolerance, recomputed for every row from the stored row its reference_key
    names. Rows without a reference_key (stored before it existed) or whose reference row is gone keep
    their stored values; a row that failed, or whose reference failed, gets no speedup and is not within
    tolerance."""
    if frame.empty or "reference_key" not in frame.columns:
        return frame
    frame = frame.copy()
    frame["speedup"] = frame["speedup"].astype("float64")
    frame["within_tolerance"] = frame["within_tolerance"].astype(object)
    position = {key: i for i, key in zip(frame.index, frame["run_key"])}
    for i, row in frame.iterrows():
        ref_key = row["reference_key"]
        if not isinstance(ref_key, str) or ref_key not in position:
            continue
        ref = frame.loc[position[ref_key]]
        ok = row["status"] == "ok" and ref["status"] == "ok"
        latency = row["latency_s"]
        frame.at[i, "speedup"] = float(ref["latency_s"] / latency) if ok and latency and latency > 0 else float("nan")
        if not ok:
            frame.at[i, "within_tolerance"] = False
        elif tolerance is not None:
            d_acc_points = abs(row["acc"] - ref["acc"]) * 100.0
            frame.at[i, "within_tolerance"] = bool(d_acc_points <= tolerance["acc_points"] + 1e-9
                                                   and row["max_abs_dloglik"] <= tolerance["max_abs_dloglik"])
    if frame["within_tolerance"].notna().all():
        frame["within_tolerance"] = frame["within_tolerance"].astype(bool)
    return frame


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
        atomic_write(self.rows_dir / f"{row['run_key']}.parquet", lambda p: frame.to_parquet(p, index=False))
        table = self.load()
        atomic_write(self.root / "results.parquet", lambda p: table.to_parquet(p, index=False))

    def load(self) -> pd.DataFrame:
        files = sorted(self.rows_dir.glob("*.parquet"))
        if not files:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        extra = [c for c in frame.columns if c not in COLUMNS]
        frame = frame[[c for c in COLUMNS if c in frame.columns] + extra]
        frame = frame.sort_values(["order", "finished_at"], kind="stable").reset_index(drop=True)
        return derive_columns(frame, self.tolerance())

    def tolerance(self) -> dict | None:
        """The experiment's tolerance from OUTPUT_DIR/experiment.json (None: not there or incomplete)."""
        path = self.root / "experiment.json"
        try:
            tol = json.loads(path.read_text()).get("tolerance") if path.is_file() else None
        except (OSError, ValueError, AttributeError):
            return None
        if not isinstance(tol, dict) or not all(isinstance(tol.get(k), (int, float)) for k in TOLERANCE_KEYS):
            return None
        return {k: float(tol[k]) for k in TOLERANCE_KEYS}

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
        atomic_write(self.loglik_path(run_key), write)

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

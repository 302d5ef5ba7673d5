"""One output folder holds one experiment. Its rows are compared with one reference and with each other,
so a re-run whose configuration differs from the one they were measured with (OUTPUT_DIR/experiment.json)
in anything every row depends on (model, tokenizer, data, device, processes, seed, timing protocol, dtype,
scoring, the reference) is refused before anything runs, naming what differs. What only chooses which runs
are measured may change between runs of one experiment: runs added or edited under `runs` / `sweep` are
measured as new rows of it; its name, output_dir, tolerance (the derived columns are recomputed from it)
and pass_modules too."""
from __future__ import annotations

import json
from pathlib import Path

from graphopt.errors import UserError

RECORD = "experiment.json"
MAY_DIFFER = ("name", "output_dir", "runs", "sweep", "tolerance", "pass_modules")


def differences(old, new, key: str = "") -> list[str]:
    """'data.limit 8 -> 4' for each leaf that differs (lists compared whole). A key only one side has is
    not compared: a record written before that key existed cannot say what it was."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) & set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))
        return out
    return [] if old == new else [f"{key} {json.dumps(old)} -> {json.dumps(new)}"]


def check_same_experiment(out_dir: Path, config: dict, has_rows: bool) -> None:
    """config: the new run's experiment as experiment.json records it (schema.to_dict). Refused when the
    folder holds rows of a recorded experiment that differs in a key outside MAY_DIFFER."""
    path = Path(out_dir) / RECORD
    if not has_rows or not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the record of the experiment whose rows are in {out_dir} "
                        f"({type(e).__name__}: {e}); choose another output folder") from None
    new = json.loads(json.dumps(config, default=str))
    if not isinstance(recorded, dict):
        recorded = {}
    changed = differences({k: v for k, v in recorded.items() if k not in MAY_DIFFER},
                          {k: v for k, v in new.items() if k not in MAY_DIFFER})
    if changed:
        raise UserError(f"output folder {str(out_dir)!r} holds rows measured with another configuration "
                        f"({'; '.join(changed)}; recorded in {path}): its table would mix two experiments. "
                        f"Choose another --output, or run with the recorded values to resume it")

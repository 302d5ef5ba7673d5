"""Experiment YAML schema: plain dataclasses, the values each field allows (CHOICES) and `to_dict`.

graphopt.runner.config builds and checks them from a YAML file (`load_config`); pass lists
(`passes`, `sweep.base`, each item of `sweep.over`) hold `graphopt.pipeline.PassSpec`s once loaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphopt.compilers import COMPILERS

CAPTURES = ("none", "export", "dynamo")  # none = eager module
SWEEP_MODES = ("listed", "ablation", "cumulative", "powerset")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("cpu", "cuda")
# field name -> allowed values; checked wherever a field of that name appears
CHOICES = {"capture": CAPTURES, "compiler": COMPILERS, "mode": SWEEP_MODES, "dtype": DTYPES, "device": DEVICES}


@dataclass
class DataConfig:
    path: str | None = None  # None = synthetic HellaSwag-format data
    split: str = "validation"
    limit: int | None = None  # first N questions


@dataclass
class ScoringConfig:
    strategy: str = "per_pair"  # per_pair | padded | shared_prefix | packed | bucketed
    options: dict = field(default_factory=dict)  # the strategy's options (graphopt.scoring.STRATEGIES)


@dataclass
class ReferenceConfig:
    """The run every other run is compared with (default: eager fp32, each pair scored alone)."""
    name: str = "reference"
    capture: str = "none"
    passes: Any = field(default_factory=list)  # as RunConfig.passes
    compiler: str = "none"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    dtype: str = "float32"


@dataclass
class RunConfig:
    name: str = ""
    capture: str = "export"
    passes: Any = field(default_factory=list)  # a pipeline name, or a list of names / {name: ..., option: value}
    compiler: str = "none"
    scoring: ScoringConfig | None = None  # None = the experiment's scoring
    dtype: str | None = None  # None = the experiment's dtype


@dataclass
class SweepConfig:
    """listed: the `runs` only. ablation: all of `base`, then all minus one. cumulative: base[:k] for
    k = 0..len(base). powerset: `base` plus every subset of `over`. Generated runs use the template
    fields below; `runs` are added after them in every mode."""
    mode: str = "listed"
    base: Any = field(default_factory=list)  # a pipeline (list of PassSpec once loaded)
    over: list = field(default_factory=list)  # each item a pass or a named pipeline (list of PassSpec once loaded)
    capture: str = "export"
    compiler: str = "none"
    scoring: ScoringConfig | None = None
    dtype: str | None = None


@dataclass
class ToleranceConfig:
    acc_points: float = 0.5  # |acc - reference acc| in percentage points
    max_abs_dloglik: float = 0.05  # max over requests of |loglik - reference loglik|


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    model: str = "default"  # preset name or checkpoint path
    tokenizer: str | None = None  # a tokenizer file/folder (default: next to the checkpoint; presets: word-hash)
    dtype: str = "float32"
    device: str = "cpu"
    world_size: int = 1  # processes in all (data_parallel x tensor_parallel x pipeline_parallel)
    data_parallel: int = 1  # replicas, each scoring its share of the questions (graphopt.distributed.mesh)
    tensor_parallel: int = 0  # ranks per replica for a tensor_parallel run (0: world_size / data_parallel)
    pipeline_parallel: int = 0  # ranks per replica for a pipeline_split run (0: world_size / data_parallel)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    runs: list[RunConfig] = field(default_factory=list)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    warmup: int = 1
    repeats: int = 3
    output_dir: str | None = None  # None = results/<name>
    tolerance: ToleranceConfig = field(default_factory=ToleranceConfig)
    pass_modules: list[str] = field(default_factory=list)  # a user's pass modules (dotted paths or .py files)
    source: str = field(default="<dict>", metadata={"internal": True})  # the file it came from
    # names a key with its file and line in messages (set by config_from_dict)
    where: Any = field(default=None, repr=False, compare=False, metadata={"internal": True})

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or f"results/{self.name}")


def to_dict(obj) -> Any:
    """Dataclass config -> plain dict (for hashing and the results table); a PassSpec -> its canonical
    {name: ..., options that differ from the defaults}."""
    from graphopt.pipeline import PassSpec
    if isinstance(obj, PassSpec):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("internal")}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj

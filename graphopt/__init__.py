"""graphopt: graph-optimisation pipeline for LLaMA-family multiple-choice scoring."""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public API -> the module that defines it (imported on first use, so `import graphopt` stays light)
_API = {
    "ModelArgs": "graphopt.model",
    "Transformer": "graphopt.model",
    "load_model": "graphopt.checkpoints",
    "load_hellaswag": "graphopt.data",
    "evaluate": "graphopt.scoring",
    "optimize": "graphopt.optimize_model",
    "Optimized": "graphopt.optimize_model",
    "run_passes": "graphopt.pass_manager",
    "parse_pipeline": "graphopt.pipeline",
    "register_pass": "graphopt.pipeline",
    "register_pipeline": "graphopt.pipeline",
    "capture": "graphopt.graph_capture",
    "backend": "graphopt.compile_backend",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")

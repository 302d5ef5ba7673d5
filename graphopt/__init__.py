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
    "run_passes": "graphopt.pipeline",
}

# These two functions share their module's name. Importing them here binds `graphopt.capture` /
# `graphopt.backend` to the functions for good (a later `import graphopt.capture` does not rebind).
from graphopt.compile_backend import backend  # noqa: E402
from graphopt.graph_capture import capture  # noqa: E402

__all__ = list(_API) + ["capture", "backend"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")

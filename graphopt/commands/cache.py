"""`graphopt cache [--clear]`: where compiled artifacts are kept across runs, how much they take, and
removing them (see graphopt.compile_cache)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show graphopt's compile cache (inductor's FX graph and AOTAutograd caches, kept across "
                          "runs so that a second run of the same model, pipeline and shapes does not compile "
                          "again), or clear it. Its folder: $GRAPHOPT_CACHE_DIR, default ~/.cache/graphopt; "
                          "TORCHINDUCTOR_CACHE_DIR, when set, overrides the inductor part.")
    parser.add_argument("--clear", action="store_true", help="remove the cache folder")


def main(args) -> int:
    import os

    from graphopt.compile_cache import cache_root, clear, folder_size, inductor_dir

    root = cache_root()
    if args.clear:
        freed = clear()
        print(f"removed {root} ({freed / 2**20:.1f} MiB)")
        return 0
    print(f"cache folder   {root}  ({folder_size(root) / 2**20:.1f} MiB)")
    print(f"inductor       {os.environ.get('TORCHINDUCTOR_CACHE_DIR') or inductor_dir()}"
          + ("  (TORCHINDUCTOR_CACHE_DIR)" if os.environ.get("TORCHINDUCTOR_CACHE_DIR") else ""))
    print("clear it with  graphopt cache --clear")
    return 0

"""`graphopt cache [--clear]`: where compiled artifacts are kept across runs, what they take, and
removing what graphopt wrote there (see graphopt.cache_store and graphopt.compile_cache)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show graphopt's cache folder (inductor's FX graph and AOTAutograd caches, kept across "
                          "runs so that a second run of the same model, pipeline and shapes does not compile "
                          "again, and graphopt's own entries), or clear it. Its folder: $GRAPHOPT_CACHE_DIR, default "
                          "~/.cache/graphopt; TORCHINDUCTOR_CACHE_DIR, when set, overrides the inductor part.")
    parser.add_argument("--clear", action="store_true",
                        help="remove what graphopt wrote in the cache folder (other files there are kept)")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(args) -> int:
    import os
    from pathlib import Path

    from graphopt import cache_store
    from graphopt.compile_cache import inductor_dir

    root = cache_store.cache_root()
    user_inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if args.clear:
        done = cache_store.clear(root)
        if not done.removed:
            print(f"nothing to clear in {root}")
        else:
            kept = f"; kept what graphopt did not write: {', '.join(done.kept)}" if done.kept else ""
            print(f"removed graphopt's cache in {root} ({_mib(done.freed)}: {', '.join(done.removed)}){kept}")
        if user_inductor:
            print(f"not cleared: {user_inductor} (TORCHINDUCTOR_CACHE_DIR is set: inductor's folder of your "
                  f"choosing; remove it yourself)")
        return 0
    print(f"cache folder   {root}  ({_mib(cache_store.folder_size(root))})")
    folder = Path(user_inductor) if user_inductor else inductor_dir()
    print(f"inductor       {folder}  ({_mib(cache_store.folder_size(folder))})"
          + ("  (TORCHINDUCTOR_CACHE_DIR)" if user_inductor else ""))
    for kind, summary in cache_store.entries(root).items():
        print(f"entries        {kind}: {len(summary.keys)} ({_mib(summary.bytes)})")
    print("clear it with  graphopt cache --clear")
    return 0

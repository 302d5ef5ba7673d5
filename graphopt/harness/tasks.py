"""The generation settings of lm-eval tasks, read from their YAML configs before anything runs, so that
`--model graphopt` refuses a task that asks for sampling at the start, not after an hour of
log-likelihood requests (the model checks every request again: graphopt.harness.generate)."""
from __future__ import annotations

import contextlib
import io
import sys

from graphopt.harness.generate import check_greedy

LOGLIKELIHOOD_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


@contextlib.contextmanager
def task_index_built_once():
    """Within this block lm-eval indexes a set of task folders once. Every lm-eval TaskManager walks and
    parses its ~15000 built-in task files when it is made (6 s on 2 cores); `graphopt lm-eval` makes one to
    check the command's generative tasks before lm-eval makes its own, which doubled that wait. The index
    (lm-eval 0.4.13's `TaskIndex.build`, a static method of a private module) is kept per folder list;
    both readers only read its entries (lm-eval deep-copies a config before it changes one), and lm-eval's
    own folder is read from graphopt's cache folder after the first command (task_index_cache). Where
    lm-eval has no such method the block changes nothing (tests/test_lm_eval_backend.py counts the walks)."""
    try:
        from lm_eval.tasks._index import TaskIndex
        build = TaskIndex.__dict__["build"].__func__
    except (ImportError, KeyError, AttributeError):
        yield
        return
    built = {}

    def build_once(paths, **options):
        paths = list(paths)
        key = (tuple(str(p) for p in paths), tuple(sorted(options.items())))
        if key not in built:
            built[key] = _index_of_folders(build, paths, options)
        return dict(built[key])  # a caller may add names to its own mapping

    TaskIndex.build = staticmethod(build_once)
    try:
        yield
    finally:
        TaskIndex.build = staticmethod(build)


def _index_of_folders(build, paths: list, options: dict) -> dict:
    """TaskIndex.build(paths, **options) as lm-eval makes it (each folder indexed alone, a later folder's
    names replacing an earlier one's, with lm-eval's warning), lm-eval's own folder read from graphopt's
    cache folder when it was indexed before (graphopt.harness.task_index_cache)."""
    from pathlib import Path

    from lm_eval.tasks._index import log

    from graphopt.harness.task_index_cache import builtin_tasks_folder, cached_folder_index
    builtin = builtin_tasks_folder().resolve()
    index = {}
    for root in paths:
        part = (cached_folder_index(build, Path(root), options) if Path(root).resolve() == builtin
                else build([root], **options))
        for name, entry in part.items():
            if name in index:
                log.warning("Task '%s' from %s overrides existing task from %s", name, entry.yaml_path,
                            index[name].yaml_path)
            index[name] = entry
    return index


def generative_tasks(task_names: list[str], include_path: str | None = None) -> dict[str, dict]:
    """{task: its config's generation_kwargs} for the tasks among task_names (groups and tags expanded)
    whose output_type is generate_until (lm-eval's default when a config names none). Names lm-eval does
    not index are left to lm-eval."""
    from lm_eval.defaults import default_gen_kwargs
    from lm_eval.tasks import TaskManager

    index = TaskManager(include_path=include_path).task_index
    found, seen = {}, set()

    def visit(name: str) -> None:
        if name in seen or name not in index:
            return
        seen.add(name)
        entry = index[name]
        cfg = entry.cfg or {}
        kind = getattr(entry.kind, "name", str(entry.kind)).lower()
        if "group" in kind:
            for item in cfg.get("task", []):
                visit(item.get("task") if isinstance(item, dict) else item)
        elif "tag" in kind:
            for other, e in index.items():
                if name in (e.tags or ()):
                    visit(other)
        elif cfg.get("class") is None and cfg.get("output_type", "generate_until") not in LOGLIKELIHOOD_TYPES:
            found[name] = cfg.get("generation_kwargs") or default_gen_kwargs(cfg.get("fewshot_delimiter", "\n\n"))

    for name in task_names:
        visit(name)
    return found


def refuse_sampling_tasks(argv: list[str]) -> None:
    """UserError naming the first generative task of lm-eval's command line `argv` whose generation_kwargs,
    with --gen_kwargs over them as lm-eval applies them, ask for more than greedy decoding."""
    options = _lm_eval_options(argv)
    if options is None or not getattr(options, "tasks", None):
        return
    extra = getattr(options, "gen_kwargs", None) or {}
    for task, kwargs in generative_tasks(list(options.tasks), getattr(options, "include_path", None)).items():
        check_greedy(task, {**kwargs, **extra}, default_max_gen_toks=256)


def _lm_eval_options(argv: list[str]):
    """lm-eval's own parse of its command line (None where it would refuse it: lm-eval then says why)."""
    from lm_eval._cli import HarnessCLI

    old = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # its usage message comes when lm-eval parses it for real
            return HarnessCLI().parse_args()
    except SystemExit:
        return None
    finally:
        sys.argv = old

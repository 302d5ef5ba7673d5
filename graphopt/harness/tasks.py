"""Which lm-eval tasks need text generation, read from their YAML configs before anything runs, so that
`--model graphopt` refuses them at the start, not after an hour of log-likelihood requests."""
from __future__ import annotations

from graphopt.errors import UserError

LOGLIKELIHOOD_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")


def generative_tasks(task_names: list[str], include_path: str | None = None) -> list[str]:
    """The tasks among task_names (groups and tags expanded) whose output_type is generate_until
    (lm-eval's default when a config names none). Names lm-eval does not index are left to lm-eval."""
    from lm_eval.tasks import TaskManager

    index = TaskManager(include_path=include_path).task_index
    found, seen = [], set()

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
            found.append(name)

    for name in task_names:
        visit(name)
    return found


def refuse_generative_tasks(tasks: str | None, include_path: str | None = None) -> None:
    if not tasks:
        return
    bad = generative_tasks([t.strip() for t in tasks.split(",") if t.strip()], include_path)
    if bad:
        from graphopt.harness.lm import GENERATE_REFUSED
        raise UserError(GENERATE_REFUSED.format(tasks=", ".join(bad)))

"""graphopt inside lm-evaluation-harness: `GraphoptLM` (lm-eval's LM interface) and `register()`, which
makes `--model graphopt` known to lm-eval (it discovers no plugins: `graphopt lm-eval ...` calls it)."""
from __future__ import annotations


def register() -> None:
    """Register GraphoptLM under the name `graphopt` in lm-eval's model registry (idempotent).

    lm-eval fills its registry with its own models (`hf`, ...) only when it finds the registry empty
    (`get_model`), so their lazy table is imported first: registering into an empty registry would
    hide `hf` from every later caller in the process."""
    import lm_eval.models  # noqa: F401  (lm-eval's built-in names, lazily bound)
    from lm_eval.api.registry import model_registry

    from graphopt.harness.lm import GraphoptLM

    if "graphopt" not in model_registry:
        model_registry.register("graphopt")(GraphoptLM)


def __getattr__(name):
    if name == "GraphoptLM":
        from graphopt.harness.lm import GraphoptLM
        return GraphoptLM
    raise AttributeError(name)

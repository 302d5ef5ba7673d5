"""graphopt's pass library (installed as `graphopt.passes`): one file per pass; importing this package
registers them all, and the named pipelines (named_pipelines.py)."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

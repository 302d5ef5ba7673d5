"""graphopt's import graph (graphopt/ and passes/, installed as graphopt.passes): no cycles, every module
on its floor, the pass library's helper files marked, dynamic imports only where listed; and benchmarks/
share their helpers through benchmarks/_*.py, never by importing another benchmark.

What counts as an edge "A imports B" (read from the source with ast, never by importing it):
- every `import` / `from ... import` in A's file, at module level or inside a function, a method or an
  `if` (a deferred import that dodges a cycle is still a cycle);
- `import a.b.c` and `from a.b import c` -> the deepest of a.b.c, a.b that is a module of the package
  (so `from graphopt.scoring import batch` is an edge to graphopt.scoring.batch, and
  `from graphopt.scoring import evaluate` to the package's __init__ when `evaluate` is only a name in it);
  relative imports are resolved first;
- also every package above B that is not above A as well: Python runs a package's __init__ before
  its submodule, so `from graphopt.scoring.requests import x` in passes/ runs graphopt/scoring/__init__.py.
  A package's own modules do not depend on their package's __init__ this way (it is already loading);
- graphopt/__init__.py loads its public API lazily (`_API`: name -> module); each module named there
  is an edge of `graphopt`.
Imports by name at run time (importlib) are plugin loading, not edges: the pass registry loading the
pass library and a user's pass modules, the CLI's command table, the package's lazy API, and passes/
loading its pass files. DYNAMIC_IMPORTS lists where they may happen; any other is a test failure.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"graphopt": ROOT / "graphopt", "graphopt.passes": ROOT / "passes"}

# Floors, lowest first. A module may import modules of its own part (graphopt.<part>: a subpackage or a
# top-level module) and of parts on lower floors; never a part on its own floor or above.
FLOORS = [
    ["graphopt.errors", "graphopt.model", "graphopt.kernels", "graphopt.graph_attrs", "graphopt.parent_death",
     "graphopt.time_line", "graphopt.cli_types",  # cli_types: argparse value types the commands share  # time_line: where a run's time went, one line and its columns
     "graphopt.blockwise"],  # blockwise: where a pass runs under block-by-block optimisation
    ["graphopt.cache_store", "graphopt.env_checks"],  # the cache folder; checks of the device and of folders
    ["graphopt.inductor_files"],  # inductor's own files, recorded in the cache folder and checked before use
    ["graphopt.checkpoints", "graphopt.data", "graphopt.compilers", "graphopt.compile_cache",
     "graphopt.pipeline"],  # pipeline: the pass protocol and registry
    ["graphopt.pass_manager", "graphopt.distributed", "graphopt.graph_capture",
     "graphopt.weight_program"],  # weight_program: the steps passes make weights by, recorded and replayed
    ["graphopt.passes", "graphopt.optimize_graph",  # the pass library; passes + compile on a captured graph
     "graphopt.block_capture", "graphopt.graph_serial"],  # the graph around the layers + one per block; JSON
    ["graphopt.compile_backend", "graphopt.block_splice"],  # block_splice: block graphs put back in place
    ["graphopt.optimize_blocks"],  # capture + passes once per distinct block, every layer's weights
    ["graphopt.optimized_cache"],  # optimize_blocks' result kept across runs
    ["graphopt.optimize_model"],  # optimize(): every caller's way to a runnable
    ["graphopt.scoring"],
    ["graphopt.generation"],  # greedy completions through the scoring graph (prefill) and a decode step
    ["graphopt"],  # the public API (lazy)
    ["graphopt.harness", "graphopt.runner"],  # lm-eval's model; the experiment runner
    ["graphopt.commands"],
    ["graphopt.cli"],
    ["graphopt.__main__"],
]
FLOOR = {part: i for i, parts in enumerate(FLOORS) for part in parts}

# (file, why it imports by name at run time)
DYNAMIC_IMPORTS = {
    "graphopt/__init__.py": "the public API, imported on first use (its _API entries are edges here)",
    "graphopt/cli.py": "the subcommand's module, graphopt.commands.<name>",
    "graphopt/pipeline.py": "the pass library and a user's pass modules / entry points, registering their passes",
    "passes/__init__.py": "every pass file of the library (those not starting with '_')",
}
_DYNAMIC_CALLS = {"import_module", "__import__", "exec_module", "iter_modules"}


def module_files(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under each package folder."""
    roots = {folder.resolve() for folder in packages.values()}
    out = {}
    for pkg, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any((folder / Path(*rel.parts[:i])).resolve() in roots for i in range(1, len(rel.parts))):
                continue  # another package's folder inside this one (graphopt/passes -> ../passes)
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{module that `name` imports: line of the first import of it} (see the module doc for the rules)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, node.lineno)
                        for alias in node.names]
        elif (isinstance(node, ast.Assign) and name == "graphopt"
              and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets)):
            targets += [(v.value, node.lineno) for v in node.value.values if isinstance(v, ast.Constant)]
    own = set(_ancestors(name)) | {name}
    out: dict[str, int] = {}
    for target, line in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if not target:
            continue  # outside graphopt
        for dep in [*_ancestors(target), target]:
            if dep in modules and dep not in own:
                out.setdefault(dep, line)
    return out


def import_graph(packages: dict[str, Path] = PACKAGES) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = module_files(packages)
    return {name: imports(name, path, modules) for name, path in modules.items()}, modules


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] through each strongly connected group of modules (none: [])."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    """A shortest cycle through the group's first module (breadth-first back to it)."""
    start = min(group)
    came_from = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                path = [v]
                while came_from[path[-1]] is not None:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if w in group and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")


def describe(cycle: list[str], graph, modules, root: Path = ROOT) -> str:
    """a (file line N) -> b (file line M) -> a: where each import of the cycle is."""
    hops = [f"{a} ({modules[a].relative_to(root)} line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(hops + [cycle[-1]])


def part(name: str) -> str:
    """graphopt.<first component> (graphopt.passes for the pass library; graphopt for the package itself)."""
    if name == "graphopt.passes" or name.startswith("graphopt.passes."):
        return "graphopt.passes"
    return ".".join(name.split(".")[:2])


# ------------------------------------------------------------------------------------------------ tests

def test_the_package_has_no_import_cycle():
    graph, modules = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join("  " + describe(c, graph, modules) for c in cycles)


def test_every_module_stands_on_its_floor():
    graph, modules = import_graph()
    unplaced = sorted({part(m) for m in modules} - set(FLOOR))
    assert not unplaced, f"no floor for {unplaced}: add each to FLOORS in {Path(__file__).name}"
    wrong = [f"  {a} (floor {FLOOR[part(a)]}) imports {b} (floor {FLOOR[part(b)]}) at "
             f"{modules[a].relative_to(ROOT)} line {line}"
             for a in sorted(graph) for b, line in sorted(graph[a].items())
             if part(a) != part(b) and FLOOR[part(b)] >= FLOOR[part(a)]]
    assert not wrong, "imports of a floor not below the importer's:\n" + "\n".join(wrong)


def test_no_command_imports_another():
    """A subcommand's file is its own entry point; what two commands share lives below them."""
    graph, modules = import_graph()
    shared = [f"  {a} imports {b} at {modules[a].relative_to(ROOT)} line {line}" for a in sorted(graph)
              if a.startswith("graphopt.commands.") for b, line in sorted(graph[a].items())
              if b.startswith("graphopt.commands.")]
    assert not shared, "commands importing commands:\n" + "\n".join(shared)


def test_no_benchmark_imports_another():
    """What benchmarks share (host figures, timed commands, the optimised graph, ...) lives in
    benchmarks/_*.py (_common.py and the helpers of one job); a benchmark is never another's library."""
    graph, modules = import_graph({"benchmarks": ROOT / "benchmarks"})
    crossing = [f"  {a} imports {b} at {modules[a].relative_to(ROOT)} line {line}" for a in sorted(graph)
                for b, line in sorted(graph[a].items()) if not b.rpartition(".")[2].startswith("_")]
    assert not crossing, "benchmarks importing benchmarks:\n" + "\n".join(crossing)


def _calls(path: Path) -> list[tuple[str, int]]:
    """(name of the called function or method, line) of every call in the file."""
    return [(node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", ""), node.lineno)
            for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Call)]


def _registers(path: Path) -> bool:
    """Whether the file calls register_pass or register_pipeline (as a decorator too)."""
    return any(name in ("register_pass", "register_pipeline") for name, _ in _calls(path))


def test_pass_library_files_that_register_nothing_start_with_an_underscore():
    files = sorted(p for p in PACKAGES["graphopt.passes"].glob("*.py") if p.name != "__init__.py")
    helpers_without_underscore = [p.name for p in files if not p.name.startswith("_") and not _registers(p)]
    underscored_passes = [p.name for p in files if p.name.startswith("_") and _registers(p)]
    assert not helpers_without_underscore, (f"passes/{helpers_without_underscore}: register no pass or pipeline, "
                                            f"yet the library imports them as passes; start their names with '_'")
    assert not underscored_passes, f"passes/{underscored_passes}: register passes but are never loaded ('_' name)"


def test_imports_by_name_happen_only_where_listed():
    found = {}
    for path in module_files().values():
        for name, line in _calls(path):
            if name in _DYNAMIC_CALLS:
                found.setdefault(str(path.relative_to(ROOT)), line)
    unlisted = {f: line for f, line in found.items() if f not in DYNAMIC_IMPORTS}
    assert not unlisted, (f"imports by name outside DYNAMIC_IMPORTS (their edges escape these tests): "
                          f"{', '.join(f'{f} line {n}' for f, n in sorted(unlisted.items()))}")


def test_the_rules_see_deferred_relative_and_package_imports(tmp_path):
    """The walker on a package made here: a deferred import closes a cycle, a relative import is an
    edge, importing a submodule also runs (depends on) its package's __init__, and a name imported
    from a package is an edge to that __init__ only."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "a.py": "def f():\n    from pkg.b import g\n", "b.py": "from . import a\n",
             "c.py": "from pkg.sub.leaf import x\n", "d.py": "from pkg.sub import x\n",
             "sub/__init__.py": "from pkg.sub.leaf import x\nfrom pkg import c\n", "sub/leaf.py": "x = 1\n"}
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph, modules = import_graph({"pkg": pkg})
    assert graph["pkg.a"] == {"pkg.b": 2} and graph["pkg.b"] == {"pkg.a": 1}
    assert graph["pkg.c"] == {"pkg.sub": 1, "pkg.sub.leaf": 1}
    assert graph["pkg.d"] == {"pkg.sub": 1} and graph["pkg.sub.leaf"] == {}
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1, "pkg.c": 2}
    cycles = sorted(find_cycles(graph))
    assert cycles == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.c", "pkg.sub", "pkg.c"]]
    where = describe(cycles[0], graph, modules, tmp_path)
    assert where == "pkg.a (pkg/a.py line 2) -> pkg.b (pkg/b.py line 1) -> pkg.a"

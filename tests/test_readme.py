"""The README stays a newcomer's page: short, opening with the two commands (the test one exactly what
.ci/run runs), every docs/*.md reachable from it, no relative link in README or docs/ pointing at a
file that is not there, and the layout table naming only paths that exist."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 170

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)


def _command(line: str) -> str:
    """A shell line without its trailing comment and spaces (no '#' inside quotes in these lines)."""
    return line.split(" #")[0].strip()


def _ci_command() -> str:
    """The commands .ci/run runs, joined by ' && ' (shebang, comments, set and cd left out)."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    run = [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]
    assert run, ".ci/run runs no command"
    return " && ".join(run)


def _docs() -> list[Path]:
    return sorted((ROOT / "docs").glob("*.md"))


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; keep it at most {MAX_LINES} and move detail into docs/"


def test_first_code_block_is_the_main_job_and_the_ci_test_command():
    first = _code_blocks(README.read_text())[0]
    lines = [_command(ln) for ln in first.splitlines() if ln.strip()]
    assert len(lines) == 2, f"README's first code block should hold the two commands, got {lines}"
    main_job, tests = lines
    assert tests == _ci_command(), f"README's test command {tests!r} differs from .ci/run's {_ci_command()!r}"
    install, _, run = main_job.partition(" && ")
    assert "pip install" in install and " -e ." in install, f"the main job should install the package: {install!r}"
    m = re.fullmatch(r"graphopt run (\S+\.yaml)", run)
    assert m, f"the main job should be one `graphopt run CONFIG`: {run!r}"
    cfg = yaml.safe_load((ROOT / m.group(1)).read_text())
    from graphopt.model.args import PRESETS
    assert cfg["model"] in PRESETS and cfg.get("data", {}).get("path") is None, (
        f"{m.group(1)} should run on the embedded default (a preset model, synthetic data): "
        f"model {cfg['model']!r}, data {cfg.get('data')!r}")


def test_every_doc_is_linked_from_the_readme():
    docs = _docs()
    assert docs, "docs/ holds no .md file"
    linked = {(ROOT / t.split("#")[0]).resolve() for t in LINK.findall(README.read_text())}
    missing = [d.relative_to(ROOT).as_posix() for d in docs if d.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_relative_links_resolve():
    broken = []
    for page in [README, *_docs()]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):  # https:, mailto:, an anchor on the page
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, f"links to files that do not exist: {broken}"


def test_layout_table_names_existing_paths():
    text = README.read_text()
    table = text[text.index("## Layout"):]
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert rows, "README.md has no layout table under '## Layout'"
    missing = []
    for row in rows:
        folder = ROOT
        for name in re.findall(r"`([^`]+)`", row.split(" | ")[0]):
            path = ROOT / name if "/" in name else folder / name  # a bare name sits next to the previous path
            if not path.exists():
                missing.append(name)
            folder = path.parent if path.suffix else path
    assert not missing, f"README.md's layout table names paths that do not exist: {missing}"

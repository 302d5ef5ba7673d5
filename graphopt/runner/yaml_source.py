"""Where experiment settings come from: the YAML text (with the line of every key, for messages),
`--set key=value` overrides, and `Where`, which names a key as 'key runs.1.passes in FILE line N'.
Every user mistake found here or in config.py / preflight.py is a ConfigError."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user error in an experiment YAML or a --set override."""


def _marks(node, path: tuple, lines: dict) -> None:
    """Record the 1-based line of every key / list item under `node`, keyed by its path."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            p = path + (str(key_node.value),)
            lines[p] = key_node.start_mark.line + 1
            _marks(value_node, p, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _marks(item, path + (i,), lines)


def load_yaml(path: str | Path) -> tuple[Any, dict]:
    """-> (data, {key path: line})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    lines: dict = {}
    if node is not None:
        _marks(node, (), lines)
    return data if data is not None else {}, lines


class Where:
    """Formats 'key runs.1.passes in FILE line N' for messages."""

    def __init__(self, source: str, lines: dict, overridden: set):
        self.source, self.lines, self.overridden = source, lines, overridden

    def __call__(self, path: tuple) -> str:
        key = ".".join(str(p) for p in path) or "<top level>"
        if path in self.overridden:
            return f"key {key!r} (from --set)"
        for n in range(len(path), 0, -1):  # nearest enclosing key that has a line
            if path[:n] in self.lines:
                return f"key {key!r} in {self.source} line {self.lines[path[:n]]}"
        return f"key {key!r} in {self.source}"


def apply_override(raw: dict, item: str) -> tuple:
    """'a.b.0.c=value' -> sets raw['a']['b'][0]['c'] = yaml.safe_load(value); returns the key path."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value (e.g. data.limit=20)")
    key, text = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set {item!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    node, path = raw, []
    for part in parts[:-1]:
        path.append(part)
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {item!r}: {'.'.join(path)} is not an index into a list of {len(node)}")
            node = node[int(part)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {item!r}: {'.'.join(path)} is a {type(node).__name__}, not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {item!r}: {last!r} is not an index into a list of {len(node)}")
        node[int(last)] = value
        return tuple(parts[:-1]) + (int(last),)
    node[last] = value
    return tuple(int(p) if isinstance(p, str) and p.isdigit() else p for p in parts)

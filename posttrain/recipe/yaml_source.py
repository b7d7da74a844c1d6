"""Load YAML while remembering where each key came from.

`load_yaml_with_lines(path)` returns the plain data plus a map from key paths (tuples such as
``("stages", "sft", "lr")``) to 1-based line numbers, so that validation errors can say
"recipe.yaml, line 12: stages.sft.lrr".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import ConfigError

KeyPath = tuple[Any, ...]


def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], source: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in seen:  # YAML would keep the last one silently
                dotted = ".".join(str(p) for p in path + (key,))
                raise ConfigError(f"{source}, lines {seen[key]} and {line}: {dotted} is given twice; "
                                  f"keep one (YAML would silently use the second).")
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[path + (index,)] = item.start_mark.line + 1
            _walk(item, path + (index,), lines, source)


def load_yaml_with_lines(path: str | Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file; return ``(data, {key_path: line})``.

    Raises ConfigError naming the file and line for missing files and YAML syntax errors.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found (expected a YAML file).")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}.") from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _walk(node, (), lines, path)
    return data, lines


def line_for(lines: dict[KeyPath, int], path: KeyPath) -> int | None:
    """The line of the deepest known prefix of `path` (an unknown nested key reports its parent)."""
    for cut in range(len(path), 0, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return None

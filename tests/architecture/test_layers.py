"""The import direction between posttrain's packages (docs/architecture.md draws it).

Every import in posttrain/ (module level, inside functions, and under TYPE_CHECKING alike) is
read from the source and mapped to its layer; an import of a HIGHER layer fails the test. Same
layer is fine. The first-party plugins (posttrain.verifiers, posttrain.rewards) are user code:
posttrain's own packages reach them only through the plugin API (by name), never by import.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: package prefix -> layer (higher imports lower). Longest prefix wins.
LAYERS = {
    "posttrain.cli": 9, "posttrain.__main__": 9, "posttrain": 9,   # the package root re-exports the API
    "posttrain.api": 8,
    "posttrain.runner": 7,
    "posttrain.recipe": 6,
    "posttrain.stages": 5,
    "posttrain.rl.loop": 4, "posttrain.evaluation": 4,
    "posttrain.rl.rollout": 3, "posttrain.agents": 3, "posttrain.rl.rewards": 3, "posttrain.rl.scored": 3, "posttrain.rl.presets": 3,
    "posttrain.rl.algos": 1,   # pure math on tensors: anything may use it
    "posttrain.rl": 3,
    "posttrain.models": 2, "posttrain.data": 2, "posttrain.verification": 2, "posttrain.report": 2,
    "posttrain.sandbox": 1,
    "posttrain.common": 0, "posttrain.errors": 0,
}
PLUGINS = ("posttrain.verifiers", "posttrain.rewards")

def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, module: str) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from posttrain import errors` imports the sub-module, not the package's attributes
            submodules = {f"{target}.{a.name}" for a in node.names
                          if (REPO / target.replace(".", "/") / f"{a.name}.py").exists()}
            found |= submodules if len(submodules) == len(node.names) else submodules | {target}
    return {m for m in found if m == "posttrain" or m.startswith("posttrain.")}


def edges() -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / "posttrain").rglob("*.py")):
        module = module_name(path)
        out += [(module, target) for target in imports_of(path, module)]
    return out


def test_no_import_runs_upward():
    upward = []
    for module, target in edges():
        if module == "posttrain" and target in ("posttrain.api", "posttrain.errors", "posttrain.common.version"):
            continue  # the package root's lazy re-exports
        if target.startswith(PLUGINS):
            upward.append(f"{module} imports the plugin {target} (reach plugins through the plugin API)")
        elif layer(target) > layer(module):
            upward.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not upward, "\n".join(upward)


def test_the_checker_sees_function_level_and_type_checking_imports(tmp_path):
    """The test above would miss nothing that Python can execute: lazy and typing-only imports count."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from posttrain.runner.runner import X\n"
                      "def f():\n    from posttrain.stages import grpo\n    import posttrain.api\n")
    assert imports_of(source, "posttrain.fake.m") >= {"posttrain.runner.runner", "posttrain.stages.grpo", "posttrain.api"}
    assert layer("posttrain.stages.grpo") > layer("posttrain.rl.loop.trainer") > layer("posttrain.rl.algos.kl")


def test_import_rl_algos_loads_only_the_algos():
    """`import posttrain.rl.algos` needs torch alone: no runner, pydantic, rich or yaml."""
    code = ("import sys, posttrain.rl.algos; "
            "print(sorted(m for m in sys.modules if m.startswith('posttrain'))); "
            "print(sorted(m for m in ('pydantic', 'rich', 'yaml', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    modules, heavy = [eval(line) for line in out.splitlines()]
    allowed = {"posttrain", "posttrain.rl", "posttrain.common", "posttrain.common.version"}
    assert all(m.startswith("posttrain.rl.algos") or m in allowed for m in modules), modules
    assert "posttrain.rl.algos.policy_loss" in modules
    assert heavy == [], heavy

"""The RL loop's shared state is typed: every field of RLSession and ScoredBatch names a real type
(no Any), and every annotation resolves, typing-only imports included."""
from __future__ import annotations

import ast
import importlib
import inspect
import typing

import pytest


def _hints(module_name: str, cls_name: str) -> dict[str, object]:
    module = importlib.import_module(module_name)
    namespace = dict(vars(module))
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:  # run the module's `if TYPE_CHECKING:` imports, as a type checker sees them
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            exec(compile(ast.Module(body=node.body, type_ignores=[]), module.__file__, "exec"), namespace)  # noqa: S102
    return typing.get_type_hints(getattr(module, cls_name), globalns=namespace)


@pytest.mark.parametrize("module_name, cls_name", [("posttrain.rl.loop.trainer", "RLSession"),
                                                   ("posttrain.rl.scored", "ScoredBatch")])
def test_loop_state_fields_have_real_types(module_name, cls_name):
    hints = _hints(module_name, cls_name)
    assert hints, cls_name
    untyped = sorted(name for name, hint in hints.items() if hint is typing.Any)
    assert not untyped, f"{cls_name} fields typed Any: {untyped}"


PHASES = [("posttrain.rl.loop.sampling", "RolloutState"), ("posttrain.rl.loop.experience", "ExperienceState"),
          ("posttrain.rl.loop.update", "UpdateState")]


@pytest.mark.parametrize("module_name, protocol", PHASES)
def test_each_phase_declares_what_it_reads_of_the_session_and_RLSession_provides_it(module_name, protocol):
    """A phase function takes a Protocol naming the session fields it uses: every `session.X` in
    the module is declared there, and RLSession has each with the same type."""
    module = importlib.import_module(module_name)
    declared = _hints(module_name, protocol)
    read = {node.attr for node in ast.walk(ast.parse(inspect.getsource(module)))
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", None) == "session"}
    assert read, module_name
    assert read <= set(declared), f"{module_name} reads undeclared session fields: {sorted(read - set(declared))}"
    assert set(declared) - read == set(), f"{protocol} declares fields the phase never reads: {sorted(set(declared) - read)}"
    session = _hints("posttrain.rl.loop.trainer", "RLSession")
    for name, hint in declared.items():
        assert session[name] == hint, (protocol, name, session[name], hint)

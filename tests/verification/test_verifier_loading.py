"""Loading a verifier by every route, and the errors a bad reference gives."""
from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

from posttrain.errors import VerifierError
from posttrain.verification import list_verifiers, load_verifier

PLUGIN = textwrap.dedent('''
    from posttrain.verification import VerifierResult, verifier

    @verifier(name="{name}", description="Contains the answer.")
    def contains(completion, answer, *, case_sensitive=True):
        text, gold = (completion, answer) if case_sensitive else (completion.lower(), answer.lower())
        return VerifierResult(float(gold in text), gold in text, gold if gold in text else None)

    def undecorated(completion, answer):
        return float(completion == answer)

    async def undecorated_async(completion):
        return 0.5

    NOT_CALLABLE = 3

    class AClass:
        pass

    def no_args():
        return 1.0
''')


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, fresh_name):
    name = fresh_name("plugin")
    module = f"plugin_mod_{name}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    return module, name


def test_builtin_by_name():
    loaded = load_verifier("math")
    assert loaded.spec.origin == "posttrain.verifiers.math:math_verifier"
    assert loaded("The answer is 19.", answer="19").passed is True


def test_module_attr_route_with_options(plugin_module):
    module, name = plugin_module
    loaded = load_verifier(f"{module}:contains", case_sensitive=False)
    assert loaded.name == name
    assert loaded("It is PARIS", answer="paris").score == 1.0
    # The decorator registered it by name as a side effect of the import.
    assert load_verifier(name)("paris", answer="paris").passed is True


def test_module_attr_route_accepts_undecorated_sync_and_async(plugin_module):
    module, _ = plugin_module
    assert load_verifier(f"{module}:undecorated")("a", answer="a").score == 1.0
    loaded = load_verifier(f"{module}:undecorated_async")
    assert loaded.spec.is_async and loaded("a").score == 0.5


def test_file_route_is_relative_to_base_dir(tmp_path, fresh_name):
    name = fresh_name("file")
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "my_verifier.py").write_text(PLUGIN.format(name=name))
    loaded = load_verifier("./my_verifier.py:contains", base_dir=recipe_dir)
    assert loaded.name == name and loaded("x 42", answer="42").score == 1.0
    assert loaded.spec.origin == f"{recipe_dir / 'my_verifier.py'}:contains"
    # Loading the same file again reuses the module (no duplicate registration).
    assert load_verifier(str(recipe_dir / "my_verifier.py") + ":contains").spec.fn is \
        loaded.spec.fn


def _write_dist(site, dist, entry_points, module_name, module_source):
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    (site / f"{module_name}.py").write_text(module_source)


def test_entry_point_route_from_a_dist_info_on_sys_path(tmp_path, monkeypatch, fresh_name):
    name = fresh_name("ep")
    src = "def shout(completion):\n    '''Completion is upper case.'''\n" \
          "    return float(completion.isupper())\n"
    _write_dist(tmp_path, "demo-plugin", f"[posttrain.verifiers]\n{name} = demo_ep_mod:shout\n",
                "demo_ep_mod", src)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_verifier(name)
    assert loaded.name == name
    assert loaded.spec.origin == f"entry point {name} = demo_ep_mod:shout from demo-plugin"
    assert loaded("LOUD").score == 1.0 and loaded("quiet").score == 0.0
    listed = {s.name: s for s in list_verifiers()}
    assert listed[name].description == "Completion is upper case."
    assert {"math", "code", "exact", "majority_vote"} <= set(listed)


def test_broken_entry_point_names_itself(tmp_path, monkeypatch, fresh_name):
    name = fresh_name("brokenep")
    _write_dist(tmp_path, "broken-plugin", f"[posttrain.verifiers]\n{name} = no_such_mod_xyz:f\n",
                "unused_mod_xyz", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VerifierError, match=f"verifier '{name}' .*entry point.*failed to load: "
                                            "ModuleNotFoundError"):
        load_verifier(name)
    listed = {s.name: s for s in list_verifiers()}
    assert listed[name].description.startswith("failed to load")


def test_entry_points_are_read_from_importlib_metadata(monkeypatch, plugin_module):
    module, _ = plugin_module
    ep = importlib.metadata.EntryPoint("mocked_ep_name", f"{module}:undecorated",
                                       "posttrain.verifiers")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == "posttrain.verifiers" else [])
    assert load_verifier("mocked_ep_name")("z", answer="z").score == 1.0


@pytest.mark.parametrize("ref, message", [
    ("./missing.py:check", r"file .*missing.py does not exist; expected a Python file"),
    ("{module}:nope", (r"has no attribute 'nope'; it defines: AClass, contains, no_args, "
                       r"undecorated, undecorated_async")),
    ("{module}:NOT_CALLABLE", r"is int; expected a function"),
    ("{module}:AClass", r"is a class; expected a function"),
    ("{module}:no_args", r"has signature \(\); expected the completion as first positional"),
    ("no_such_module_abc:fn", r"cannot import module 'no_such_module_abc'"),
    ("no_such_verifier_name", (r"unknown verifier 'no_such_verifier_name'; expected a "
                               r"registered name \(.*math.*\)")),
    ("./file_without_function.py", r"names a file but no function"),
    ("module:", r"is incomplete"),
])
def test_bad_references_raise_verifier_error_naming_them(ref, message, plugin_module, tmp_path):
    module, _ = plugin_module
    ref = ref.format(module=module)
    with pytest.raises(VerifierError, match=message) as info:
        load_verifier(ref, base_dir=tmp_path)
    assert ref in str(info.value) or "unknown verifier" in str(info.value) or \
        ref.split(":")[1] in str(info.value)


def test_file_that_fails_to_execute(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(VerifierError, match=r"broken.py:f'.*failed: RuntimeError: boom at import"):
        load_verifier("broken.py:f", base_dir=tmp_path)

"""The CLI as a user meets it: exit codes, messages without tracebacks, validate/stages/init-model."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from posttrain.cli import main


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def _recipe(tmp_path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("posttrain 0.")


def test_validate_misspelled_key_exits_2_without_traceback(tmp_path):
    path = _recipe(tmp_path, """\
        name: x
        stages:
          init:
            kind: init_model
            sise: tiny
        """)
    proc = _cli("validate", path)
    assert proc.returncode == 2
    assert "line 5: stages.init.sise: unknown key. Did you mean 'size'?" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_validate_prints_resolved_recipe_with_defaults(tmp_path):
    path = _recipe(tmp_path, """\
        name: x
        run_dir: out
        stages:
          init: {kind: init_model}
        """)
    proc = _cli("validate", path, "-s", "stages.init.size=small")
    assert proc.returncode == 0, proc.stderr
    assert "size: small" in proc.stdout and "arch: qwen2" in proc.stdout and "precision: auto" in proc.stdout


def test_run_bad_override_exits_2(tmp_path):
    path = _recipe(tmp_path, "name: x\nstages:\n  init: {kind: init_model}\n")
    code = main(["run", str(path), "-s", "stages.init.size=huge"])
    assert code == 2


def test_data_error_exits_2(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\n{not json\n')
    path = _recipe(tmp_path, f"""\
        name: x
        model: m
        run_dir: {tmp_path / 'run'}
        stages:
          sft: {{kind: sft, data: bad.jsonl}}
        """)
    assert main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err


def test_stages_lists_kinds_and_keys():
    proc = _cli("stages")
    assert proc.returncode == 0 and "sft" in proc.stdout and "init_model" in proc.stdout
    proc = _cli("stages", "sft")
    assert proc.returncode == 0 and "max_steps" in proc.stdout and "assistant_only_loss" in proc.stdout
    assert "pip install 'posttrain[tensorboard]'" in proc.stdout  # help text is not read as rich markup
    proc = _cli("stages", "sfx")
    assert proc.returncode == 2 and "Did you mean 'sft'" in proc.stderr


def test_stages_lists_the_keys_of_optional_blocks(capsys):
    """An optional block (None = off) shows its own default and then each of its keys."""
    assert main(["stages", "grpo"]) == 0
    out = capsys.readouterr().out
    assert "  curriculum  (rl.loop.config.CurriculumConfig | None)  default None" in out
    assert "  curriculum.skip_settled  (bool)  default False" in out
    assert "  curriculum.sampler  (uniform | dump)  default 'uniform'" in out
    assert "  environment.max_turns  (int)" in out


def test_init_model_cli(tmp_path):
    proc = _cli("init-model", tmp_path / "m", "--size", "tiny", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert "parameters" in proc.stdout and (tmp_path / "m" / "config.json").exists()
    proc = _cli("init-model", tmp_path / "m")
    assert proc.returncode == 2 and "not empty" in proc.stderr  # never overwrites silently


@pytest.mark.slow
def test_doctor_reports_vllm_and_deepspeed_usable():
    proc = _cli("doctor")
    assert "vllm usable" in proc.stdout and "deepspeed usable" in proc.stdout
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 3}
    assert "ok" in lines["vllm usable"] and "ok" in lines["deepspeed usable"], proc.stdout


def test_doctor_exits_1_when_a_check_fails(monkeypatch):
    """`posttrain doctor` ends in typer.Exit(code), which typer returns rather than raises."""
    from posttrain.cli import doctor

    monkeypatch.setattr(doctor, "main_doctor", lambda console: 1)
    assert main(["doctor"]) == 1
    monkeypatch.setattr(doctor, "main_doctor", lambda console: 0)
    assert main(["doctor"]) == 0


def test_validate_memory_names_what_it_cannot_estimate_yet(tmp_path):
    """The quickstart's grpo starts from the sft stage's output: before that exists there is no
    architecture to read, and validate --memory says so instead of guessing (and exits 0)."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    proc = _cli("validate", recipe, "--memory", "-s", f"run_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("# grpo memory"))
    assert "not estimated" in line and "sft" in line and "does not exist yet" in line, line
    assert "# sft memory" not in proc.stdout  # only RL stages are estimated


@pytest.mark.parametrize("args, message", [
    (["plan", "r.yaml"], "No such command 'plan'"),
    (["run", "r.yaml", "--bogus"], "No such option: --bogus"),
    (["run"], "Missing argument 'recipe'"),
])
def test_usage_errors_exit_2_without_traceback(args, message):
    """A mistyped command or option is a usage error (typer >= 0.26 raises its own copy of click's
    exceptions, which once escaped as a traceback with exit status 1)."""
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout

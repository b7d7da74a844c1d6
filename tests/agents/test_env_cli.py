"""posttrain envs list / envs new / env-check, and env-check on the environment docs/agents.md shows."""
from __future__ import annotations

import json

from test_docs_examples import example

from posttrain.cli.main import main


def test_envs_list(capsys):
    assert main(["envs", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("tools", "feedback", "trl", "calculator", "python"):
        assert f"  {name}" in out


def test_envs_new_writes_what_env_check_accepts(tmp_path, capsys):
    assert main(["envs", "new", "my_env", "--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    code = main(["env-check", f"{tmp_path}/my_env.py:MyEnv", "--data", str(tmp_path / "my_env.jsonl"),
                 "--turn", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["episodes"] == 2 and report["episode/env_reward"] == 0.5  # "4" is right once
    assert main(["envs", "new", "my_env", "--dir", str(tmp_path)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_env_check_plays_the_documented_environment(tmp_path, capsys):
    path = example("my_env.py", tmp_path)
    data = tmp_path / "guess.jsonl"
    data.write_text(json.dumps({"prompt": "Guess my number (1-99).", "answer": "7"}) + "\n")
    code = main(["env-check", f"{path}:Guess", "--data", str(data), "--turn", "50", "--turn", "20", "--turn", "7",
                 "--max-turns", "5", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["episode/turns"] == 3 and report["episode/solved"] == 1.0
    assert report["episode/env_reward"] == 0.8  # -0.1, -0.1, +1
    assert [m["content"] for m in report["examples"][0]["messages"]][2] == "50 is wrong, go lower."


def test_env_check_bad_input_exits_2(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert main(["env-check", "gym", "--data", str(data), "--turn", "x"]) == 2
    assert "unknown environment 'gym'" in capsys.readouterr().err
    assert main(["env-check", "tools", "--data", str(data)]) == 2
    assert "give scripted turns" in capsys.readouterr().err
    assert main(["env-check", "feedback", "--data", str(tmp_path / "none.jsonl"), "--turn", "x"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_env_check_shows_a_failing_reset(tmp_path, capsys):
    (tmp_path / "broken.py").write_text(
        "class Broken:\n"
        "    def reset(self, row):\n"
        "        return row['level']\n"
        "    def step(self, text):\n"
        "        return None\n")
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert main(["env-check", f"{tmp_path}/broken.py:Broken", "--data", str(data), "--turn", "x"]) == 0
    out = capsys.readouterr().out
    assert "episode/env_errors" in out and "environment error: reset() raised KeyError: 'level'" in out

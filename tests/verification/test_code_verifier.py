"""The ``code`` verifier: real solutions against assert-style and stdin/stdout tests, and the
hostile-snippet corpus scored 0 while this test process survives."""
from __future__ import annotations

import json
import os

import pytest

from posttrain.sandbox import sandbox_info
from posttrain.verification import load_verifier, run_verifier

FULL = sandbox_info()["mode"] == "full"
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(10, 5) == 15\n"


@pytest.fixture(scope="module")
def code():
    return load_verifier("code", timeout_s=3)


def test_correct_solution_from_python_block_passes(code):
    result = code("Here is my solution:\n" + ADD + "\nDone.", tests=ADD_TESTS)
    assert (result.score, result.passed, result.reason) == (1.0, True, "3/3 tests passed")
    assert result.extracted == "def add(a, b):\n    return a + b\n"


def test_partially_wrong_solution_gets_the_fraction_passed(code):
    # Right for a > 0; add(-1, 1) still gives the expected 0, add(-2, 5) gives 0 instead of 3.
    wrong = "def add(a, b):\n    return a + b if a > 0 else 0\n"
    result = code(wrong, tests=ADD_TESTS + "assert add(-2, 5) == 3\n")
    assert result.score == pytest.approx(3 / 4) and result.passed is False
    assert result.reason == "3/4 tests passed; 1 assertion(s) failed"


def test_setup_statements_run_but_do_not_count(code):
    tests = "import math\nx = add(2, 2)\nassert x == 4\nassert math.isclose(add(0.1, 0.2), 0.3)\n"
    assert code(ADD, tests=tests).reason == "2/2 tests passed"
    broken_setup = "y = undefined_name\nassert add(1, 1) == 2\n"
    result = code(ADD, tests=broken_setup)
    assert result.score == 0.0 and "test set-up raised: NameError" in result.reason


def test_mbpp_style_list_and_humaneval_style_check(code):
    assert code(ADD, tests=["assert add(1, 1) == 2", "assert add(2, 2) == 5"]).score == 0.5
    humaneval = "def check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"
    assert code(ADD, tests=humaneval).passed is True
    assert code(ADD.replace("a + b", "a - b"), tests=humaneval).score == 0.0


def test_stdin_stdout_cases_in_every_accepted_shape(code):
    solution = "```py\nn = int(input())\nprint(' '.join(str(i * i) for i in range(n)))\n```"
    cases = [{"input": "3\n", "output": "0 1 4\n"}, {"input": "1", "output": "0"},
             {"input": "2", "output": "0 2"}]
    result = code(solution, tests=cases)
    assert result.score == pytest.approx(2 / 3) and result.reason.endswith("case 2: wrong output")
    apps = {"inputs": ["3\n", "1\n"], "outputs": ["0 1 4\n", "0\n"]}
    assert code(solution, tests=apps).passed is True
    assert code(solution, tests=json.dumps(apps)).passed is True
    lines = load_verifier("code", compare="lines")
    assert lines(solution, tests=[{"input": "3", "output": "0\n1\n4"}]).passed is False


def test_solution_that_crashes_or_does_not_compile_scores_zero(code):
    syntax = code("def add(a, b) return a + b", tests=ADD_TESTS)
    assert syntax.score == 0.0 and "SyntaxError" in syntax.reason
    crash = code("raise RuntimeError('boom')", tests=ADD_TESTS)
    assert crash.score == 0.0 and "RuntimeError: boom" in crash.reason
    io_crash = code("print(1/0)", tests=[{"input": "", "output": "1"}])
    assert io_crash.score == 0.0 and "exit 1" in io_crash.reason


def test_runs_in_the_pool_with_several_workers():
    completions = [ADD, ADD.replace("a + b", "a * b"), ADD, "nothing"] * 2
    scored = run_verifier("code", completions, {"tests": [ADD_TESTS] * 8}, workers=2, timeout=30)
    assert scored.scores == pytest.approx([1.0, 0.0, 1.0, 0.0] * 2)
    assert scored.stats.errors == 0


SECRET = "/tmp/posttrain-test-secret-{pid}.txt"

# Each snippet is a whole "solution" that would pass `assert True` if it ended normally.
HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                 "        pass\n",
    "allocate_50_gb": "x = bytearray(50 * 2**30)\n",
    "huge_file": "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * 2**20)\n",
    "socket_to_localhost": "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
    "resolve_a_host": "import socket\nsocket.getaddrinfo('pypi.org', 443)\n",
    "read_hidden_file": "print(open({secret!r}).read())\n",
    "kill_parent": "import os\nos.kill(os.getppid(), 9)\n",
    "os_exit_before_results": "import os\nos._exit(0)\n",
    "sys_exit_zero": "import sys\nsys.exit(0)\n",
    "forge_results_on_stdout": "import sys\nfor i in range(5):\n    print('0' * 32, 'pass', i)\n"
                               "print('0' * 32, 'done')\nsys.stdout.flush()\nimport os\nos._exit(0)\n",
    "raise_systemexit_in_atexit": "import atexit, os\natexit.register(lambda: os._exit(0))\n"
                                  "raise SystemExit(0)\n",
}


@pytest.fixture(scope="module")
def hidden_file():
    path = SECRET.format(pid=os.getpid())
    with open(path, "w") as f:
        f.write("expected outputs: 42")
    os.chmod(path, 0o644)  # world-readable on purpose: only the chroot hides it
    yield path
    os.remove(path)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_snippet_is_contained_and_scores_zero(name, hidden_file):
    if name == "read_hidden_file" and not FULL:
        pytest.skip("file hiding needs the full sandbox (root/CAP_SYS_ADMIN)")
    snippet = HOSTILE[name].format(secret=hidden_file)
    result = load_verifier("code", timeout_s=2)(snippet, tests="assert True")
    assert (result.score, result.passed) == (0.0, False), result.reason
    assert "expected outputs" not in (result.reason or "")
    # Still alive, and the stdin/stdout route is equally safe for snippets that run to completion.
    if name in ("kill_parent", "read_hidden_file", "socket_to_localhost"):
        io = load_verifier("code", timeout_s=2)(snippet, tests=[{"input": "", "output": "ok"}])
        assert io.score == 0.0


ALWAYS_EQUAL = {
    "int subclass": "class Anything(int):\n    def __eq__(self, other):\n        return True\n"
                    "    __hash__ = int.__hash__\n\ndef solve(x):\n    return Anything(0)\n",
    "custom class": "class Anything:\n    def __eq__(self, other):\n        return True\n\ndef solve(x):\n    return Anything()\n",
    "callable object": "class Anything:\n    def __eq__(self, other):\n        return True\n\n"
                       "class Solver:\n    def __call__(self, x):\n        return Anything()\n\nsolve = Solver()\n",
    "renamed module": "class Anything(int):\n    def __eq__(self, other):\n        return True\n\n"
                      "def solve(x):\n    return Anything(0)\n\nsolve.__module__ = 'math'\n",
    "patched builtins": "import builtins\nbuiltins.type = lambda x: int\nbuiltins.callable = lambda x: False\n"
                        "class Anything(int):\n    def __eq__(self, other):\n        return True\n\n"
                        "def solve(x):\n    return Anything(0)\n",
    "patched harness": "import __main__\n__main__._guarded = lambda f: f\n__main__._plain = lambda *a, **k: True\n"
                       "class Anything(int):\n    def __eq__(self, other):\n        return True\n\n"
                       "def solve(x):\n    return Anything(0)\n",
    "class entry point": "class Anything:\n    def __eq__(self, other):\n        return True\n\n"
                         "class solve:\n    def __new__(cls, x):\n        return Anything()\n",
    "patched exec and wraps": "import builtins, functools\nreal = builtins.exec\n"
                              "def unwrap(code, ns=None, *a):\n"
                              "    for k, v in list((ns or {}).items()):\n"
                              "        ns[k] = getattr(v, '__wrapped__', v)\n"
                              "    return real(code, ns, *a)\n"
                              "builtins.exec = unwrap\nfunctools.wraps = lambda fn, *a, **k: (lambda w: fn)\n"
                              "class Anything(int):\n    def __eq__(self, other):\n        return True\n\n"
                              "def solve(x):\n    return Anything(0)\n",
    "generator of hacks": "class Anything(int):\n    def __eq__(self, other):\n        return True\n\n"
                          "def solve(x):\n    return (Anything(0) for _ in range(2))\n",
    "patched Counter": "import collections\ncollections.Counter.__eq__ = lambda self, other: True\n"
                       "def solve(x):\n    return collections.Counter()\n",
}


@pytest.mark.parametrize("hack", sorted(ALWAYS_EQUAL))
def test_the_always_equal_reward_hack_earns_nothing(code, hack):
    result = code(ALWAYS_EQUAL[hack], tests="assert solve(1) == 1\nassert solve(2) == 4\n")
    assert (result.score, result.passed) == (0.0, False), result.reason


def test_plain_nested_values_and_deep_recursion_still_pass(code):
    solution = ("import sys\nsys.setrecursionlimit(5000)\n"
                "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
                "def table(n):\n    return {'rows': [(i, [i * i, str(i)]) for i in range(n)], 'ok': True, 'none': None,"
                " 'set': frozenset({1, 2})}\n")
    tests = ("assert depth(900) == 900\n"
             "assert table(2) == {'rows': [(0, [0, '0']), (1, [1, '1'])], 'ok': True, 'none': None, 'set': frozenset({1, 2})}\n")
    result = code(solution, tests=tests)
    assert (result.score, result.passed) == (1.0, True), result.reason


def test_stdlib_mappings_lazy_results_and_test_defined_helpers_still_pass(code):
    """MBPP-style solutions: a Counter compared with a dict, a generator drawn by list(), and a
    helper class the tests define that the solution uses at call time."""
    solution = ("import collections\n"
                "def freq(xs):\n    return collections.Counter(xs)\n"
                "def squares(n):\n    return (i * i for i in range(n))\n"
                "def grouped(xs):\n    d = collections.defaultdict(list)\n    for x in xs:\n        d[x % 2].append(x)\n"
                "    return d\n"
                "def make(v):\n    return Node(v).v\n")
    tests = ("class Node:\n    def __init__(self, v):\n        self.v = v\n"
             "assert freq([1, 1, 2]) == {1: 2, 2: 1}\n"
             "assert list(squares(3)) == [0, 1, 4]\n"
             "assert grouped([1, 2, 3]) == {1: [1, 3], 0: [2]}\n"
             "assert make(5) == 5\n")
    result = code(solution, tests=tests)
    assert (result.score, result.passed) == (1.0, True), result.reason


def test_custom_return_types_are_allowed_when_the_task_says_so():
    lenient = load_verifier("code", timeout_s=3, allow_custom_types=True)
    point = "class P:\n    def __init__(self, x):\n        self.x = x\n    def __eq__(self, o):\n        return self.x == o.x\n" \
            "def make(x):\n    return P(x)\n"
    assert lenient(point, tests="assert make(1) == P(1)\n").passed is True
    assert load_verifier("code", timeout_s=3)(point, tests="assert make(1) == P(1)\n").passed is False

"""The built-in ``python`` tool: the model's code runs in posttrain's sandbox, never in-process.

Each call is a fresh sandboxed interpreter (:func:`posttrain.sandbox.run_python`: no network,
limited memory, processes, files and time). The model reads back stdout, then stderr, each cut by
the sandbox to :data:`MAX_OUTPUT_BYTES` (head and tail kept, the cut said), and a line saying how
the run ended when it did not exit cleanly.
"""
from __future__ import annotations

MAX_OUTPUT_BYTES = 1000
TIMEOUT_S = 5.0
MEMORY_MB = 256


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it printed.

    Args:
        code: A Python program; use print() to show results.
    """
    from posttrain.sandbox import run_python

    result = run_python(str(code), timeout_s=TIMEOUT_S, memory_mb=MEMORY_MB, max_output_bytes=MAX_OUTPUT_BYTES)
    parts = [result.stdout] if result.stdout else []
    if result.stderr:
        parts.append("stderr:\n" + result.stderr)
    if result.killed_by:
        parts.append(f"[killed: {result.killed_by}]")
    elif result.returncode:
        parts.append(f"[exit status {result.returncode}]")
    return "\n".join(parts) if parts else "[no output]"

"""Run untrusted Python (model-written code) in an isolated, resource-limited process.

>>> from posttrain.sandbox import run_python
>>> run_python("print(sum(range(10)))").stdout
'45\\n'

See :func:`run_python` for the limits and :func:`sandbox_info` for the isolation in force.
"""
from posttrain.sandbox.runner import (
    SandboxError,
    SandboxResult,
    probe_mode,
    run_python,
    sandbox_info,
)

__all__ = ["SandboxError", "SandboxResult", "probe_mode", "run_python", "sandbox_info"]

"""Fixtures for the verifier tests: unique registry names that are cleaned up afterwards."""
from __future__ import annotations

import itertools

import pytest

from posttrain.verification import unregister

_counter = itertools.count()


@pytest.fixture
def fresh_name():
    """Return a factory of verifier names unique to this test; unregisters them at teardown."""
    names: list[str] = []

    def make(stem: str = "v") -> str:
        name = f"test_{stem}_{next(_counter)}"
        names.append(name)
        return name

    yield make
    for name in names:
        unregister(name)

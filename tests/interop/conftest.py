"""Interop tests need the official Node clients installed (the README's test command does it)."""

from __future__ import annotations

import pytest

from .nodeproc import node_ready


@pytest.fixture(autouse=True)
def _node_clients_installed() -> None:
    # Fail rather than skip: a missing install must not look like a passing suite.
    problem = node_ready()
    if problem is not None:
        pytest.fail(problem)

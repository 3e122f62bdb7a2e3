"""Every public module imports first in a fresh interpreter: no import cycle hides behind the order in which
the rest of the test suite happens to import them."""

from __future__ import annotations

import subprocess
import sys

import pytest

# the modules whose import order once hid a cycle run by default (each import costs about 15 s here); the rest
# of the entry points are slow tests
FIRST = ["explainer.export", "explainer.export_prototypes"]
MORE = [
    "explainer.api",
    "explainer.methods",
    "explainer.modules",
    "explainer.evaluation.cli",
    "explainer.viz",
    "explainer.callbacks",
    "explainer.demo",
    "explainer.demo_family",
]


@pytest.mark.parametrize("module", FIRST + [pytest.param(m, marks=pytest.mark.slow) for m in MORE])
def test_module_imports_first(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

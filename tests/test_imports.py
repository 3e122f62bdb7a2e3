"""Every public module imports first in a fresh interpreter: no import cycle hides behind the order in which
the rest of the test suite happens to import them."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_MODULES = ["explainer.export", "explainer.export_prototypes", "explainer.methods", "explainer.modules",
                 "explainer.api", "explainer.evaluation.cli", "explainer.viz", "explainer.callbacks",
                 "explainer.demo"]


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_module_imports_first(module):
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

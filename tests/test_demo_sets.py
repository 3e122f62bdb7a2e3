"""The demos' method lists: every baseline is scored by one of the two demos, the cheap ones by ``make demo``."""

from __future__ import annotations

from explainer.demo import BASELINE_SETS, FAST_BASELINES, REFERENCES, SLOW_BASELINES
from explainer.methods import METHODS, method_class


def test_every_registered_baseline_is_in_one_demo_and_the_costly_ones_in_demo_family():
    # the package's own methods (other tests register methods of their own in the same registry)
    shipped = {name for name in METHODS.names() if method_class(name).__module__.startswith("explainer.")}
    learned = {name for name in shipped if method_class(name).cost == "one pass"}
    variants = {"smooth"}  # a wrapper around another method, not a baseline of its own
    assert set(REFERENCES) | set(FAST_BASELINES) | set(SLOW_BASELINES) == shipped - learned - variants
    assert not set(FAST_BASELINES) & set(SLOW_BASELINES)
    assert {method_class(name).cost for name in FAST_BASELINES} <= {"free", "gradients"}
    assert {method_class(name).cost for name in SLOW_BASELINES} <= {"perturbation", "optimisation"}
    assert BASELINE_SETS["all"] == {**FAST_BASELINES, **SLOW_BASELINES} and BASELINE_SETS["none"] == {}

"""The evaluation plan: which method variants run, with which options, and which are already done.

A method is ``name`` or ``name=value`` (the value is the explainer's export folder or checkpoint, the prototype
export of ``prototypes``, or the wrapped method of ``smooth``); ``--option rise.num_masks=1000`` sets any
method option. Methods are expanded over ML-Att layers (``--layer input,final``: a method with a layer form
runs once per layer, rows ``<method>@<layer>``) and smoothing (``--smooth K``: rows ``<method>+smooth<K>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from explainer.evaluation.suite import EvaluationSettings
from explainer.methods import available_methods, method_class


@dataclass
class MethodRun:
    """One row name of the results: a registered method with its options and evaluation settings.

    Args:
        row: the rows' method name (e.g. ``gradcam@final``).
        method: the registered method.
        options: the method's options.
        settings: how it is evaluated.
        notes: what the expansion over layers and smoothing changed, for the console.
    """

    row: str
    method: str
    options: dict[str, Any]
    settings: EvaluationSettings
    notes: list[str] = field(default_factory=list)


def parse_methods(spec: str, options: list[str]) -> dict[str, dict[str, Any]]:
    """``"explainer=path,rise"`` and ``["rise.num_masks=1000"]`` to ``{name: options}``, validated."""
    methods: dict[str, dict[str, Any]] = {}
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        name, _, value = item.partition("=")
        if name not in available_methods():
            raise ValueError(f"unknown method '{name}'; valid methods: {', '.join(available_methods())}")
        value_option = method_class(name).value_option
        if value and value_option is None:
            raise ValueError(
                f"method '{name}' takes no value ('{item}'); set its options with --option {name}.<option>=<value>"
            )
        methods[name] = {value_option: value} if value else {}
    for option in options:
        key, _, value = option.partition("=")
        name, _, option_name = key.partition(".")
        if name not in methods or not option_name or not value:
            raise ValueError(f"--option '{option}' must be <method>.<option>=<value> for a method in --methods")
        methods[name][option_name] = yaml.safe_load(value)
    if not methods:
        raise ValueError("--methods names no method")
    return methods


def parse_layers(spec: str | None) -> list[str] | None:
    """``--layer input,final`` as a list (``None`` without the option)."""
    return [s.strip() for s in spec.split(",") if s.strip()] if spec else None


def expand_methods(
    methods: dict[str, dict[str, Any]], layers: list[str] | None, smooth: int | None
) -> list[tuple[str, str, dict[str, Any], list[str]]]:
    """``(row name, method name, options, notes)`` for every method at every requested layer.

    A method without a layer form (its class's ``layer_forms``) runs once, at the input, with a note; a
    method without the input form (Grad-CAM) is skipped at ``input`` with a note. With ``smooth``, each entry
    is wrapped in the ``smooth`` method.
    """
    out: list[tuple[str, str, dict[str, Any], list[str]]] = []
    for name, options in methods.items():
        variants: list[tuple[str, dict[str, Any]]] = []
        notes: list[str] = []
        forms = method_class(name).layer_forms
        if layers and not forms:
            variants.append((name, dict(options)))
            notes.append(f"{name} has no layer form: evaluated once, on the input")
        else:
            for layer in layers or [None]:
                if layer is not None and layer not in forms:
                    notes.append(f"{name} has no {layer}-layer form: skipped at '{layer}'")
                    continue
                opts = dict(options)
                if layer is not None and layer != "input":
                    opts["layer"] = layer
                variants.append((name if layer is None else f"{name}@{layer}", opts))
        for row, opts in variants:
            if smooth is not None:
                if method_class(name).wraps_method:
                    raise ValueError("--smooth cannot be combined with the 'smooth' method; use one of them")
                out.append(
                    (
                        f"{row}+smooth{smooth}",
                        "smooth",
                        {"method": name, "kernel_size": int(smooth), "options": opts},
                        notes,
                    )
                )
            else:
                out.append((row, name, opts, notes))
            notes = []
    return out


def make_plan(
    methods: dict[str, dict[str, Any]],
    settings: EvaluationSettings,
    layers: list[str] | None = None,
    smooth: int | None = None,
) -> list[MethodRun]:
    """Every method variant as a :class:`MethodRun` under ``settings``."""
    return [
        MethodRun(row, name, options, settings, notes)
        for row, name, options, notes in expand_methods(methods, layers, smooth)
    ]


__all__ = ["MethodRun", "expand_methods", "make_plan", "parse_layers", "parse_methods"]

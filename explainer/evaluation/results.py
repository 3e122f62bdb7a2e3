"""Result files: ``results.json`` rows, ``results.md``, ``settings.json``, all written atomically.

Rows are ``{method, metric, value, n, stderr, targets}``. ``targets`` says which classes were explained:
``labels`` (the ground-truth classes, as in the Explainer paper), ``predictions`` (the classifier's) or,
under a grid protocol, the scored cells (``cells 0,3``; the protocol names the metric: ``difull.mean``).
``stderr`` is the batch-means standard error (the standard deviation of the per-batch values over the
square root of the number of batches; for the grid protocols' mean, over the per-map scores).
``settings.json`` records what the rows were computed under (classifier, data, limit, targets and the
protocol choices), so that ``--resume`` never mixes rows of different settings.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from explainer.atomic import write_atomic

ROW_KEYS = ("method", "metric", "value", "n", "stderr", "targets")


def write_results(rows: list[dict[str, Any]], out: Path, settings: dict[str, Any] | None = None) -> None:
    """Writes ``results.json``, ``results.md`` and, when given, ``settings.json`` (each atomically)."""
    if settings is not None:
        write_atomic(out / "settings.json", json.dumps(settings, indent=1))
    write_atomic(out / "results.json", json.dumps(rows, indent=1))
    write_atomic(out / "results.md", results_table(rows, notes=settings_notes(settings)))


def read_json(path: Path, what: str) -> Any:
    """A JSON file, with an error that names the file and the fix when it is not JSON (e.g. truncated)."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); it holds {what}. Remove it or choose another --out"
        ) from None


def previous_rows(out: Path, resume: bool, settings: dict[str, Any], overwrite: bool = False) -> list[dict[str, Any]]:
    """The rows already in ``out/results.json`` to keep (none when there is no such file).

    Args:
        out: the output folder.
        resume: keep the rows of methods already evaluated.
        settings: this run's settings (see :func:`write_results`); ``--resume`` needs the same ones.
        overwrite: start afresh over results written under other settings.

    Raises:
        FileExistsError: results exist and neither ``resume`` nor ``overwrite`` is given, or ``resume`` is
            given and the results were computed under other settings.
    """
    path = out / "results.json"
    if not path.exists() or overwrite:
        return []
    if not resume:
        raise FileExistsError(
            f"{path} exists; pass --resume to reuse it, --overwrite to replace it, or choose another --out"
        )
    rows = read_json(path, "the rows of an earlier evaluation")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and set(ROW_KEYS) <= set(r) for r in rows):
        raise ValueError(
            f"{path} does not hold result rows {{{', '.join(ROW_KEYS)}}}; remove it or choose another --out"
        )
    earlier_path = out / "settings.json"
    earlier = read_json(earlier_path, "the settings of an earlier evaluation") if earlier_path.exists() else None
    if earlier != settings:
        differ = sorted(k for k in set(settings) | set(earlier or {}) if (earlier or {}).get(k) != settings.get(k))
        raise FileExistsError(
            f"{path} was computed under other settings ({', '.join(differ) if earlier else 'no settings.json'}); "
            "--resume would mix rows of different settings. Use the same settings, --overwrite, or another --out"
        )
    return rows


def settings_notes(settings: dict[str, Any] | None) -> list[str]:
    """One line per protocol choice of ``settings`` for the table's footnote."""
    if not settings:
        return []
    keys = (
        "classifier",
        "data",
        "targets",
        "limit",
        "pointing_tolerance",
        "difficult",
        "tie_order",
        "saliency_mode",
        "insertion_step",
        "protocol",
        "precision",
    )
    return [f"{k}: {settings[k]}" for k in keys if settings.get(k) is not None]


def results_table(rows: list[dict[str, Any]], metrics: list[str] | None = None, notes: list[str] | None = None) -> str:
    """A markdown table, methods as rows (``value ± stderr``), with the settings as a footnote."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    metrics = metrics or [m for m in dict.fromkeys(r["metric"] for r in rows) if not m.endswith(".invalid")]
    cell = {(r["method"], r["metric"]): r for r in rows}
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method in methods:
        cells = []
        for metric in metrics:
            r = cell.get((method, metric))
            if r is None:
                cells.append("")
            elif r.get("stderr") is not None and math.isfinite(r["stderr"]):
                cells.append(f"{r['value']:.4f} ± {r['stderr']:.4f}")
            else:
                cells.append(f"{r['value']:.4g}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Settings: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


__all__ = ["ROW_KEYS", "previous_rows", "read_json", "results_table", "settings_notes", "write_atomic", "write_results"]

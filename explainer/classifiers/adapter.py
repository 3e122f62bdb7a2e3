"""What a real model returns, turned into the logits an Explainer needs (:class:`OutputAdapter`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from explainer.ops import ACTIVATIONS

RETURNS = ("logits", "probabilities", "log_probabilities")


@dataclasses.dataclass(frozen=True)
class OutputAdapter:
    """Turns what a model returns into the logits ``[B, C]`` an Explainer needs, and feeds it its inputs.

    Args:
        output: which output to use when the model returns a tuple or list (an index) or a dict (a key);
            ``None`` for a model that returns one tensor.
        returns: what that output is: ``logits``; ``probabilities`` (turned into logits with a clamped
            logit for ``sigmoid``, a clamped log for ``softmax``); or ``log_probabilities`` (log-softmax or
            log-sigmoid outputs).
        activation: ``sigmoid`` (a multi-label classifier: the paper's BCE objective) or ``softmax`` (a
            single-label classifier: the Explainer uses cross-entropy on the target class).
        mean: the classifier's own input normalisation mean; images arrive normalised with the data
            module's mean / std and are re-normalised with these. ``None``: the classifier takes the data
            module's normalisation as it is.
        std: the classifier's own input normalisation standard deviation.
        input_size: ``(H, W)`` the classifier takes; images of another size are resized (bilinear) for
            it. ``None``: it takes the data's size.
        eps: the clamp of probabilities, ``[eps, 1 - eps]``, before the logit or log.
    """

    output: int | str | None = None
    returns: str = "logits"
    activation: str = "sigmoid"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size: tuple[int, int] | None = None
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.returns not in RETURNS:
            raise ValueError(f"classifier option returns={self.returns!r}: expected one of {', '.join(RETURNS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"classifier option activation={self.activation!r}: expected one of {', '.join(ACTIVATIONS)}"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("classifier options mean and std go together: give both or neither")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 3:
                    raise ValueError(f"classifier option {name} needs 3 values (RGB), got {list(value)}")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"classifier option std must be positive, got {list(self.std)}")
        if self.input_size is not None:
            size = tuple(int(s) for s in self.input_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"classifier option input_size needs [H, W] > 0, got {list(self.input_size)}")
            object.__setattr__(self, "input_size", size)
        if not 0 < self.eps < 0.5:
            raise ValueError(f"classifier option eps must lie in (0, 0.5), got {self.eps}")

    def select(self, out: Any) -> Tensor:
        """The output tensor named by ``output``."""
        if isinstance(out, Mapping):
            if self.output is None or self.output not in out:
                keys = ", ".join(f"{k!r} {_shape(v)}" for k, v in out.items())
                what = "set" if self.output is None else f"{self.output!r} is not one of them; set"
                raise ValueError(
                    f"the classifier returns a dict with keys {keys}; {what} the classifier option "
                    "output: <key> to the one holding the class scores"
                )
            return out[self.output]
        if isinstance(out, (tuple, list)):
            if not isinstance(self.output, int) or not -len(out) <= self.output < len(out):
                shapes = ", ".join(f"[{i}] {_shape(v)}" for i, v in enumerate(out))
                raise ValueError(
                    f"the classifier returns a {type(out).__name__} of {len(out)} outputs ({shapes}); "
                    "set the classifier option output: <index> to the one holding the class scores"
                )
            return out[self.output]
        if self.output is not None and not isinstance(out, Tensor):
            raise ValueError(
                f"classifier option output={self.output!r} but the classifier returns {type(out).__name__}"
            )
        return out

    def to_logits(self, scores: Tensor) -> Tensor:
        """Logits from the selected output, per ``returns`` and ``activation``."""
        if self.returns == "logits":
            return scores
        if self.returns == "probabilities":
            p = scores.clamp(self.eps, 1 - self.eps)
            return torch.log(p) if self.activation == "softmax" else torch.log(p) - torch.log1p(-p)
        if self.activation == "softmax":  # log-softmax outputs are logits up to a per-image constant
            return scores
        lp = scores.clamp(math.log(self.eps), math.log1p(-self.eps))  # log-sigmoid -> logit
        return lp - torch.log(-torch.expm1(lp))

    def to_config(self) -> dict[str, Any]:
        """Plain data (for hyper-parameters and exports)."""
        return {
            "output": self.output,
            "returns": self.returns,
            "activation": self.activation,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "input_size": list(self.input_size) if self.input_size else None,
        }


def _shape(value: Any) -> str:
    return f"{tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__


__all__ = ["RETURNS", "OutputAdapter"]

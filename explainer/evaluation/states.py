"""Samplers and sum-state metrics of the evaluation: each test image once, any number of processes.

:class:`ShardedBatches` forms the batches a single process would form and deals batch ``i`` to rank
``i % world``, without the padding of ``DistributedSampler``. :class:`BatchMoments`, :class:`Totals` and
:class:`KeptMaps` are torchmetrics states that Lightning's strategies synchronise on ``compute``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler
from torchmetrics import Metric


class ShardedBatches(Sampler[list[int]]):
    """The batches of one process: consecutive batches of ``batch_size`` indices, batch ``i`` for rank ``i % world``.

    Args:
        length: the number of samples.
        batch_size: samples per batch (the last batch may be smaller).
        rank: this process's rank.
        world: the number of processes.
    """

    def __init__(self, length: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.length, self.batch_size, self.rank, self.world = int(length), int(batch_size), int(rank), int(world)

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(self.rank * self.batch_size, self.length, self.world * self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.length)))

    def __len__(self) -> int:
        batches = math.ceil(self.length / self.batch_size)
        return len(range(self.rank, batches, self.world))


class BatchMoments(Metric):
    """Count, sum and sum of squares of per-batch values (float64 sums), for the batch-means standard error.

    Args:
        size: values per batch (one per row key).
    """

    full_state_update = False

    def __init__(self, size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("count", "total", "squares"):
            self.add_state(name, default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        values = values.to(self.total.device, torch.float64)
        finite = torch.isfinite(values)
        clean = torch.where(finite, values, torch.zeros_like(values))
        self.count += finite
        self.total += clean
        self.squares += clean**2

    def compute(self) -> Tensor:
        """``[size]`` standard deviation of the batch values over the square root of their count (NaN under 2)."""
        n = self.count
        variance = (self.squares - self.total**2 / n.clamp(min=1)) / (n - 1).clamp(min=1)
        stderr = variance.clamp(min=0).sqrt() / n.clamp(min=1).sqrt()
        return torch.where(n > 1, stderr, torch.full_like(stderr, float("nan")))


class Totals(Metric):
    """Sums of the method's seconds, the images and the image-class pairs seen."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("seconds", "images", "pairs"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, seconds: float, images: int, pairs: int) -> None:
        self.seconds += seconds
        self.images += images
        self.pairs += pairs

    def compute(self) -> dict[str, Tensor]:
        return {"seconds": self.seconds, "images": self.images, "pairs": self.pairs}


class KeptMaps(Metric):
    """Maps explaining one grid cell with their scores and sample index (for AggAtt), gathered across ranks."""

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("maps", "scores", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, maps: Tensor, scores: Tensor, index: Tensor) -> None:
        self.maps.append(maps.float())
        self.scores.append(scores.float())
        self.index.append(index.float())

    def compute(self) -> dict[str, Tensor]:
        def cat(value: Any) -> Tensor:
            if isinstance(value, Tensor):
                return value
            return torch.cat(value) if value else torch.zeros(0)

        index = cat(self.index)
        order = torch.argsort(index, stable=True)
        maps = cat(self.maps)
        return {
            "maps": maps.reshape(-1, *maps.shape[-2:])[order] if maps.numel() else maps,
            "scores": cat(self.scores)[order],
        }


__all__ = ["BatchMoments", "KeptMaps", "ShardedBatches", "Totals"]

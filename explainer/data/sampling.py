"""Reproducible training order: a shuffle fixed by (seed, epoch) that a resumed run continues mid-epoch.

``train.py`` runs that are killed and resumed from ``last.ckpt`` must see the batches the uninterrupted run
would have seen. :class:`EpochShuffle` draws each epoch's permutation from its own generator seeded with
``(seed, epoch)`` (not from the global RNG, whose state moves with the model's own draws), and when an
iteration starts it skips the samples of the batches the trainer has already completed in this epoch (none
in a fresh epoch; ``k`` after a resume from a checkpoint written after batch ``k``). The loaders draw their
worker seeds from their own generator too, so creating one consumes nothing from the global RNG.

Under DDP Lightning wraps the sampler in its distributed wrapper; a mid-epoch resume there restarts that
epoch's order (the single-process case is exact).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Sampler

from explainer.data.loader import SkipReportingLoader


def run_seed() -> int:
    """The seed of this run: ``seed_everything``'s (``PL_GLOBAL_SEED``), else 0."""
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


def _mix(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream) % (2**63 - 1)


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(length)`` per epoch, from ``(seed, epoch)``; resumable mid-epoch.

    Args:
        length: the number of samples.
        batch_size: samples per batch (to turn completed batches into samples).
        seed: the shuffle seed.
        completed: the number of batches of the current epoch already trained (read when an iteration
            starts); ``None``: always 0.
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0, completed: Callable[[], int] | None = None) -> None:
        self.length, self.batch_size, self.seed = int(length), int(batch_size), int(seed)
        self.completed = completed
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch."""
        self.epoch = int(epoch)

    def permutation(self, epoch: int) -> list[int]:
        """The order of ``epoch``."""
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch, 0))
        return torch.randperm(self.length, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        done = int(self.completed()) if self.completed is not None else 0
        self.skipped = min(max(done, 0) * self.batch_size, self.length)
        yield from self.permutation(self.epoch)[self.skipped :]

    def __len__(self) -> int:
        return self.length


class UnpaddedShards(UnrepeatedDistributedSampler):
    """Validation and test shards under DDP: sample ``i`` goes to rank ``i % world``, each sample once.

    Lightning's default ``DistributedSampler`` pads the last shard by repeating samples, so a split whose
    size the world size does not divide is scored with duplicates. Lightning's own unpadded sampler (which it
    uses for prediction, and leaves in place as a ``DistributedSampler``) in split order: shards differ by one
    sample at most, and the metrics' sum states add up to one process's.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def evaluation_sampler(dataset: Any) -> UnpaddedShards | None:
    """:class:`UnpaddedShards` when a process group of several ranks is running, else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    return UnpaddedShards(dataset, world, torch.distributed.get_rank()) if world > 1 else None


def _epoch_shuffle(sampler: Any) -> EpochShuffle | None:
    """The :class:`EpochShuffle` of a loader: its sampler, or the one inside Lightning's distributed wrapper."""
    for candidate in (sampler, getattr(getattr(sampler, "dataset", None), "_sampler", None)):
        if isinstance(candidate, EpochShuffle):
            return candidate
    return None


class ResumableLoader(SkipReportingLoader):
    """The training loader: an :class:`EpochShuffle` sampler and worker seeds from ``(seed, epoch)``.

    Its ``state_dict`` is what Lightning stores in the checkpoint (the epoch and the shuffle seed); the
    position inside the epoch comes from the trainer's own progress when the iteration starts. Lightning may
    re-create it with its distributed wrapper as the sampler (DDP), hence the plain keyword arguments.
    """

    def __init__(
        self, dataset: Any, sampler: Any = None, generator: torch.Generator | None = None, **kwargs: Any
    ) -> None:
        super().__init__(
            dataset, sampler=sampler, generator=generator if generator is not None else torch.Generator(), **kwargs
        )

    def __iter__(self) -> Iterator[Any]:
        order = _epoch_shuffle(self.sampler)
        if order is not None and self.generator is not None:
            self.generator.manual_seed(_mix(order.seed, order.epoch, 1))
        yield from super().__iter__()

    def state_dict(self) -> dict[str, int]:
        order = _epoch_shuffle(self.sampler)
        return {"epoch": order.epoch, "seed": order.seed} if order is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        order = _epoch_shuffle(self.sampler)
        if order is None or not state:
            return
        if int(state.get("seed", order.seed)) != order.seed:
            raise ValueError(
                f"the checkpoint was trained with shuffle seed {state['seed']}, this run has "
                f"{order.seed}: resume with the same --seed_everything"
            )
        order.set_epoch(int(state.get("epoch", order.epoch)))


__all__ = ["EpochShuffle", "ResumableLoader", "UnpaddedShards", "evaluation_sampler", "run_seed"]

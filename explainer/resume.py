"""Random-number states in every checkpoint, so a resumed run draws what the uninterrupted run would have."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python) as tensors and plain containers, which a
    weights-only checkpoint can hold."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned (CUDA states only when the device count matches)."""
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy = states["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached"])
    )
    python = states["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


class ReproducibleResume(pl.Callback):
    """Stores the RNG states in every checkpoint and restores them when training resumes from one.

    The states are restored when training starts (after the sanity check), so the first step after a resume
    draws dropout masks and noise from the same state as the step after the checkpoint in the uninterrupted
    run. ``train.py`` adds this callback to every run; add it yourself to a Trainer of your own. Together
    with the training loader's :class:`~explainer.data.sampling.EpochShuffle` a deterministic run
    (``--seed_everything N --trainer.deterministic true``) killed at any step and resumed from ``last.ckpt``
    ends with the weights of the uninterrupted run (bit-identical on CPU; under DDP every rank restores the
    states of rank 0).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None


class RunCheckpoint(ModelCheckpoint):
    """``train.py``'s ModelCheckpoint (``--checkpoint.*``): best checkpoints on fresh scores, ``last.ckpt``
    on every ``every_n_train_steps``, atomic writes, and a best score that survives a resume.

    * With a ``monitor``, top-k checkpoints are written only at the end of a validation run, with the score
      that validation just computed; never at a training step, where the last score would belong to older
      weights. So the best checkpoint (and the export made from it) is always a validated one.
    * ``every_n_train_steps`` (or ``train_time_interval``) then writes ``last.ckpt`` only (with
      ``save_last``; a file of its own also with ``save_last="link"``), from the first step on, whether or
      not a validation has run: a killed run resumes from it.
    * Every file is written to a temporary name and renamed, so a kill during a write leaves the previous
      checkpoint intact (local files; remote file systems and sharded checkpoint folders are written by
      Lightning as usual).
    * Resuming from a checkpoint of another run folder keeps that run's best score and best checkpoints
      (Lightning would forget them because the folder changed).
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.monitor is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        interval = self._train_time_interval
        if interval is not None:
            now = time.monotonic()
            elapsed = self._last_time_checked is not None and now - self._last_time_checked >= interval.total_seconds()
            elapsed = bool(trainer.strategy.broadcast(elapsed))
            if elapsed or self._last_time_checked is None:
                self._last_time_checked = now
            due = due or elapsed
        if due and self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_file(trainer, self._monitor_candidates(trainer))

    def _save_last_file(self, trainer: pl.Trainer, candidates: dict[str, Any]) -> None:
        """``last.ckpt`` as a file of its own (also with ``save_last="link"``, whose link would point at the
        best checkpoint and so at older weights)."""
        filepath = self.format_checkpoint_name(candidates, self.CHECKPOINT_NAME_LAST)
        previous, self.last_model_path = self.last_model_path, filepath
        self._save_checkpoint(trainer, filepath)
        if previous and previous != filepath and self._should_remove_checkpoint(trainer, previous, filepath):
            self._remove_checkpoint(trainer, previous)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None:
            super().on_validation_end(trainer, pl_module)
            return
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        candidates = self._monitor_candidates(trainer)
        every = self._every_n_epochs  # 0 when steps or time drive the checkpoints: every validation then
        if self.monitor in candidates and (every <= 1 or (trainer.current_epoch + 1) % every == 0):
            self._save_topk_checkpoint(trainer, candidates)
        if self.save_last:
            self._save_last_checkpoint(trainer, candidates)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        sharded = any(name in type(trainer.strategy).__name__ for name in ("DeepSpeed", "FSDP", "ModelParallel"))
        if "://" in str(filepath) or sharded:  # remote file systems and checkpoint folders: Lightning's own write
            super()._save_checkpoint(trainer, filepath)
            return
        temporary = f"{filepath}.partial"
        try:
            trainer.save_checkpoint(temporary, self.save_weights_only)
            if trainer.is_global_zero:
                os.replace(temporary, filepath)
        finally:
            if trainer.is_global_zero and os.path.exists(temporary):
                os.remove(temporary)
        trainer.strategy.barrier("RunCheckpoint._save_checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        earlier = state_dict.get("dirpath", self.dirpath)
        if earlier == self.dirpath:
            super().load_state_dict(state_dict)
            return
        # another run folder (a resumed run writes into its own): keep the earlier run's best checkpoints,
        # which stay where they are, so that the best validated weights are still what gets exported
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = state_dict["best_model_path"]
        self.best_k_models = {k: v for k, v in state_dict.get("best_k_models", {}).items() if Path(k).is_file()}
        self.kth_best_model_path = state_dict.get("kth_best_model_path", self.kth_best_model_path)
        self.kth_value = state_dict.get("kth_value", self.kth_value)

    def _should_remove_checkpoint(self, trainer: pl.Trainer, previous: str, current: str) -> bool:
        # never delete the last checkpoint of the run this one resumed from (it is what was resumed)
        if self.dirpath is not None and Path(previous).resolve().parent != Path(self.dirpath).resolve():
            return False
        return super()._should_remove_checkpoint(trainer, previous, current)


__all__ = ["ReproducibleResume", "RunCheckpoint", "rng_states", "set_rng_states"]

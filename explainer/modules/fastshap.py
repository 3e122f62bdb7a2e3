"""FastSHAPModule: a network trained to output Shapley values in one pass (Jethani et al., ICLR 2022).

The players are the cells of a ``grid x grid`` grid; the value function is a model's class probabilities on
the image with the cells outside a coalition removed: FastSHAP's surrogate (a classifier trained on images
with random cells removed, ``configs/quickstart/surrogate.yaml``), or the classifier itself with the fill.
The objective and its normalisation are in :mod:`explainer.losses_fastshap`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from explainer.classifiers.source import load_classifier
from explainer.data.batch import Batch
from explainer.losses_fastshap import (
    cell_masks,
    efficiency_gap,
    efficiency_normalize,
    fastshap_loss,
    shapley_kernel_sample,
)
from explainer.modules.learned import LearnedExplainerModule
from explainer.nets.masknets import build_mask_net
from explainer.nets.shapley import check_grid

SURROGATE_RECIPE = "python train.py fit --config configs/quickstart/surrogate.yaml"


def check_surrogate(value_function: str, surrogate: str | None) -> None:
    """Refuses ``value_function: surrogate`` without a surrogate checkpoint file, saying how to train one."""
    if value_function not in ("surrogate", "classifier"):
        raise ValueError(f"value_function must be 'surrogate' or 'classifier', got {value_function!r}")
    if value_function == "surrogate" and (surrogate is None or not Path(surrogate).is_file()):
        found = "no surrogate is set" if surrogate is None else f"the surrogate '{surrogate}' is not a file"
        raise FileNotFoundError(
            f"value_function: surrogate needs a surrogate checkpoint, but {found}. Train one with `{SURROGATE_RECIPE}` "
            "(it writes checkpoints/quickstart/surrogate.ckpt) and set surrogate: <its path>, or set "
            "value_function: classifier"
        )


class FastSHAPModule(LearnedExplainerModule):
    """FastSHAP: one forward pass gives each class's Shapley values of the cells of a ``grid x grid`` grid.

    Loss (Jethani et al., 2022, eq. 4): the mean over images and coalitions ``S`` of
    ``|| v(S) - v(0) - 1_S^T phi ||^2`` over classes, with ``S`` drawn from the Shapley kernel (``num_samples``
    per image, paired with their complements) and ``phi`` efficiency-normalised so that it sums to
    ``v(1) - v(0)``; ``v`` is the value function's class probabilities with the cells outside ``S`` removed.
    Plus ``efficiency`` x ``(1^T phi_raw - (v(1) - v(0)))^2`` on the raw values, so that the exported network,
    which runs without the value function, gives nearly efficient values. Only the explanation network trains;
    the classifier and the surrogate are frozen and not stored in the checkpoints (kept by path and content
    hash).

    Args:
        classifier: the classifier to explain (:mod:`explainer.classifiers.source`), e.g. a ``ClassifierModule``
            checkpoint path.
        num_classes: number of classes (linked from the data module; must equal the classifier's).
        class_names: class names (linked from the data module).
        grid: cells per side (``d = grid^2`` players); it must divide the image height and width.
        num_samples: coalitions per image and step (an even number: each drawn with its complement).
        value_function: ``surrogate`` (the model of ``surrogate``, FastSHAP's choice) or ``classifier`` (the
            classifier itself on images whose removed cells take the fill).
        surrogate: a surrogate checkpoint (``ClassifierModule`` trained with ``teacher`` and ``mask_cells``;
            ``python train.py fit --config configs/quickstart/surrogate.yaml``).
        efficiency: weight of the efficiency term ``(1^T phi_raw - (v(1) - v(0)))^2``: it trains the raw values'
            sum (which the normalised loss leaves free) so that the network alone, as exported, gives nearly
            efficient values. 0: off.
        mask_net: the explanation network's name; ``shapley_cells`` (values per cell).
        mask_net_kwargs: its options (``body``, ``body_kwargs``); ``grid`` is set from ``grid``.
        fill: what removed cells become (``mean``: the mean colour, the surrogate's training fill).
        blur_sigma: sigma in pixels of the ``blur`` fill.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        init_from: fine-tune from an export folder or a checkpoint of the same network.
        encoder_from_classifier: start the body's encoder from the classifier's trained features
            (``classifier_unet`` bodies).
        classifier_hash: the classifier's content hash, recorded at the first run and checked on loading.
        surrogate_hash: the surrogate's content hash, recorded at the first run and checked on loading.
    """

    kind = "fastshap"
    title = "FastSHAP"
    map_output = "values"

    def __init__(
        self,
        classifier: str | dict[str, Any] | nn.Module,
        num_classes: int = 10,
        class_names: list[str] | None = None,
        grid: int = 8,
        num_samples: int = 32,
        value_function: Literal["surrogate", "classifier"] = "surrogate",
        surrogate: str | None = None,
        efficiency: float = 1.0,
        mask_net: str = "shapley_cells",
        mask_net_kwargs: dict[str, Any] | None = None,
        fill: str = "mean",
        blur_sigma: float = 5.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        init_from: str | None = None,
        encoder_from_classifier: bool = False,
        classifier_hash: str | None = None,
        surrogate_hash: str | None = None,
    ) -> None:
        check_surrogate(value_function, surrogate)
        if grid < 2:
            raise ValueError(f"grid must be >= 2 cells per side (Shapley values of one player are trivial), got {grid}")
        if num_samples < 2 or num_samples % 2:
            raise ValueError(f"num_samples must be an even number >= 2 (paired sampling), got {num_samples}")
        if efficiency < 0:
            raise ValueError(f"efficiency must be >= 0, got {efficiency}")
        if value_function == "surrogate" and fill != "mean":
            raise ValueError(
                f"the surrogate was trained with removed cells at the mean colour, but fill is '{fill}'; set fill: "
                "mean, or value_function: classifier to explain the classifier with another fill"
            )
        mask_net_kwargs = dict(mask_net_kwargs or {})
        if int(mask_net_kwargs.setdefault("grid", grid)) != grid:
            raise ValueError(f"mask_net_kwargs.grid={mask_net_kwargs['grid']} differs from grid={grid}; drop it")
        super().__init__(
            classifier,
            num_classes=num_classes,
            class_names=class_names,
            mask_net=mask_net,
            mask_net_kwargs=mask_net_kwargs,
            fill=fill,
            blur_sigma=blur_sigma,
            lr=lr,
            weight_decay=weight_decay,
            init_from=init_from,
            encoder_from_classifier=encoder_from_classifier,
            classifier_hash=classifier_hash,
        )
        self.hparams.mask_net_kwargs = mask_net_kwargs  # with the grid (a config's own kwargs may lack it)
        self.hparams.targets = "all"  # every class is explained (recorded in exports; nothing selects targets)
        self.surrogate = None
        if value_function == "surrogate":
            self.surrogate = load_classifier(surrogate, num_classes=num_classes)
            if surrogate_hash is not None and surrogate_hash != self.surrogate.content_hash:
                raise ValueError(
                    f"the surrogate '{surrogate}' is not the one this FastSHAP was trained with: its weights hash "
                    f"{self.surrogate.content_hash[:12]}... differs from the recorded {surrogate_hash[:12]}..."
                )
            self.hparams.surrogate_hash = self.surrogate.content_hash
        self._val_generator: torch.Generator | None = None

    # -- what the base asks of a learned explainer -----------------------------------------------------------
    def build_net(self) -> nn.Module:
        hp = self.hparams
        net = build_mask_net(hp.mask_net, int(hp.num_classes), **{**(hp.mask_net_kwargs or {}), "grid": int(hp.grid)})
        if not hasattr(net, "cell_values"):
            raise ValueError(f"mask network '{hp.mask_net}' gives no cell values; FastSHAP needs 'shapley_cells'")
        return net

    def term_names(self) -> tuple[str, ...]:
        return ("least_squares", "efficiency")

    def export_settings(self) -> dict[str, Any]:
        hp = self.hparams
        return {
            "fastshap": {
                "grid": int(hp.grid),
                "num_samples": int(hp.num_samples),
                "efficiency": float(hp.efficiency),
                "value_function": hp.value_function,
                "surrogate": hp.surrogate if hp.value_function == "surrogate" else None,
                "surrogate_sha256": hp.surrogate_hash if hp.value_function == "surrogate" else None,
            }
        }

    @property
    def value_model(self) -> nn.Module:
        """The frozen model whose class probabilities are the value function."""
        return self.surrogate if self.surrogate is not None else self.classifier

    def value_probabilities(self, images: Tensor) -> Tensor:
        """The value function's class probabilities ``[N, C]`` (sigmoid or softmax, as the model was trained)."""
        logits = self.value_model(images)
        return torch.softmax(logits, 1) if self.value_model.activation == "softmax" else torch.sigmoid(logits)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.surrogate is not None:
            self.surrogate.set_data_normalization(self.norm_mean.flatten().tolist(), self.norm_std.flatten().tolist())
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(dm, "image_size", None)
        if size is not None:
            check_grid(int(self.hparams.grid), (size, size) if isinstance(size, int) else tuple(size))

    def train(self, mode: bool = True) -> FastSHAPModule:
        super().train(mode)
        if getattr(self, "surrogate", None) is not None:
            self.surrogate.eval()
        return self

    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator().manual_seed(0)  # the same coalitions at every validation

    def on_validation_epoch_end(self) -> None:
        self._val_generator = None

    def explain_batch(self, batch: Batch) -> dict[str, Tensor]:
        """Values, the value function on sampled coalitions and the loss on a batch (train / val / test)."""
        images = batch.image
        if not self._checked_classifier:
            self.check_classifier(batch)
        b, grid = images.shape[0], int(self.hparams.grid)
        check_grid(grid, images.shape[-2:])
        d, n = grid * grid, int(self.hparams.num_samples)
        generator = None if self.training else self._val_generator
        subsets = shapley_kernel_sample(b, d, n, paired=True, generator=generator).to(images.device, images.dtype)
        keep = cell_masks(subsets, grid, images.shape[-2:]).flatten(0, 1)  # [B * n, 1, H, W]
        repeated = images.repeat_interleave(n, 0)
        fill = None if self.infill.mask_dependent else self.fill_for(images)
        with torch.no_grad():  # the targets: the frozen value function on the full, empty and sampled coalitions
            rows = torch.cat(
                [
                    images,
                    self.perturb(images, torch.zeros_like(images[:, :1]), fill),
                    self.perturb(repeated, keep, None if fill is None else fill.repeat_interleave(n, 0)),
                ]
            )
            probs = self.value_probabilities(rows)
        full, null, sampled = probs[:b], probs[b : 2 * b], probs[2 * b :].view(b, n, -1)
        raw = self.mask_net.cell_values(images).flatten(2)  # [B, C, d]
        phi = efficiency_normalize(raw, full - null)
        least_squares = fastshap_loss(phi, subsets, sampled, null)
        gap = efficiency_gap(raw, full - null)
        loss = least_squares + float(self.hparams.efficiency) * gap
        return {"loss": loss, "least_squares": least_squares, "efficiency": gap, "values": phi}

    def cell_values(self, images: Tensor) -> Tensor:
        """The network's raw cell values ``[B, C, grid, grid]`` (before the efficiency normalisation, which needs
        the value function; an export gives these)."""
        return self.mask_net.cell_values(images)

    # -- checkpoints hold the explanation network only --------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("surrogate.")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.surrogate is not None:
            for key, value in self.surrogate.state_dict().items():
                checkpoint["state_dict"].setdefault(f"surrogate.{key}", value)


__all__ = ["SURROGATE_RECIPE", "FastSHAPModule", "check_surrogate"]

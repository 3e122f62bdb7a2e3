"""FIDO's learned in-filler (Chang et al., ICLR 2019) behind the :class:`~explainer.methods.infill.Infill`
interface: ``build_infill("learned=<export folder>")`` or ``fill: learned=<export folder>``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from explainer.export_infiller import load_infiller
from explainer.methods.infill import FILE_INFILLS, LEARNED_PREFIX, Infill


class LearnedInfill(Infill):
    """Fills the dropped pixels with a trained in-painting network's prediction.

    The fill is the network's in-filled image ``keep * x + (1 - keep) * prediction``: kept pixels are the
    image's own. The network was trained at one image size and normalisation (recorded in its export);
    :meth:`check_data` refuses data of another kind, and :meth:`fill` refuses images of another size.

    Args:
        path: an in-filler export folder (``python train.py fit --config configs/quickstart/infiller.yaml``
            writes ``checkpoints/quickstart/infiller``).

    Examples::

        fido = build_method("fido", classifier, infill="learned=checkpoints/quickstart/infiller")
    """

    mask_dependent = True  # the fill depends on the mask: computed per mask, never shared between masks

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        loaded = load_infiller(self.path)
        self.net = loaded.net.eval().requires_grad_(False)
        self.image_size = loaded.image_size
        self.mean = loaded.mean
        self.std = loaded.std

    def train(self, mode: bool = True) -> LearnedInfill:
        super().train(mode)
        self.net.eval()  # a fixed in-filler: never in training mode
        return self

    def check_data(
        self, image_size: int | Sequence[int] | None, mean: Sequence[float] | None, std: Sequence[float] | None
    ) -> None:
        """Refuses data of another image size or normalisation than the in-filler was trained on.

        Args:
            image_size: the data's side or ``(H, W)`` (``None``: unknown, not checked).
            mean: the data's normalisation mean (``None``: not checked).
            std: the data's normalisation standard deviation (``None``: not checked).

        Raises:
            ValueError: naming both values and the fix.
        """
        if image_size is not None:
            size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(map(int, image_size))
            if size != self.image_size:
                raise ValueError(
                    f"the in-filler {self.path} was trained at image size {list(self.image_size)}, but the data "
                    f"has image size {list(size)}: train an in-filler at that size (configs/quickstart/"
                    "infiller.yaml with data.init_args.image_size) or use a heuristic fill (blur, mean)"
                )
        for name, trained, given in (("mean", self.mean, mean), ("std", self.std, std)):
            if given is None:
                continue
            if len(given) != len(trained) or not torch.allclose(
                torch.tensor([float(v) for v in given]), torch.tensor(trained), rtol=0, atol=1e-6
            ):
                raise ValueError(
                    f"the in-filler {self.path} was trained on images normalised with {name} "
                    f"{[round(v, 6) for v in trained]}, but the data are normalised with {name} "
                    f"{[round(float(v), 6) for v in given]}: its fills would be in another colour space; train "
                    "an in-filler on this data or use a heuristic fill (blur, mean)"
                )

    def fill(self, images: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
        size = tuple(images.shape[-2:])
        if size != self.image_size:
            raise ValueError(
                f"the in-filler {self.path} was trained at image size {list(self.image_size)}, but it was given "
                f"images of size {list(size)}: train an in-filler at that size or use a heuristic fill (blur, mean)"
            )
        param = next(self.net.parameters())
        if param.device != images.device:
            self.net.to(images.device)
            param = next(self.net.parameters())
        completed = self.net(images.to(param.dtype), keep.to(param.dtype))
        return completed.to(images.dtype)


FILE_INFILLS[LEARNED_PREFIX] = LearnedInfill

__all__ = ["LearnedInfill"]

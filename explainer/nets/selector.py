"""A masking model conditioned on a class selector (Dabkowski & Gal, 2017): one mask for the selected class.

The encoder runs once per image; the selected class's embedding gates the coarsest encoder features
(``f * sigmoid(<f, e_c>)`` at each position, the selector of the paper's model) and the decoder turns the
gated features into the class's mask logits. Without a selector the network gives every class's mask
(``[B, C, H, W]``, the encoder shared, the decoder run once per class), so an exported model answers
``load().explain()`` like any mask network.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from explainer.nets.masknets import ClassifierUNetMaskNet, register_mask_net


@register_mask_net("selector_unet")
class SelectorUNetMaskNet(ClassifierUNetMaskNet):
    """:class:`~explainer.nets.masknets.ClassifierUNetMaskNet` with one mask output and a class selector.

    Args:
        num_classes: the classes a selector may pick.
        backbone: a classifier-factory name whose ``features`` are a ``Sequential`` (the encoder; it can
            start from the classifier's trained features).
        width: decoder channels.
        probe_size: image side used once to find the encoder's resolutions and channels.
    """

    head_prefix = "selector."

    def __init__(self, num_classes: int, backbone: str = "digitnet", width: int = 32, probe_size: int = 64) -> None:
        super().__init__(1, backbone=backbone, width=width, probe_size=probe_size)
        self.num_classes = num_classes
        channels = self.lateral[-1].in_channels
        self.selector = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.selector.weight, 0.0, channels**-0.5)

    def forward(self, x: Tensor, selector: Tensor | None = None) -> Tensor:
        """Mask logits: ``[B, 1, H, W]`` for the classes ``selector`` ``[B]``, or ``[B, C, H, W]`` without.

        Raises:
            ValueError: a selector outside ``[0, num_classes)`` or of another length than the batch.
        """
        outs = self._encode(x)
        skips = [outs[i] for i in self.skip_index]
        batch = x.shape[0]
        if selector is None:  # every class: the encoder's outputs shared, the decoder once per class
            classes = self.num_classes
            selector = torch.arange(classes, device=x.device).repeat(batch)
            skips = [s.repeat_interleave(classes, dim=0) for s in skips]
        else:
            classes = 0
            if selector.shape != (batch,) or selector.is_floating_point():
                raise ValueError(
                    f"the class selector must be [B] integer indices for B={batch} images, got "
                    f"{selector.dtype} of shape {tuple(selector.shape)}"
                )
            if bool(((selector < 0) | (selector >= self.num_classes)).any()):
                bad = selector[(selector < 0) | (selector >= self.num_classes)].unique().tolist()
                raise ValueError(f"class selector(s) {bad} out of range: this network has {self.num_classes} classes")
        coarse = skips[-1]
        embedding = self.selector(selector)[:, :, None, None].to(coarse.dtype)
        gate = torch.sigmoid((coarse * embedding).sum(1, keepdim=True))
        logits = self._decode([*skips[:-1], coarse * gate], x.shape[-2:])
        return logits.view(batch, classes, *logits.shape[-2:]) if classes else logits


__all__ = ["SelectorUNetMaskNet"]

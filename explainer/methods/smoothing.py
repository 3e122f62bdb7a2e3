"""Gaussian smoothing of attribution maps (Rao, Boehle and Schiele, CVPR 2022).

Channel-summed gradient maps (input x gradient, integrated gradients) are noisy at the pixel level;
smoothing them with a Gaussian of kernel size ``K`` and ``sigma = K / 4`` improves their localisation
scores considerably (less so on BatchNorm networks). The kernel is normalised and the borders are
zero-padded, so the total attribution of a map whose mass lies at least ``K // 2`` pixels from the
borders is unchanged.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from explainer.methods.base import AttributionMethod, build_method, method_class, register_method
from explainer.ops import gaussian_kernel1d, separable_conv


def gaussian_smooth(maps: Tensor, kernel_size: int, sigma: float | None = None, padding_mode: str = "zeros") -> Tensor:
    """Smooths maps ``[..., H, W]`` with a normalised ``kernel_size`` Gaussian (``sigma = kernel_size / 4``).

    Args:
        maps: attribution maps with the two spatial dimensions last.
        kernel_size: odd kernel side K (1 returns the maps unchanged).
        sigma: standard deviation; ``None`` gives ``K / 4``.
        padding_mode: ``zeros`` (mass-preserving away from the borders), ``replicate`` or ``reflect``.

    Returns:
        Smoothed maps of the same shape.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if kernel_size == 1:
        return maps
    sigma = kernel_size / 4 if sigma is None else float(sigma)
    kernel = gaussian_kernel1d(sigma, radius=kernel_size // 2, device=maps.device, dtype=maps.dtype)
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w)
    return separable_conv(flat, kernel, padding_mode).reshape(maps.shape)


@register_method
class SmoothedMethod(AttributionMethod):
    """Any attribution method followed by :func:`gaussian_smooth`.

    ``build_method("smooth", classifier, method="integrated_gradients", kernel_size=9, steps=20)`` builds the
    inner method with the remaining options.

    Args:
        classifier: the model explained, passed to the inner method.
        method: the inner method's registry name, or an already built method.
        kernel_size: odd Gaussian kernel side K.
        sigma: standard deviation; ``None`` gives ``K / 4``.
        options: options of the inner method (merged with any extra keyword arguments).
        **kwargs: more options of the inner method.
    """

    name = "smooth"
    value_option = "method"
    wraps_method = True
    cost = "gradients"

    def __init__(
        self,
        classifier: nn.Module | None = None,
        method: str | AttributionMethod = "input_x_gradient",
        kernel_size: int = 9,
        sigma: float | None = None,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(None)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if isinstance(method, AttributionMethod):
            self.inner = method
        else:
            if method_class(method).wraps_method:
                raise ValueError("the method inside 'smooth' must be another method")
            self.inner = build_method(method, classifier, **{**(options or {}), **kwargs})
        self.kernel_size = int(kernel_size)
        self.sigma = sigma
        self.needs_grad = self.inner.needs_grad

    def attribute(self, images: Tensor, classes: Tensor, **kwargs: Any) -> Tensor:
        """The inner method's maps ``[B, K, H, W]``, smoothed (padding classes stay zero)."""
        maps = self.inner(images, classes, **kwargs)
        return gaussian_smooth(maps, self.kernel_size, self.sigma)

"""Attribution methods behind one interface: ``attribute(images, classes) -> maps[B, K, H, W]``.

Importing this package registers every method with :func:`build_method`:

* ``rise``: RISE (:class:`~explainer.methods.rise.RISE`);
* ``fido``, ``bbmp``: mask optimisation with an in-filler (:mod:`explainer.methods.fido`);
* ``gradcam``, ``gradcam++``: class activation maps (:mod:`explainer.methods.cam`);
* ``gradient``, ``input_x_gradient``, ``integrated_gradients``, ``guided_backprop``: gradient methods
  through captum (:mod:`explainer.methods.gradients`);
* ``extremal``: extremal perturbations (:mod:`explainer.methods.extremal`);
* ``centre``, ``uniform``, ``oracle``: references that ignore the classifier (:mod:`explainer.methods.trivial`);
* ``explainer``: a trained Explainer (:mod:`explainer.methods.learned`);
* ``fastshap``: a trained FastSHAP network, Shapley values of grid cells (:mod:`explainer.methods.fastshap`);
* ``smooth``: any method followed by Gaussian smoothing (:mod:`explainer.methods.smoothing`).
"""

from explainer.methods.base import (
    COSTS,
    LAYER_FORMS,
    METHODS,
    AttributionMethod,
    available_methods,
    build_method,
    check_classes,
    method_class,
    register_method,
)
from explainer.methods.cam import GradCAM, GradCAMPlusPlus
from explainer.methods.common import default_cam_layer, layer_by_role
from explainer.methods.extremal import BlurPyramid, ExtremalPerturbation, SmoothMask
from explainer.methods.fastshap import FastSHAPAttribution  # noqa: F401  (registers "fastshap")
from explainer.methods.fido import BBMP, FIDO
from explainer.methods.gradients import Gradient, GuidedBackprop, InputXGradient, IntegratedGradients
from explainer.methods.infill import (
    BlurInfill,
    Infill,
    LocalMeanInfill,
    MeanInfill,
    RandomInfill,
    build_infill,
)
from explainer.methods.learned import (  # noqa: F401  (registers "explainer", "rtsal")
    ExplainerAttribution,
    RealTimeSaliencyAttribution,
)
from explainer.methods.learned_infill import LearnedInfill  # registers build_infill("learned=<folder>")
from explainer.methods.prototypes import PrototypeAttribution  # noqa: F401  (registers "prototypes")
from explainer.methods.rise import RISE, rise_masks
from explainer.methods.smoothing import SmoothedMethod, gaussian_smooth
from explainer.methods.trivial import CentreBaseline, OracleBaseline, UniformBaseline
from explainer.ops import gather_classes, present_classes

__all__ = [
    "COSTS",
    "LAYER_FORMS",
    "METHODS",
    "method_class",
    "BBMP",
    "FIDO",
    "RISE",
    "AttributionMethod",
    "BlurInfill",
    "LearnedInfill",
    "BlurPyramid",
    "CentreBaseline",
    "ExtremalPerturbation",
    "GradCAM",
    "GradCAMPlusPlus",
    "Gradient",
    "GuidedBackprop",
    "Infill",
    "InputXGradient",
    "IntegratedGradients",
    "LocalMeanInfill",
    "MeanInfill",
    "OracleBaseline",
    "RandomInfill",
    "SmoothMask",
    "SmoothedMethod",
    "UniformBaseline",
    "available_methods",
    "build_infill",
    "build_method",
    "check_classes",
    "default_cam_layer",
    "gather_classes",
    "layer_by_role",
    "gaussian_smooth",
    "present_classes",
    "register_method",
    "rise_masks",
]

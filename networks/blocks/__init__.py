"""Parts shared by several networks of this package (and the Keras compatibility layer of the Keras-derived ones).

- :mod:`.attention`: CBAM's channel and spatial gates, multi-head external attention (HEMF).
- :mod:`.filters`: fixed (or learnable) depthwise Gaussian / Laplace filters (E-DU's MDE, FRCU-Net's DoG stack).
- :mod:`.keras_compat`: Keras's BatchNorm constants, initialisers and "same" padding (FRCU-Net, the U-Net family).
- :mod:`.shapes`: TorchScript-compatible input-shape checks and messages (every network's ``forward``).
- :mod:`.squeeze_excitation`: channel squeeze-and-excitation (SE-ESRGAN, ResUNet++, FRCU-Net's level SE).
- :mod:`.xception`: the DeepLabv3+ Xception-65 encoder (FRCU-Net's ``encoder="xception"``).
"""

from .attention import ChannelAttention, MultiHeadExternalAttention, SpatialAttention
from .filters import FixedDepthwiseFilter, gaussian_kernel, opencv_sigma
from .keras_compat import Conv2dSame, keras_glorot_uniform_, keras_he_normal_
from .shapes import divisible_spatial, shape_text, sizes_text
from .squeeze_excitation import SqueezeExcitation, excitation_mlp
from .xception import SeparableConvBN, Xception65, XceptionBlock

__all__ = [
    "ChannelAttention",
    "SpatialAttention",
    "MultiHeadExternalAttention",
    "FixedDepthwiseFilter",
    "gaussian_kernel",
    "opencv_sigma",
    "Conv2dSame",
    "keras_glorot_uniform_",
    "keras_he_normal_",
    "divisible_spatial",
    "shape_text",
    "sizes_text",
    "SqueezeExcitation",
    "excitation_mlp",
    "SeparableConvBN",
    "XceptionBlock",
    "Xception65",
]

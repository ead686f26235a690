"""Parts shared by several networks of this package."""

from .filters import FixedDepthwiseFilter, gaussian_kernel, opencv_sigma
from .keras_compat import Conv2dSame, keras_glorot_uniform_, keras_he_normal_
from .xception import SeparableConvBN, Xception65, XceptionBlock

__all__ = [
    "FixedDepthwiseFilter",
    "gaussian_kernel",
    "opencv_sigma",
    "Conv2dSame",
    "keras_glorot_uniform_",
    "keras_he_normal_",
    "SeparableConvBN",
    "XceptionBlock",
    "Xception65",
]

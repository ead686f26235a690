"""Parts shared by several networks of this package."""

from .filters import FixedDepthwiseFilter, gaussian_kernel, opencv_sigma

__all__ = ["FixedDepthwiseFilter", "gaussian_kernel", "opencv_sigma"]

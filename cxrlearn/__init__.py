"""cxrlearn: chest X-ray classification with PyTorch, built piece by piece to be learned.

Importing the package does nothing but define names: it sets no seed, picks no device,
downloads nothing and prints nothing (house style, section 7). Each concept lives in its
own module (`cxrlearn.contrast`, `cxrlearn.data`, `cxrlearn.resnet`, ...), next to a lesson
in `lessons/`.

This is a teaching tool, not a diagnostic device.
"""

from cxrlearn.errors import CxrlearnError

__version__ = "0.1.0"

__all__ = ["CxrlearnError", "__version__"]

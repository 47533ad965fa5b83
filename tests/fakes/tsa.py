"""The tests' import path for :mod:`mirror.demo.tsa` (one implementation, in the package)."""

import sys

from mirror.demo import tsa as _impl

sys.modules[__name__] = _impl

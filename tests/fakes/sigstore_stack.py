"""The tests' import path for :mod:`mirror.demo.sigstore_stack`: the one implementation ships in
the package, so ``k8s-mirror demo`` runs the very servers the tests run.

The module object itself is re-bound, so every name (also private helpers) and every
monkeypatch refers to the same code whichever import path a test uses.
"""

import sys

from mirror.demo import sigstore_stack as _impl

sys.modules[__name__] = _impl

"""The tests' import path for :mod:`mirror.demo.dlserver`: the one implementation ships in
the package, so ``k8s-mirror demo`` runs the very servers the tests run.

The module object itself is re-bound, so every name (also private helpers) and every
monkeypatch refers to the same code whichever import path a test uses.
"""

import sys

from mirror.demo import dlserver as _impl

if __name__ == "__main__":
    _impl.main()
else:
    sys.modules[__name__] = _impl

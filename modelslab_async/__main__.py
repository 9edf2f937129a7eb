"""``python -m modelslab_async``: the ``modelslab-async`` command line."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())

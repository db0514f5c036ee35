"""tests/chaos reuses the cluster tests' helpers (``clusterkit``) without moving them."""

from __future__ import annotations

import sys
from pathlib import Path

_CLUSTER = str(Path(__file__).resolve().parent.parent / "cluster")
if _CLUSTER not in sys.path:
    sys.path.insert(0, _CLUSTER)

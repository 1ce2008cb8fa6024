"""The compatibility package is opt-in (`pip install -e compat/nemo_gym`, done by `make install`); a checkout
whose venv lacks it still tests it, from the source folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

COMPAT = Path(__file__).resolve().parents[2] / "compat" / "nemo_gym"

if importlib.util.find_spec("nemo_gym") is None:
    sys.path.insert(0, str(COMPAT))

"""The Nemotron-H language model in plain torch: config, model, inference state and checkpoint I/O.

Exports resolve lazily so that `import model.tokenizer` does not pull in torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NemotronHConfig": "model.config",
    "NemotronHForCausalLM": "model.nemotron_h",
    "count_parameters": "model.nemotron_h",
    "StatePool": "model.cache",
    "SlotState": "model.cache",
    "load": "model.loader",
    "save": "model.loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

"""Import zennit without torchvision.

zennit's package ``__init__`` imports ``zennit.torchvision``, which does
``from torchvision.models.resnet import Bottleneck, BasicBlock`` at import time, only to offer canonizers
for torchvision's ResNets. radlens never depends on torchvision (its wheel pulls a CUDA build of torch),
and needs none of those canonizers. So, only when torchvision is absent, we put a stand-in module
``torchvision.models.resnet`` with placeholder ``BasicBlock``/``Bottleneck`` classes into ``sys.modules``
for the duration of zennit's import, and take it out again afterwards so no other library mistakes the
stand-in for a real torchvision.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

_STUB_NAMES = ("torchvision", "torchvision.models", "torchvision.models.resnet")


def _stand_in_torchvision() -> dict[str, types.ModuleType]:
    """Placeholder modules; the block classes are never instantiated, only used in ``isinstance``."""
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock:  # placeholder: no real model is ever an instance of it
        """Stand-in for torchvision's ResNet BasicBlock."""

    class Bottleneck:  # placeholder: no real model is ever an instance of it
        """Stand-in for torchvision's ResNet Bottleneck."""

    resnet.BasicBlock = BasicBlock  # type: ignore[attr-defined]
    resnet.Bottleneck = Bottleneck  # type: ignore[attr-defined]
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet  # type: ignore[attr-defined]
    root = types.ModuleType("torchvision")
    root.models = models  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.models": models, "torchvision.models.resnet": resnet}


def import_zennit() -> Any:
    """Import and return the ``zennit`` package, shimming torchvision only if it is not installed."""
    if "zennit" in sys.modules:
        return sys.modules["zennit"]
    if importlib.util.find_spec("torchvision") is not None:
        import zennit

        return zennit
    stubs = _stand_in_torchvision()
    sys.modules.update(stubs)
    try:
        import zennit
    finally:
        for name in _STUB_NAMES:
            if sys.modules.get(name) is stubs[name]:
                del sys.modules[name]
    return zennit

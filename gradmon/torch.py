"""``gradmon.torch``: monitor PyTorch training loops (optional extra: ``pip install "gradmon[torch]"``).

>>> import gradmon.torch                                                        # doctest: +SKIP
>>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1")   # doctest: +SKIP
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:
    raise ImportError("gradmon.torch needs PyTorch, which is an optional extra: install the CPU build with "
                      "`pip install torch==2.13.0` (or any torch), or `pip install \"gradmon[torch]\"`") from exc

from gradmon.adapters.torch import TorchObjective, Watcher, layer_infos, watch

__all__ = ["TorchObjective", "Watcher", "layer_infos", "watch"]

"""``gradmon.torch``: monitor PyTorch training loops (optional extra: ``pip install "gradmon[torch]"``).

>>> import gradmon.torch                                                        # doctest: +SKIP
>>> watcher = gradmon.torch.watch(model, optimizer=opt, logdir="runs/torch1",   # doctest: +SKIP
...                               loss_fn=torch.nn.functional.cross_entropy)
>>> # in the loop, after opt.step():  watcher.log_loss(loss, target=y)         # doctest: +SKIP
>>> report = watcher.report(); watcher.close()                                  # doctest: +SKIP

``gradmon.torch.curvature(model, loss_fn, (x, y))`` measures a model's curvature in one call
(:mod:`gradmon.adapters.torch_curvature`).  See :mod:`gradmon.adapters.torch` for what is read where (units
from modules, activations from modules and functions, pre-clip gradient norms on the device, curvature on a
probe or the last batch, data-parallel runs).
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:
    raise ImportError("gradmon.torch needs PyTorch, which is an optional extra: install the CPU build with "
                      "`pip install torch==2.13.0` (or any torch), or `pip install \"gradmon[torch]\"`") from exc

from gradmon.adapters.torch import TorchObjective, Watcher, display_names, layer_infos, watch
from gradmon.adapters.torch_curvature import curvature

__all__ = ["TorchObjective", "Watcher", "curvature", "display_names", "layer_infos", "watch"]

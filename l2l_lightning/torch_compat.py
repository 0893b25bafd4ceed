"""Every private torch name l2l_lightning uses, kept together (the torch twin of ``lightning_compat.py``).

No public API does these jobs in torch 2.x:

* :func:`tree_map`: ``torch.utils._pytree.tree_map`` maps over nested states (the routed
  nets' tuples, the LSTM's ``[(h, c)]``); torch has no public pytree module yet.  Taken
  from ``torch.utils.pytree`` once torch ships it.
* :func:`functorch_transforms_active`: whether a ``vmap``/``grad`` transform is running, so
  the LSTM cell uses plain differentiable ops there (a custom autograd node cannot be
  vmapped); ``torch._C._are_functorch_transforms_active``.
* :func:`onednn_linear`: oneDNN's ``x @ weight.T + bias``
  (``torch.ops.mkldnn._linear_pointwise``), 2-3× faster than MKL's GEMM for the LSTM's
  skinny float32 products on CPU.
* :func:`foreach_add_`: ``torch._foreach_add_``, the multi-tensor add torch's own
  optimizers use (one kernel launch for all parameters).

``tests/test_torch_compat.py`` checks each against the installed torch and fails loudly,
naming this module, when torch changes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

try:  # the public name, where this torch has it
    from torch.utils.pytree import tree_map  # type: ignore[import-not-found]
except ImportError:
    from torch.utils._pytree import tree_map

__all__ = ["foreach_add_", "functorch_transforms_active", "onednn_linear", "tree_map"]

_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def functorch_transforms_active() -> bool:
    """Whether a functorch transform (``vmap``, ``grad``, ``jacrev``) is running (``False`` if torch cannot tell)."""
    return bool(_functorch_active())


def onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``x @ weight.T + bias`` through oneDNN; raises ``AttributeError``/``RuntimeError`` where it is missing."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def foreach_add_(tensors: Sequence[Tensor], other: Any, alpha: Optional[float] = None) -> None:
    """``t += alpha · other`` for every tensor (``other``: a list of tensors, or one 0-d tensor for all)."""
    if alpha is not None:
        torch._foreach_add_(tensors, other, alpha=alpha)
        return
    try:
        torch._foreach_add_(tensors, other)
    except (RuntimeError, TypeError):  # a build without the tensor-scalar overload
        for tensor in tensors:
            tensor.add_(other)

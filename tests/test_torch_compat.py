"""The torch internals l2l_lightning relies on (``l2l_lightning/torch_compat.py``) still behave as assumed.

If one of these fails after a torch upgrade, fix ``l2l_lightning/torch_compat.py`` (and only it).
"""

from __future__ import annotations

import torch

from l2l_lightning import torch_compat


def test_tree_map_maps_nested_states():
    state = ((torch.ones(2), torch.zeros(1)), [torch.full((3,), 2.0)])
    doubled = torch_compat.tree_map(lambda t: t * 2, state)
    assert isinstance(doubled, tuple) and isinstance(doubled[1], list), "update l2l_lightning/torch_compat.py"
    assert torch.equal(doubled[1][0], torch.full((3,), 4.0))


def test_functorch_transforms_active_sees_vmap():
    assert hasattr(torch._C, "_are_functorch_transforms_active"), (
        "torch._C._are_functorch_transforms_active is gone: the LSTM cell cannot tell vmap apart; "
        "update l2l_lightning/torch_compat.py"
    )
    assert not torch_compat.functorch_transforms_active()
    seen = []
    torch.vmap(lambda x: seen.append(torch_compat.functorch_transforms_active()) or x)(torch.ones(2, 1))
    assert seen == [True]


def test_onednn_linear_computes_a_linear_map_where_this_build_has_onednn():
    x, weight, bias = torch.randn(5, 3), torch.randn(4, 3), torch.randn(4)
    if not torch.backends.mkldnn.is_available():
        return  # the LSTM falls back to addmm there, by design
    assert hasattr(torch.ops.mkldnn, "_linear_pointwise"), (
        "torch.ops.mkldnn._linear_pointwise is gone: the LSTM's CPU products fall back to MKL (2-3x slower); "
        "update l2l_lightning/torch_compat.py"
    )
    torch.testing.assert_close(torch_compat.onednn_linear(x, weight, bias), torch.addmm(bias, x, weight.t()))


def test_foreach_add_adds_in_place():
    a, b = torch.zeros(2), torch.ones(3)
    torch_compat.foreach_add_([a, b], [torch.ones(2), torch.ones(3)], alpha=0.5)
    assert torch.equal(a, torch.full((2,), 0.5)) and torch.equal(b, torch.full((3,), 1.5))
    step = torch.zeros((), dtype=torch.int64)
    torch_compat.foreach_add_([step], torch.ones((), dtype=torch.int64))
    assert int(step) == 1

import math

import pytest
import torch

from l2l_lightning import ConfigError, CoordinatewiseLSTM
from l2l_lightning.nets.preprocessing import preprocess

P = 10.0
T = math.exp(-P)  # the log_sign threshold


def test_none_is_the_raw_gradient():
    g = torch.tensor([-2.0, 0.0, 3e-9])
    assert torch.equal(preprocess(g, "none", P), g[:, None])


def test_log_sign_large_branch():
    g = torch.tensor([1.0, -math.e, 2 * T], dtype=torch.float64)
    out = preprocess(g, "log_sign", P)
    expected = torch.tensor([[0.0, 1.0], [1 / P, -1.0], [math.log(2 * T) / P, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_log_sign_small_branch():
    g = torch.tensor([0.5 * T, -0.25 * T, 0.0], dtype=torch.float64)
    out = preprocess(g, "log_sign", P)
    expected = torch.tensor([[-1.0, 0.5], [-1.0, -0.25], [-1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_log_sign_at_threshold_takes_the_log_branch_and_is_continuous():
    g = torch.tensor([T, T * (1 - 1e-12)], dtype=torch.float64)
    at, below = preprocess(g, "log_sign", P)
    torch.testing.assert_close(at, torch.tensor([-1.0, 1.0], dtype=torch.float64))  # log(e^-p)/p = -1, sign 1
    torch.testing.assert_close(below, at, atol=1e-9, rtol=0)  # (-1, e^p g) meets it


def test_clamped_matches_the_authors_formula():
    p = 5.0
    g = torch.tensor([10.0, -1e-1, 1e-9, 0.0], dtype=torch.float64)
    out = preprocess(g, "clamped", p)
    eps = torch.finfo(torch.float64).eps
    magnitude = ((g.abs() + eps).log() / p).clamp_min(-1)
    direction = (g * math.exp(p)).clamp(-1, 1)
    torch.testing.assert_close(out, torch.stack([magnitude, direction], 1))
    assert out[2, 0] == -1 and out[0, 1] == 1 and out[1, 1] == -1 and abs(out[2, 1]) < 1


@pytest.mark.parametrize("name", ["log_sign", "clamped"])
def test_second_derivatives_are_finite_at_zero(name):
    g = torch.tensor([0.0, 1e-20, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(preprocess(g, name, P).sum(), g)
    assert torch.isfinite(grad).all()


def test_unknown_name_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"preprocess='logsign'.*'none', 'log_sign', 'clamped'"):
        CoordinatewiseLSTM(preprocess="logsign")


@pytest.mark.parametrize("p", [0, -1.0, float("nan")])
def test_bad_p(p):
    with pytest.raises(ConfigError, match="p="):
        CoordinatewiseLSTM(p=p)

import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM


@pytest.mark.parametrize("n", [0, 1, 7, 1000])
@pytest.mark.parametrize("preprocess", ["none", "log_sign", "clamped"])
def test_shapes(n, preprocess):
    net = CoordinatewiseLSTM(preprocess=preprocess)
    state = net.init_state(n)
    assert state.shape == (2, 2, n, 20) and state.dtype == torch.float32 and not state.any()
    update, new_state = net(torch.randn(n), state)
    assert update.shape == (n,) and new_state.shape == state.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_update_follows_grad_dtype_and_state_keeps_its_own(dtype):
    net = CoordinatewiseLSTM()
    state = net.init_state(5, dtype=torch.bfloat16)
    update, new_state = net(torch.randn(5, dtype=dtype), state)
    assert update.dtype == dtype and new_state.dtype == torch.bfloat16
    assert torch.isfinite(update).all()


def test_float64_is_computed_in_float64():
    net = CoordinatewiseLSTM(preprocess="none")
    g = torch.randn(50, dtype=torch.float64)
    u64, _ = net(g, net.init_state(50, dtype=torch.float64))
    u32, _ = net.double()(g, net.init_state(50, dtype=torch.float64))
    torch.testing.assert_close(u64, u32, rtol=0, atol=0)


def test_matches_a_stack_of_torch_lstm_cells():
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=8, num_layers=2, preprocess="log_sign", output_scale=0.1)
    cells = [nn.LSTMCell(2, 8), nn.LSTMCell(8, 8)]
    with torch.no_grad():
        for cell, fused in zip(cells, net.cells):
            fused.weight.copy_(torch.cat([cell.weight_ih, cell.weight_hh], 1))
            fused.bias.copy_(cell.bias_ih + cell.bias_hh)
    g = torch.randn(33)
    state = net.init_state(33)
    for _ in range(3):  # several steps so the state path is exercised too
        update, state_next = net(g, state)
        big = g.abs() >= torch.exp(torch.tensor(-10.0))
        x = torch.stack([torch.where(big, g.abs().log() / 10, -1.0), g.sign()], 1)  # the paper's rule, by hand
        hc = []
        for layer, cell in enumerate(cells):
            h, c = cell(x, (state[layer, 0], state[layer, 1]))
            hc += [h, c]
            x = h
        expected = net.output(x).squeeze(1) * 0.1
        torch.testing.assert_close(update, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state_next, torch.stack(hc).view_as(state), rtol=1e-5, atol=1e-6)
        state, g = state_next, torch.randn(33)


def test_weights_are_shared_across_coordinates():
    net = CoordinatewiseLSTM()
    g = torch.randn(10)
    full, _ = net(g, net.init_state(10))
    one, _ = net(g[3:4], net.init_state(1))
    torch.testing.assert_close(full[3:4], one)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_size=0), "hidden_size=0 must be a positive integer"),
        (dict(num_layers=-1), "num_layers=-1"),
        (dict(output_scale=0.0), "output_scale"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CoordinatewiseLSTM(**kwargs)


def test_bad_inputs():
    net = CoordinatewiseLSTM()
    with pytest.raises(ValueError, match="1-D"):
        net(torch.randn(2, 3), net.init_state(6))
    with pytest.raises(ValueError, match="init_state"):
        net(torch.randn(4), net.init_state(5))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.ones(4, dtype=torch.long), net.init_state(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net = CoordinatewiseLSTM()
    g = torch.randn(1000)
    cpu, _ = net(g, net.init_state(1000))
    gpu, _ = net.cuda()(g.cuda(), net.init_state(1000, device="cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6)

import pytest
import torch
from torch import nn

from l2l_lightning import ConfigError, CoordinatewiseLSTM
from l2l_lightning.optim.runtime import StepOptions, step_inplace


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


# ------------------------------------------------------------------ fast paths
def _grads(n, seed):
    """Gradients over many magnitudes (both log_sign branches), with exact zeros."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(n, generator=generator) * torch.exp(torch.randn(n, generator=generator) * 4) * 1e-3
    g[::17] = 0.0
    return g


def _assert_same_function(actual, expected, rtol=1e-5):
    """Within ``rtol`` relative to the tensor's scale: a near-zero entry is a difference of
    two O(1) numbers, so element-wise relative error is not meaningful there."""
    scale = expected.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale.item())


@pytest.mark.parametrize("preprocess", ["none", "log_sign", "clamped"])
@pytest.mark.parametrize("n", [1, 5, 63, 64, 65, 200, 4099])
def test_step_inplace_computes_forward(preprocess, n):
    torch.manual_seed(n)
    net = CoordinatewiseLSTM(preprocess=preprocess, output_scale=0.1)
    state = net.init_state(n)
    for step in range(3):  # from the zero state, then from states that step_inplace itself produced
        grad = _grads(n, seed=step)
        with torch.no_grad():
            expected_update, expected_state = net(grad, state)
        for chunk_size in (1, 7, 64, 1000) if n <= 200 else (64, 1000, 4096):
            new_state = state.clone()
            update = step_inplace(net, grad, new_state, options=StepOptions(chunk_size=chunk_size))
            _assert_same_function(update, expected_update)
            _assert_same_function(new_state, expected_state)
        state = new_state


@pytest.mark.parametrize("sizes", [[1], [3, 0, 5], [64, 64], [100, 1, 37, 200], [130]])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_step_inplace_over_one_state_per_parameter(sizes, state_dtype):
    """Chunks that straddle parameters (gathered) and chunks inside one (in place) alike."""
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign")
    n = sum(sizes)
    full = (torch.randn(net.state_shape(n)) * 0.5).to(state_dtype)
    grad = _grads(n, seed=1)
    with torch.no_grad():
        expected_update, expected_state = net(grad, full)
    states = [s.clone() for s in full.split(sizes, dim=2)]
    update = step_inplace(net, grad, states, options=StepOptions(chunk_size=32))
    _assert_same_function(update, expected_update)
    new_state = torch.cat(states, dim=2)
    assert new_state.dtype == state_dtype
    if state_dtype == torch.bfloat16:  # both round the same float32 result: at most one bf16 ulp apart
        torch.testing.assert_close(new_state.float(), expected_state.float(), rtol=2**-7, atol=1e-6)
    else:
        _assert_same_function(new_state, expected_state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_step_inplace_follows_the_grad_dtype(dtype):
    net = CoordinatewiseLSTM()
    grad = _grads(300, seed=0).to(dtype)
    state = net.init_state(300)
    with torch.no_grad():
        expected_update, expected_state = net(grad, state)
    update = step_inplace(net, grad, state, options=StepOptions(chunk_size=64))
    assert update.dtype == dtype and state.dtype == torch.float32
    _assert_same_function(update.double(), expected_update.double(), rtol=1e-12 if dtype == torch.float64 else 1e-2)
    _assert_same_function(state, expected_state)


def test_step_inplace_keep_flag_and_out_buffer():
    net = CoordinatewiseLSTM()
    grad = _grads(50, seed=0)
    state = torch.randn(net.state_shape(50))
    before = state.clone()
    out = torch.empty(50)
    assert step_inplace(net, grad, state, out=out, options=StepOptions(chunk_size=16), keep=torch.tensor(False)) is out
    assert torch.equal(state, before)  # decided on the device: nothing written
    step_inplace(net, grad, state, out=out, options=StepOptions(chunk_size=16), keep=torch.tensor(True))
    reference = before.clone()
    torch.testing.assert_close(out, step_inplace(net, grad, reference, options=StepOptions(chunk_size=16)), rtol=0, atol=0)
    torch.testing.assert_close(state, reference, rtol=0, atol=0)


def test_step_inplace_resets_the_state_of_coordinates_whose_update_is_not_finite():
    net = CoordinatewiseLSTM(hidden_size=4)
    with torch.no_grad():
        net.output.weight.fill_(1e38)
        net.output.bias.fill_(3.4e38)  # overflows exactly where Σh > 0
    state = torch.randn(net.state_shape(40))
    update = step_inplace(net, _grads(40, seed=0), state, options=StepOptions(chunk_size=16))
    bad = ~torch.isfinite(update)
    assert 0 < bad.sum() < 40
    assert not state[:, :, bad].any() and state[:, :, ~bad].abs().sum(dim=(0, 1, 3)).gt(0).all()


@pytest.mark.parametrize("chunk_size", [0, -4, 2.5, True, "8"])
def test_a_chunk_size_that_is_not_a_positive_integer_is_a_config_error(chunk_size):
    net = CoordinatewiseLSTM()
    with pytest.raises(ConfigError, match="chunk_size"):
        step_inplace(net, torch.ones(3), net.init_state(3), options=StepOptions(chunk_size=chunk_size))


def test_step_inplace_bad_inputs():
    net = CoordinatewiseLSTM()
    with pytest.raises(ValueError, match=r"shape \(2, 2, 5, 20\), expected \(2, 2, 4, 20\)"):
        step_inplace(net, torch.ones(4), net.init_state(5))
    with pytest.raises(ValueError, match="expected"):
        step_inplace(net, torch.ones(4), torch.zeros(2, 2, 4, 3))
    assert step_inplace(net, torch.ones(0), [net.init_state(0)]).shape == (0,)


def test_forward_split_is_forward_without_the_stacked_state():
    net = CoordinatewiseLSTM()
    grad, state = _grads(30, seed=0), torch.randn(net.state_shape(30))
    update, new_state = net(grad, state)
    split_update, layers = net.forward_split(grad, net.split_state(state))
    assert torch.equal(update, split_update) and torch.equal(new_state, net.join_state(layers))


def test_the_cell_in_place_and_with_new_tensors_is_one_function():
    """The deployment kernel's aliasing (``c`` updated in place, ``h`` over ``tanh c``) and the
    new-tensor form give the same cell, and the new-tensor form touches none of its inputs."""
    from l2l_lightning.nets.lstm_kernel import CellBuffers, cell, gate_weights

    torch.manual_seed(0)
    rows, hidden = 37, 20
    lstm = nn.LSTMCell(2, hidden)
    weight = torch.cat([lstm.weight_ih, lstm.weight_hh], 1).detach()
    weight, bias = gate_weights(weight, (lstm.bias_ih + lstm.bias_hh).detach(), hidden)
    x, h, c = torch.randn(rows, 2), torch.randn(rows, hidden), torch.randn(rows, hidden)
    xh = torch.cat((x, h), 1)
    xh_before, c_before = xh.clone(), c.clone()
    new = cell(xh, weight, bias, c, hidden)
    assert torch.equal(xh, xh_before) and torch.equal(c, c_before)
    expected_h, expected_c = lstm(x, (h, c))
    torch.testing.assert_close(new.h, expected_h.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new.c, expected_c.detach(), rtol=1e-5, atol=1e-6)

    state_c, state_h = c.clone(), torch.empty(rows, hidden)
    inplace = cell(xh.clone(), weight, bias, state_c, hidden, CellBuffers(state_c, state_h, state_h))
    assert inplace.c is state_c and inplace.h is state_h  # written where the caller said
    for name in ("h", "c", "g"):  # (``s``'s g columns now hold ``g``: the kernel's saving of a buffer)
        torch.testing.assert_close(getattr(inplace, name), getattr(new, name), rtol=1e-6, atol=1e-6)


def test_the_fused_cell_backward_is_the_true_gradient():
    from l2l_lightning.nets.lstm import _LSTMCellFunction

    torch.manual_seed(0)
    rows, hidden = 6, 3
    x = torch.randn(rows, 2, dtype=torch.float64)
    h, c = torch.randn(rows, hidden, dtype=torch.float64), torch.randn(rows, hidden, dtype=torch.float64)
    weight = torch.randn(4 * hidden, 2 + hidden, dtype=torch.float64)
    bias = torch.randn(4 * hidden, dtype=torch.float64)
    patterns = ([True] * 5, [False, True, True, True, True], [False, False, False, True, True], [True, False, True, False, False])
    for needs in patterns:
        inputs = [t.clone().requires_grad_(r) for t, r in zip((x, h, c, weight, bias), needs)]
        assert torch.autograd.gradcheck(_LSTMCellFunction.apply, inputs)
    # only one of the outputs used (the other's gradient is None inside backward)
    inputs = [t.clone().requires_grad_(True) for t in (x, h, c, weight, bias)]
    assert torch.autograd.gradcheck(lambda *a: _LSTMCellFunction.apply(*a)[0], inputs)
    assert torch.autograd.gradcheck(lambda *a: _LSTMCellFunction.apply(*a)[1], inputs)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    from l2l_lightning.optim import runtime

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler on this platform")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(runtime, "_RUNNERS", {})
    net = CoordinatewiseLSTM()
    grad = _grads(100, seed=0)
    reference_state = net.init_state(100)
    reference = step_inplace(net, grad, reference_state, options=StepOptions(chunk_size=32))
    state = net.init_state(100)
    with pytest.warns(RuntimeWarning, match="falling back to eager") as record:
        update = step_inplace(net, grad, state, options=StepOptions(chunk_size=32, compile=True))
        step_inplace(net, grad, net.init_state(100), options=StepOptions(chunk_size=32, compile=True))
    assert len(record) == 1
    assert torch.equal(update, reference) and torch.equal(state, reference_state)


@pytest.mark.slow
def test_compiled_step_computes_the_eager_step():
    """A real torch.compile (inductor needs a C++ compiler on CPU): ~10-30 s, so one tiny case."""
    import warnings

    net = CoordinatewiseLSTM(preprocess="log_sign")
    grad = _grads(100, seed=0)
    eager_state, compiled_state = net.init_state(100), net.init_state(100)
    eager = step_inplace(net, grad, eager_state, options=StepOptions(chunk_size=64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would hide a broken compiled path
        compiled = step_inplace(net, grad, compiled_state, options=StepOptions(chunk_size=64, compile=True))
    _assert_same_function(compiled, eager)
    _assert_same_function(compiled_state, eager_state)


def test_step_inplace_shares_chunks_over_threads_with_the_same_result():
    """On CPU chunks run single-threaded on torch.get_num_threads() threads: same numbers as one thread."""
    net = CoordinatewiseLSTM()
    sizes = [700, 3, 1500, 64]
    grad = _grads(sum(sizes), seed=0)
    start = torch.randn(net.state_shape(sum(sizes)))
    one_states = [s.clone() for s in start.split(sizes, dim=2)]
    one = step_inplace(net, grad, one_states, options=StepOptions(chunk_size=128))
    torch.set_num_threads(3)  # restored by the autouse fixture
    many_states = [s.clone() for s in start.split(sizes, dim=2)]
    many = step_inplace(net, grad, many_states, options=StepOptions(chunk_size=128))
    assert torch.get_num_threads() == 3
    assert torch.equal(one, many) and all(torch.equal(a, b) for a, b in zip(one_states, many_states))


def test_the_net_works_under_torch_func_transforms():
    """Inside vmap/grad the cells use plain differentiable ops (a custom autograd node cannot be vmapped)."""
    net = CoordinatewiseLSTM(hidden_size=6)
    grads = torch.randn(3, 10)
    state = net.init_state(10)
    batched, _ = torch.func.vmap(lambda g: net(g, state))(grads)
    for k in range(3):
        torch.testing.assert_close(batched[k], net(grads[k], state)[0], rtol=1e-5, atol=1e-7)
    params = dict(net.named_parameters())

    def total(p):
        return torch.func.functional_call(net, p, (grads[0], state))[0].sum()

    torch.testing.assert_close(torch.func.grad(total)(params)["output.bias"], torch.tensor([10.0 * net.output_scale]))

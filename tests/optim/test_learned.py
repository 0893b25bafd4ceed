"""LearnedOptimizer as a torch optimizer: the step, groups, failures and state dicts."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn

from l2l_lightning import CheckpointError, ConfigError, CoordinatewiseLSTM, LearnedOptimizer, UnsupportedGradientError
from l2l_lightning.optim import SkippedStepWarning, learned


def make_params(*shapes, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(tuple(shape), generator=generator, dtype=dtype)) for shape in shapes]


def set_grads(params, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)


def snapshot(opt, params):
    return (
        [p.detach().clone() for p in params],
        {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()},
    )


def assert_same_snapshot(a, b):
    params_a, state_a = a
    params_b, state_b = b
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b))
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].keys() == state_b[key].keys()
        for name in state_a[key]:
            x, y = state_a[key][name], state_b[key][name]
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y


# ------------------------------------------------------------------ the step
def test_step_applies_the_nets_update_and_keeps_per_parameter_state(small_net):
    (p,) = make_params((3, 4))
    before = p.detach().clone()
    opt = LearnedOptimizer([p], checkpoint=small_net)
    for step in range(1, 4):
        set_grads([p], seed=step)
        state = opt.state[p]["net_state"] if opt.state[p] else small_net.init_state(12)
        with torch.no_grad():
            expected_update, expected_state = small_net(p.grad.reshape(-1), state)
        before = p.detach().clone()
        opt.step()
        assert torch.equal(p.detach(), before + expected_update.view(3, 4))
        assert torch.equal(opt.state[p]["net_state"], expected_state)
        assert opt.state[p]["net_state"].shape == (2, 2, 12, 8)
        assert opt.state[p]["step"] == step
    assert not torch.equal(p.detach(), make_params((3, 4))[0])


def test_one_flat_pass_equals_stepping_each_parameter_alone(small_net):
    shapes = ((5,), (2, 3), (4, 1, 2), ())
    together = make_params(*shapes)
    alone = [make_params(*shapes)[i] for i in range(len(shapes))]
    opt = LearnedOptimizer(together, checkpoint=small_net)
    solo = [LearnedOptimizer([p], checkpoint=small_net) for p in alone]
    for step in range(3):
        set_grads(together, seed=step)
        set_grads(alone, seed=step)
        opt.step()
        for o in solo:
            o.step()
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        (alone_opt,) = [o for o in solo if b in o.state]
        torch.testing.assert_close(opt.state[a]["net_state"], alone_opt.state[b]["net_state"], rtol=0, atol=1e-6)


def test_lr_multiplies_the_update_and_schedulers_change_it(small_net):
    p1, p2 = make_params((10,)), make_params((10,))
    full = LearnedOptimizer(p1, checkpoint=small_net, lr=1.0)
    half = LearnedOptimizer(p2, checkpoint=small_net, lr=0.5)
    start = p1[0].detach().clone()
    set_grads(p1)
    set_grads(p2)
    full.step()
    half.step()
    torch.testing.assert_close(p2[0] - start, 0.5 * (p1[0] - start))

    (p,) = make_params((10,))
    opt = LearnedOptimizer([p], checkpoint=small_net, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    set_grads([p])
    opt.step()
    scheduler.step()
    assert opt.param_groups[0]["lr"] == 0.0
    frozen = p.detach().clone()
    set_grads([p], seed=7)
    opt.step()
    assert torch.equal(p.detach(), frozen)  # lr 0: no move ...
    assert opt.state[p]["step"] == 2  # ... but the LSTM state still advanced, as it should


def test_parameters_without_gradient_are_skipped_and_keep_their_state(small_net):
    a, b = make_params((4,), (6,))
    opt = LearnedOptimizer([a, b], checkpoint=small_net)
    set_grads([a, b])
    opt.step()
    b_state, b_value = opt.state[b]["net_state"].clone(), b.detach().clone()
    a.grad, b.grad = torch.ones(4), None
    opt.step()
    assert opt.state[a]["step"] == 2 and opt.state[b]["step"] == 1
    assert torch.equal(opt.state[b]["net_state"], b_state) and torch.equal(b.detach(), b_value)
    (c,) = make_params((3,))
    fresh = LearnedOptimizer([c], checkpoint=small_net)
    fresh.step()
    assert len(fresh.state) == 0  # no gradient anywhere: nothing created


def test_closure_contract(small_net):
    (p,) = make_params((5,))
    opt = LearnedOptimizer([p], checkpoint=small_net)
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert calls == [True]
    assert torch.is_tensor(loss) and loss.item() > 0
    assert opt.state[p]["step"] == 1
    opt.zero_grad()
    assert p.grad is None


def test_add_param_group_and_per_group_settings(small_net):
    a, b = make_params((4,), (5,))
    opt = LearnedOptimizer([a], checkpoint=small_net, lr=0.5)
    opt.add_param_group({"params": [b], "lr": 0.25, "state_dtype": torch.bfloat16})
    assert opt.param_groups[1]["state_dtype"] == "bfloat16"  # stored by name: state dicts stay plain
    assert opt.param_groups[0]["state_dtype"] == "float32"
    set_grads([a, b])
    opt.step()
    assert opt.state[a]["net_state"].dtype == torch.float32
    assert opt.state[b]["net_state"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ConfigError, match="state_dtype"):
        opt.add_param_group({"params": make_params((2,)), "state_dtype": "int8"})
    with pytest.raises(ConfigError, match="lr"):
        LearnedOptimizer(make_params((2,)), checkpoint=small_net, lr=-1.0)


def test_bfloat16_state_halves_memory_and_tracks_float32(small_net):
    p32, p16 = make_params((1000,)), make_params((1000,))
    opt32 = LearnedOptimizer(p32, checkpoint=small_net)
    opt16 = LearnedOptimizer(p16, checkpoint=small_net, state_dtype="bfloat16")
    for step in range(5):
        set_grads(p32, seed=step)
        set_grads(p16, seed=step)
        opt32.step()
        opt16.step()
    s32, s16 = opt32.state[p32[0]]["net_state"], opt16.state[p16[0]]["net_state"]
    assert s16.dtype == torch.bfloat16 and s16.nbytes * 2 == s32.nbytes
    torch.testing.assert_close(s16.float(), s32, rtol=0.05, atol=0.02)
    torch.testing.assert_close(p16[0], p32[0], rtol=0, atol=1e-3)


def test_changing_a_groups_state_dtype_converts_its_states_at_the_next_step(small_net):
    (p,) = make_params((6,))
    opt = LearnedOptimizer([p], checkpoint=small_net)
    train(opt, [p], 1, seed=0)
    assert opt.state[p]["net_state"].dtype == torch.float32
    opt.param_groups[0]["state_dtype"] = "bfloat16"
    train(opt, [p], 1, seed=1)
    assert opt.state[p]["net_state"].dtype == torch.bfloat16


def test_float64_and_bfloat16_parameters(small_net):
    (p64,) = make_params((6,), dtype=torch.float64)
    (p16,) = make_params((6,), dtype=torch.bfloat16)
    opt = LearnedOptimizer([p64, p16], checkpoint=small_net)
    for step in range(2):
        set_grads([p64, p16], seed=step)
        opt.step()
    assert p64.dtype == torch.float64 and p16.dtype == torch.bfloat16
    assert opt.state[p64]["net_state"].dtype == torch.float32  # the state dtype is the setting, not the param's
    # one net copy per (device, dtype): float64 for the float64 param, the float32 net for bf16
    assert sorted(str(dtype) for _, dtype in opt._nets) == ["torch.float32", "torch.float64"]
    cached = dict(opt._nets)
    set_grads([p64, p16], seed=9)
    opt.step()
    assert all(opt._nets[key] is net for key, net in cached.items())


def test_the_optimizer_owns_a_copy_of_the_net(small_net):
    (p,), (q,) = make_params((8,)), make_params((8,))
    opt = LearnedOptimizer([p], checkpoint=small_net)
    reference = LearnedOptimizer([q], checkpoint=copy.deepcopy(small_net))
    with torch.no_grad():
        small_net.output.bias.add_(1.0)  # changing the caller's net must not reach the optimizer
    set_grads([p])
    set_grads([q])
    opt.step()
    reference.step()
    assert torch.equal(p.detach(), q.detach())
    assert not any(t.requires_grad for t in opt.net.parameters())


# ------------------------------------------------------------------ failures
def test_non_finite_gradient_skips_the_whole_step(small_net):
    a, b = make_params((4,), (3, 3))
    opt = LearnedOptimizer([a, b], checkpoint=small_net)
    set_grads([a, b])
    opt.step()
    before = snapshot(opt, [a, b])
    for bad in (float("nan"), float("inf"), -float("inf")):
        set_grads([a, b], seed=3)
        b.grad[1, 2] = bad  # one bad coordinate in one parameter: a (finite) must not move either
        with pytest.warns(SkippedStepWarning, match="skipped for all parameters"):
            opt.step()
        assert_same_snapshot(before, snapshot(opt, [a, b]))
    # first step non-finite: no state is created at all
    (c,) = make_params((2,))
    fresh = LearnedOptimizer([c], checkpoint=small_net)
    c.grad = torch.tensor([1.0, float("nan")])
    with pytest.warns(SkippedStepWarning):
        fresh.step()
    assert len(fresh.state) == 0
    c.grad = torch.tensor([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.step()
    assert fresh.state[c]["step"] == 1


def test_non_finite_update_from_finite_gradients_is_skipped_too(small_net):
    with torch.no_grad():
        small_net.output.bias.fill_(float("inf"))
    (p,) = make_params((4,))
    opt = LearnedOptimizer([p], checkpoint=small_net)
    before = p.detach().clone()
    set_grads([p])
    with pytest.warns(SkippedStepWarning, match="non-finite update.*reset to zeros"):
        opt.step()
    # no parameter moves; the states were advanced in place, and every coordinate's update
    # was non-finite, so every state is back at zero (a fresh start), and the pass is counted
    assert torch.equal(p.detach(), before)
    assert not opt.state[p]["net_state"].any() and opt.state[p]["step"] == 1


def test_a_diverging_net_resets_exactly_the_states_of_its_non_finite_coordinates(small_net):
    """States are updated in place (no second copy), so only the diverged rows can be reset."""
    a, b = make_params((300,), (7, 11))
    opt = LearnedOptimizer([a, b], checkpoint=small_net, chunk_size=64)
    train(opt, [a, b], 2, seed=0)
    states = torch.cat([opt.state[q]["net_state"] for q in (a, b)], dim=2)
    set_grads([a, b], seed=5)
    grad = torch.cat([a.grad.reshape(-1), b.grad.reshape(-1)])
    with torch.no_grad():
        _, expected_state = opt.net(grad, states)
        # the output layer does not feed the state: make it overflow for the half of the
        # coordinates with the largest Σh (output = 1e38 · Σh + bias > float32 max there)
        total = expected_state[-1, 0].sum(1)
        opt.net.output.weight.fill_(1e38)
        opt.net.output.bias.fill_(3.4e38 - 1e38 * total.median().item())
        opt._nets.clear()
        expected_update, _ = opt.net(grad, states)
    bad = ~torch.isfinite(expected_update)
    assert 0 < bad.sum() < bad.numel()
    before = [a.detach().clone(), b.detach().clone()]
    with pytest.warns(SkippedStepWarning, match="reset to zeros"):
        opt.step()
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    new_state = torch.cat([opt.state[q]["net_state"] for q in (a, b)], dim=2)
    assert not new_state[:, :, bad].any()
    torch.testing.assert_close(new_state[:, :, ~bad], expected_state[:, :, ~bad], rtol=1e-5, atol=1e-6)
    assert opt.state[a]["step"] == opt.state[b]["step"] == 3


def test_nothing_is_written_to_a_parameter_before_every_update_is_computed(small_net, monkeypatch):
    (a,), (b,) = make_params((4,)), make_params((5,), dtype=torch.float64)  # two dtypes: two buckets
    opt = LearnedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.5}], checkpoint=small_net)
    set_grads([a, b])
    opt.step()
    params_before, states_before = snapshot(opt, [a, b])
    calls = []
    real = learned.step_inplace

    def failing_second_pass(net, grad, states, *args, **kwargs):
        calls.append(grad.numel())
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second bucket")
        return real(net, grad, states, *args, **kwargs)

    monkeypatch.setattr(learned, "step_inplace", failing_second_pass)
    set_grads([a, b], seed=5)
    with pytest.raises(RuntimeError, match="simulated"):
        opt.step()
    assert calls == [4, 5]  # the first bucket's update was computed ...
    assert torch.equal(a, params_before[0]) and torch.equal(b, params_before[1])  # ... but never applied
    assert [opt.state[q]["step"] for q in (a, b)] == [1, 1]
    # the second bucket never ran: its state is untouched (the first one's advanced in place, as documented)
    assert torch.equal(opt.state[b]["net_state"], states_before[id(b)]["net_state"])


def test_sparse_and_complex_gradients_are_refused(small_net):
    embedding = nn.Embedding(10, 3, sparse=True)
    opt = LearnedOptimizer(embedding.parameters(), checkpoint=small_net)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(UnsupportedGradientError, match="sparse"):
        opt.step()
    with pytest.raises(UnsupportedGradientError, match="complex"):
        LearnedOptimizer([nn.Parameter(torch.zeros(3, dtype=torch.complex64))], checkpoint=small_net)
    with pytest.raises(UnsupportedGradientError, match="floating-point"):
        LearnedOptimizer([torch.zeros(3, dtype=torch.long)], checkpoint=small_net)


def test_a_module_that_is_not_a_coordinatewise_net_is_refused():
    with pytest.raises(ConfigError, match="Linear is not a learned-optimizer net.*subclass of l2l_lightning.nets.LearnedOptimizerNet"):
        LearnedOptimizer(make_params((2,)), checkpoint=nn.Linear(2, 2))


# ------------------------------------------------------------------ state dicts
def train(opt, params, steps, seed):
    for step in range(steps):
        set_grads(params, seed=seed + step)
        opt.step()


def serialized(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # the state dict is plain: no pickled objects


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_state_dict_round_trip_continues_bit_for_bit(small_net, state_dtype):
    shapes = ((4, 3), (7,))
    original = make_params(*shapes)
    groups = [{"params": [original[0]]}, {"params": [original[1]], "lr": 0.3}]
    opt = LearnedOptimizer(groups, small_net, state_dtype=state_dtype)
    train(opt, original, 3, seed=0)
    saved = serialized(opt.state_dict())
    assert saved["l2l_net"]["init_args"] == small_net.config
    copies = [nn.Parameter(p.detach().clone()) for p in original]
    restored = LearnedOptimizer([{"params": [copies[0]]}, {"params": [copies[1]]}], small_net)
    restored.load_state_dict(saved)
    assert restored.param_groups[1]["lr"] == 0.3 and restored.param_groups[0]["state_dtype"] == state_dtype
    train(opt, original, 4, seed=10)
    train(restored, copies, 4, seed=10)
    for a, b in zip(original, copies):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # bit-equal here; inductor may round differently elsewhere
        assert torch.equal(opt.state[a]["net_state"], restored.state[b]["net_state"])
        assert opt.state[a]["step"] == restored.state[b]["step"] == 7


def test_lstm_states_keep_their_dtype_on_load(small_net):
    (p,) = make_params((5,), dtype=torch.bfloat16)
    opt = LearnedOptimizer([p], small_net, state_dtype="float32")
    train(opt, [p], 2, seed=0)
    saved = serialized(opt.state_dict())
    (q,) = make_params((5,), dtype=torch.bfloat16)
    other = LearnedOptimizer([q], small_net)
    other.load_state_dict(saved)
    # torch's default would cast the state to the bf16 parameter's dtype and round it
    assert other.state[q]["net_state"].dtype == torch.float32
    assert torch.equal(other.state[q]["net_state"], opt.state[p]["net_state"])


def test_state_dict_of_another_net_or_model_is_refused(small_net):
    (p,) = make_params((6,))
    opt = LearnedOptimizer([p], small_net)
    train(opt, [p], 1, seed=0)
    saved = opt.state_dict()

    bigger = CoordinatewiseLSTM(hidden_size=16, preprocess="log_sign", output_scale=0.01)
    with pytest.raises(CheckpointError, match="different net"):
        LearnedOptimizer(make_params((6,)), bigger).load_state_dict(saved)

    torch.manual_seed(99)
    same_settings = CoordinatewiseLSTM(hidden_size=8, preprocess="log_sign", output_scale=0.01)
    (q,) = make_params((6,))
    other = LearnedOptimizer([q], same_settings)
    with pytest.raises(CheckpointError, match="different weights"):
        other.load_state_dict(saved)
    with pytest.warns(UserWarning, match="strict=False"):
        other.load_state_dict(saved, strict=False)
    assert torch.equal(other.state[q]["net_state"], opt.state[p]["net_state"])

    with pytest.raises(CheckpointError, match=r"parameter #0 \(5 elements\).*shape"):
        LearnedOptimizer(make_params((5,)), small_net).load_state_dict(saved)
    with pytest.raises(CheckpointError, match="groups"):
        LearnedOptimizer(make_params((6,), (2,)), small_net).load_state_dict(saved)

    (r,) = make_params((6,))
    adam = torch.optim.Adam([r])
    r.grad = torch.ones(6)
    adam.step()
    with pytest.raises(CheckpointError, match="not written by a LearnedOptimizer.*exp_avg"):
        LearnedOptimizer(make_params((6,)), small_net).load_state_dict(adam.state_dict())


def test_pickle_and_deepcopy_keep_the_net(small_net):
    (p,) = make_params((4,))
    opt = LearnedOptimizer([p], small_net)
    train(opt, [p], 1, seed=0)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.state_dict()["l2l_net"] == opt.state_dict()["l2l_net"]
        (q,) = clone.param_groups[0]["params"]
        set_grads([q], seed=4)
        clone.step()
        assert clone.state[q]["step"] == 2


# ------------------------------------------------------------------ GradScaler
def test_grad_scaler_skips_the_step_on_inf_and_no_state_advances(small_net):
    model = nn.Linear(4, 1)
    opt = LearnedOptimizer(model.parameters(), small_net)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def one_step(inject_inf: bool):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if inject_inf:
            model.weight.grad[0, 1] = float("inf")
        scaler.step(opt)
        scaler.update()

    one_step(False)
    before = snapshot(opt, list(model.parameters()))
    scale = scaler.get_scale()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedStepWarning)  # the scaler, not our fallback, must skip
        one_step(True)
    assert_same_snapshot(before, snapshot(opt, list(model.parameters())))
    assert scaler.get_scale() == scale / 2
    one_step(False)
    assert all(s["step"] == 2 for s in opt.state.values())


# ------------------------------------------------------------------ the fast step
def plain_step(net, params, states, lr=1.0):
    """The reference: the net's differentiable forward on the concatenated flat gradient."""
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    state = torch.cat(states, dim=2) if states else net.init_state(grad.numel())
    with torch.no_grad():
        update, new_state = net(grad, state)
    sizes = [p.numel() for p in params]
    new_params = [p.detach() + lr * u.view_as(p) for p, u in zip(params, update.split(sizes))]
    return new_params, list(new_state.split(sizes, dim=2))


@pytest.mark.parametrize(
    "shapes",
    [((1,),), ((3, 4), (5,)), ((64,), (64,)), ((100, 7), (7,), (33, 3), ()), ((1000,), (129,), (1, 1))],
)
@pytest.mark.parametrize("chunk_size", [1, 13, 64, 8192])
def test_the_chunked_step_computes_the_plain_step(small_net, shapes, chunk_size):
    params = make_params(*shapes)
    opt = LearnedOptimizer(params, small_net, lr=0.7, chunk_size=chunk_size)
    states = []
    for step in range(3):
        set_grads(params, seed=step)
        expected_params, expected_states = plain_step(small_net, params, states, lr=0.7)
        opt.step()
        states = [opt.state[p]["net_state"] for p in params]
        for p, e in zip(params, expected_params):
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
        for s, e in zip(states, expected_states):
            torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_chunk_size_must_be_a_positive_integer(small_net, value):
    with pytest.raises(ConfigError, match="chunk_size"):
        LearnedOptimizer(make_params((3,)), small_net, chunk_size=value)


def test_compile_setting_is_checked_and_a_failing_compile_falls_back_with_one_warning(small_net, monkeypatch):
    from l2l_lightning.optim import runtime

    with pytest.raises(ConfigError, match="compile"):
        LearnedOptimizer(make_params((3,)), small_net, compile="always")

    def broken(*args, **kwargs):
        raise RuntimeError("inductor is unavailable")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(runtime, "_RUNNERS", {})
    compiled, eager = make_params((40,), (3, 3)), make_params((40,), (3, 3))
    opt = LearnedOptimizer(compiled, small_net, compile=True, chunk_size=16)
    reference = LearnedOptimizer(eager, small_net, compile=False, chunk_size=16)
    with pytest.warns(RuntimeWarning, match="falling back to eager") as record:
        for step in range(3):
            set_grads(compiled, seed=step)
            set_grads(eager, seed=step)
            opt.step()
            reference.step()
    assert len(record) == 1
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


def test_a_step_allocates_a_small_fraction_of_the_state(small_net):
    """Extra memory of a step: flat gradient + flat update + chunk workspace, not a copy of the state."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).parents[2] / "benchmarks" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    params = make_params((300, 300), (300,), (50, 50))
    opt = LearnedOptimizer(params, small_net, chunk_size=512)
    set_grads(params)
    opt.step()  # creates the state
    state_bytes = sum(s["net_state"].nbytes for s in opt.state.values())
    set_grads(params, seed=1)
    extra = common.peak_extra_bytes(opt.step)
    assert 0 < extra < 0.25 * state_bytes, (extra, state_bytes)  # the bound asked for; ~12% here (hidden 8)


# ------------------------------------------------------------------ the sync-free (CUDA) path, run on CPU
def sync_free(opt):
    opt._sync_free = True  # what CUDA parameters get; forced here to test its logic on CPU
    return opt


def test_the_sync_free_step_equals_the_checked_step(small_net):
    a, b = make_params((40,), (3, 5)), make_params((40,), (3, 5))
    checked = LearnedOptimizer(a, small_net, chunk_size=16)
    free = sync_free(LearnedOptimizer(b, small_net, chunk_size=16))
    for step in range(3):
        set_grads(a, seed=step)
        set_grads(b, seed=step)
        checked.step()
        free.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
        assert torch.equal(checked.state[p]["net_state"], free.state[q]["net_state"])
        step = free.state[q]["step"]
        assert torch.is_tensor(step) and step.dtype == torch.int64 and int(step) == checked.state[p]["step"] == 3


def test_the_sync_free_step_skips_on_the_device_and_warns_at_the_next_call(small_net):
    params = make_params((10,), (4,))
    opt = sync_free(LearnedOptimizer(params, small_net))
    set_grads(params)
    opt.step()
    before = snapshot(opt, params)
    set_grads(params, seed=2)
    params[1].grad[2] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # no host sync: the decision is a device flag, nothing to warn about yet
    assert_same_snapshot(before, snapshot(opt, params))  # parameters, states and step counts unchanged
    set_grads(params, seed=3)
    with pytest.warns(SkippedStepWarning, match="non-finite gradient.*later call"):
        opt.step()
    assert all(int(opt.state[p]["step"]) == 2 for p in params)
    with torch.no_grad():
        opt.net.output.bias.fill_(float("inf"))
        opt._nets.clear()
    before = [p.detach().clone() for p in params]
    set_grads(params, seed=4)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert all(not opt.state[p]["net_state"].any() for p in params)
    with pytest.warns(SkippedStepWarning, match="non-finite update"):
        opt.state_dict()  # reports what is pending (a sync point anyway)


def test_sync_free_step_counters_survive_a_state_dict_round_trip(small_net):
    params = make_params((6,))
    opt = sync_free(LearnedOptimizer(params, small_net))
    train(opt, params, 2, seed=0)
    saved = serialized(opt.state_dict())
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    restored = LearnedOptimizer(copies, small_net)  # a CPU optimizer reading a tensor step: continues as int
    restored.load_state_dict(saved)
    train(opt, params, 2, seed=5)
    train(restored, copies, 2, seed=5)
    assert torch.equal(params[0], copies[0])
    assert int(opt.state[params[0]]["step"]) == restored.state[copies[0]]["step"] == 4


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), torch.tensor(float("inf"))])
def test_a_non_finite_lr_is_refused_everywhere_it_can_be_set(small_net, bad):
    params = make_params((4,), (3,))
    with pytest.raises(ConfigError, match="must be a finite non-negative number"):
        LearnedOptimizer(params, checkpoint=small_net, lr=bad)
    with pytest.raises(ConfigError, match="must be a finite non-negative number"):
        LearnedOptimizer([{"params": params[:1]}, {"params": params[1:], "lr": bad}], checkpoint=small_net)
    opt = LearnedOptimizer(params[:1], checkpoint=small_net)
    with pytest.raises(ConfigError, match="must be a finite non-negative number"):
        opt.add_param_group({"params": params[1:], "lr": bad})
    assert len(opt.param_groups) == 1


def test_a_scheduler_that_makes_lr_non_finite_cannot_corrupt_the_parameters(small_net):
    params = make_params((4,), (3,))
    opt = LearnedOptimizer([{"params": params[:1]}, {"params": params[1:]}], checkpoint=small_net)
    set_grads(params)
    opt.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: [1.0, float("inf")][min(epoch, 1)])
    scheduler.step()
    assert opt.param_groups[0]["lr"] == float("inf")
    set_grads(params, seed=3)
    before = snapshot(opt, params)
    with pytest.raises(ConfigError, match=r"step: param group #0: lr=inf must be .*refused.*no parameter or state changed"):
        opt.step()
    assert_same_snapshot(snapshot(opt, params), before)
    assert all(torch.isfinite(p).all() for p in params)


def test_torch_compile_of_a_training_step_with_step_inside_equals_eager(small_net):
    """step() is a graph break (inductor cannot take the net's weights as graph inputs on CPU);
    the compiled training step around it runs and lands on the same parameters as eager."""

    def train(compiled):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = LearnedOptimizer(model.parameters(), checkpoint=small_net)
        x, y = torch.randn(16, 4), torch.randn(16, 1)

        def train_step():
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
            return loss

        step = torch.compile(train_step, backend="inductor") if compiled else train_step
        losses = [step().item() for _ in range(3)]
        return losses, [p.detach().clone() for p in model.parameters()], opt

    torch._dynamo.reset()
    eager_losses, eager_params, eager_opt = train(False)
    compiled_losses, compiled_params, compiled_opt = train(True)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    for a, b in zip(eager_params, compiled_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # bit-equal here; inductor may round differently elsewhere
    assert all(s["step"] == 3 for s in compiled_opt.state.values())


def test_a_net_with_a_nonzero_initial_state_starts_each_parameter_from_it(small_net):
    """Deployment asks the net for each parameter's initial state instead of assuming zeros."""
    from tests.conftest import MinimalNet

    class OnesNet(MinimalNet):
        def init_segment_states(self, layout, device=None, dtype=None):
            return [torch.ones(shape, device=device, dtype=dtype) for shape in self.segment_state_shapes(layout)]

    net = OnesNet(small_net)
    a, b = make_params((3,), (4,))
    opt = LearnedOptimizer([a, b], checkpoint=net)
    set_grads([a, b])
    expected, _ = small_net(torch.cat([a.grad, b.grad]), torch.ones(small_net.state_shape(7)))
    before = torch.cat([a.detach(), b.detach()])
    opt.step()
    torch.testing.assert_close(torch.cat([a.detach(), b.detach()]) - before, expected)

#!/usr/bin/env python
"""Meta-training throughput: inner steps per second, forward and backward through each truncation.

    python benchmarks/meta_throughput.py
    python benchmarks/meta_throughput.py --threads 1 --repeats 7 --stack 1,4
    python benchmarks/meta_throughput.py --mnist-root data      # real MNIST through MNISTTask, if present
    python benchmarks/meta_throughput.py --device cuda

One timed unit is one truncation exactly as ``MetaLearner.training_step`` runs it: 20
inner steps of :func:`l2l_lightning.unroll` (optimizee forward/backward, net forward,
parameter update), the meta-loss's backward through all of them, and an Adam step
on the net (the meta-optimizer).  Optimizee parameters and LSTM states carry over
between truncations and a fresh draw starts every 100 inner steps, as in training.
Inner steps/s = 20 / (median seconds per truncation).

Tasks: the paper's quadratic (128 problems of dimension 10, no preprocessing; with and
without second derivatives, the repository's config using them) and its MNIST MLP
(784-20-10, sigmoid, cross-entropy, minibatch 128: 15,910 parameters), on synthetic
data of MNIST's shape by default (throughput does not depend on the pixel values).
``--stack K`` also runs K MLPs at once (``StackedModuleProblem``: one ``vmap``-ed forward
and backward, K × 15,910 LSTM rows) and reports optimizee-steps/s.

Baselines, timed in the same process and interleaved with ours:

* ``previous``: this repository before this change: the net as autograd over ~15
  primitive ops per cell (``tanh``, ``chunk``, ``cat``) and the state stacked into one
  tensor every step;
* ``per-tensor`` (MNIST): the same, but run once per parameter tensor with its own
  state, as public per-tensor PyTorch reproductions do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from l2l_lightning import CoordinatewiseLSTM, ModuleProblem, QuadraticTask, unroll  # noqa: E402
from l2l_lightning.meta.unroll import UnrollResult  # noqa: E402
from l2l_lightning.tasks import StackedModuleProblem  # noqa: E402
from l2l_lightning.nets.preprocessing import preprocess  # noqa: E402

UNROLL, HORIZON = 20, 100


# ------------------------------------------------------------------ baselines
def previous_forward(net: CoordinatewiseLSTM, grad: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """``CoordinatewiseLSTM.forward`` as it was: primitive autograd ops, one stacked state tensor."""
    x = preprocess(grad, net.preprocess, net.p)
    new_state = []
    for layer, cell in enumerate(net.cells):
        gates = torch.addmm(cell.bias, torch.cat((x, state[layer, 0]), dim=1), cell.weight.t())
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * state[layer, 1] + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        new_state += (h, c)
        x = h
    update = torch.addmm(net.output.bias, x, net.output.weight.t()).squeeze(1) * net.output_scale
    return update, torch.stack(new_state).view(net.state_shape(grad.shape[0]))


def previous_unroll(net, problem, theta, state, start_step, steps, second_derivatives=False) -> UnrollResult:
    """``unroll`` as it was (the same loop, over :func:`previous_forward`)."""
    theta = theta.detach().requires_grad_(True)
    state = state.detach()
    loss = problem.loss(theta, start_step)
    losses = []
    for k in range(steps):
        (grad,) = torch.autograd.grad(loss.sum(), theta, create_graph=second_derivatives, retain_graph=True)
        update, state = previous_forward(net, grad, state)
        theta = theta + update
        loss = problem.loss(theta, start_step + k + 1)
        losses.append(loss)
    return UnrollResult(torch.stack(losses), theta.detach(), state.detach())


def per_tensor_unroll(net, problem: ModuleProblem, theta, state, start_step, steps, second_derivatives=False):
    """Per parameter tensor: its own gradient, its own net call and state (as public reproductions do)."""
    sizes = problem.layout.sizes
    thetas = [t.detach().requires_grad_(True) for t in theta.split(sizes)]
    states = [s.detach() for s in state.split(sizes, dim=2)]

    def loss_of(ts: list[Tensor], step: int) -> Tensor:
        return problem.loss(torch.cat(ts), step)

    loss = loss_of(thetas, start_step)
    losses = []
    for k in range(steps):
        grads = torch.autograd.grad(loss.sum(), thetas, create_graph=second_derivatives, retain_graph=True)
        new_thetas, new_states = [], []
        for t, g, s in zip(thetas, grads, states):
            update, s = previous_forward(net, g, s)
            new_thetas.append(t + update)
            new_states.append(s)
        thetas, states = new_thetas, new_states
        loss = loss_of(thetas, start_step + k + 1)
        losses.append(loss)
    return UnrollResult(torch.stack(losses), torch.cat(thetas).detach(), torch.cat(states, dim=2).detach())


# ------------------------------------------------------------------ tasks
_MODULES: dict[tuple[int, int, int, str], nn.Module] = {}


def mlp_problem(seed: int, device: str, mnist_root: str | None, sizes=(784, 20, 10)) -> ModuleProblem:
    """The paper's MNIST MLP (784-20-10, sigmoid), θ₀ ~ N(0, 0.01²) (configs/mnist.yaml)."""
    generator = torch.Generator().manual_seed(seed)
    if mnist_root is not None:
        from l2l_lightning.tasks.mnist import MNISTTask  # optional: needs the dataset files

        return MNISTTask(root=mnist_root, hidden_sizes=[sizes[1]]).sample(generator, device, "train")
    key = (*sizes, str(device))
    if key not in _MODULES:  # one architecture object shared by every draw, as tasks do
        _MODULES[key] = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.Sigmoid(), nn.Linear(sizes[1], sizes[2])).to(device)
    module = _MODULES[key]
    params = {name: (torch.randn(p.shape, generator=generator) * 0.01).to(device) for name, p in module.named_parameters()}
    pool = 16  # distinct synthetic minibatches, cycled (an index like a real data pipeline's)
    images = torch.rand(pool, 128, sizes[0], generator=generator).to(device)
    labels = torch.randint(0, sizes[2], (pool, 128), generator=generator).to(device)
    return ModuleProblem(
        module,
        params,
        lambda step: (images[step % pool], labels[step % pool]),
        lambda logits, batch: nn.functional.cross_entropy(logits, batch[1]),
    )


class Trainer:
    """Carries θ and the LSTM state across truncations like ``MetaLearner``; one call = one truncation."""

    def __init__(self, run: Callable[..., UnrollResult], net: nn.Module, draw: Callable[[int], Any], second: bool) -> None:
        self.run, self.net, self.draw, self.second = run, net, draw, second
        self.meta_optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        self.draws = 0
        self.step = HORIZON

    def __call__(self) -> None:
        if self.step >= HORIZON:
            self.problem = self.draw(self.draws)
            self.draws += 1
            self.theta = self.problem.initial_params()
            self.state = self.net.init_state(self.theta.numel(), device=self.theta.device)
            self.step = 0
        result = self.run(self.net, self.problem, self.theta, self.state, self.step, UNROLL, second_derivatives=self.second)
        meta_loss = result.losses.mean(dim=1).sum()
        self.meta_optimizer.zero_grad(set_to_none=True)
        meta_loss.backward()
        self.meta_optimizer.step()
        self.theta, self.state, self.step = result.theta, result.state, self.step + UNROLL


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed truncations per candidate (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stack", default="1,4", help="MLPs per problem for the stacked (vmap) rows, e.g. 1,4")
    parser.add_argument("--quadratic-problems", type=int, default=128)
    parser.add_argument("--mnist-root", default=None, help="use real MNIST via l2l_lightning.tasks.mnist.MNISTTask")
    parser.add_argument("--no-baselines", action="store_true", help="time only this implementation")
    parser.add_argument("--mlp", default="784,20,10", help="MLP layer sizes (the paper's: 784,20,10)")
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    where = common.machine(args.device)  # before our own load counts in the load average
    device = args.device
    rows = []

    def measure(name: str, candidates: dict[str, Trainer], optimizees: int, coordinates: int) -> None:
        times = common.interleaved(candidates, args.repeats, device)
        ours = UNROLL / times["ours"]
        row = [name, optimizees, f"{coordinates:,}", f"**{ours:.0f}**", f"{ours * optimizees:.0f}"]
        for baseline in ("previous", "per-tensor"):
            if baseline in times:
                theirs = UNROLL / times[baseline]
                row += [f"{theirs:.1f}", f"{ours / theirs:.1f}×"]
            else:
                row += ["—", "—"]
        rows.append(row)

    # --- the quadratic
    task = QuadraticTask(dim=10, num_problems=args.quadratic_problems)
    for second in (False, True):
        torch.manual_seed(0)
        net = CoordinatewiseLSTM(preprocess="none", output_scale=0.1).to(device)

        def draw(i: int) -> Any:
            return task.sample(torch.Generator().manual_seed(i), device)

        candidates = {"ours": Trainer(unroll, net, draw, second)}
        if not args.no_baselines:
            candidates["previous"] = Trainer(previous_unroll, net, draw, second)
        label = f"quadratic {args.quadratic_problems}×10" + (", second derivatives" if second else "")
        measure(label, candidates, args.quadratic_problems, args.quadratic_problems * 10)

    # --- the MNIST MLP, alone and stacked
    sizes = tuple(int(v) for v in args.mlp.split(","))
    numel = sizes[0] * sizes[1] + sizes[1] + sizes[1] * sizes[2] + sizes[2]
    for count in (int(k) for k in args.stack.split(",")):
        torch.manual_seed(0)
        net = CoordinatewiseLSTM(preprocess="log_sign", p=10.0, output_scale=0.1).to(device)
        if count == 1:
            draw = lambda i: mlp_problem(i, device, args.mnist_root, sizes)  # noqa: E731
        else:
            draw = lambda i: StackedModuleProblem(  # noqa: E731
                [mlp_problem(count * i + k, device, args.mnist_root, sizes) for k in range(count)]
            )
        candidates = {"ours": Trainer(unroll, net, draw, False)}
        if count == 1 and not args.no_baselines:
            candidates["previous"] = Trainer(previous_unroll, net, draw, False)
            candidates["per-tensor"] = Trainer(per_tensor_unroll, net, draw, False)
        data = "MNIST" if args.mnist_root else "synthetic MNIST-shaped data"
        label = f"MNIST MLP {'-'.join(map(str, sizes))} ({data})" + (f", {count} stacked (vmap)" if count > 1 else "")
        measure(label, candidates, count, numel * count)

    header = [
        "task",
        "optimizees",
        "LSTM rows",
        "inner steps/s (ours)",
        "optimizee-steps/s",
        "previous",
        "ours / previous",
        "per-tensor",
        "ours / per-tensor",
    ]
    title = (
        f"meta_throughput — device {device}, {threads} thread(s), truncations of {UNROLL} steps "
        f"(forward + backward + meta-step), median of {args.repeats} interleaved"
    )
    out = common.report(title, where, header, rows)
    print(out)
    return out


if __name__ == "__main__":
    main()

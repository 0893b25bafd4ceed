#!/usr/bin/env python
"""Cost of ``LearnedOptimizer.step`` next to a naive implementation of the same math and to Adam.

    python benchmarks/step_overhead.py                       # 10k, 100k, 1M, 10M parameters
    python benchmarks/step_overhead.py --threads 1 --repeats 7
    python benchmarks/step_overhead.py --device cuda --sizes 1M,10M,100M --state-dtype bfloat16

Each model is two square ``nn.Linear`` layers sized to the parameter count, with fixed
random gradients (only the optimizer step is timed, never forward/backward).  In one
process and interleaved round-robin (so all see the same background load), it times:

* ``LearnedOptimizer.step`` (the paper's LSTM: 2 layers × 20 units, ``log_sign``);
* the *naive* step: the same net as one ``nn.LSTMCell`` pass per layer over all
  coordinates (full-size gate activations, a new state tensor per step), then
  ``θ += update``; it is checked to give the same parameters as ``LearnedOptimizer``;
* ``torch.optim.Adam`` (default, foreach).

On CUDA it adds the memory-bandwidth view: the bytes a step must move (state read and
written in ``--state-dtype``, gradient read, update written and read back, parameter read
and written), divided by the device-to-device copy bandwidth measured in the same run,
is the step's lower bound; the table gives the step time as a ratio to it, and to
``torch.optim.Adam(fused=True)`` (what users would otherwise pick on a GPU).

Peak memory is the step's extra allocation beyond what exists before it (state,
parameters, gradients): torch's CPU allocator events replayed from the profiler (see
``common.peak_extra_bytes``), or ``torch.cuda.max_memory_allocated`` on GPUs.  It is
reported as a fraction of the LSTM state (320 bytes per parameter in float32).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from l2l_lightning import CoordinatewiseLSTM, LearnedOptimizer  # noqa: E402
from l2l_lightning.nets.preprocessing import preprocess  # noqa: E402

SUFFIX = {"k": 10**3, "M": 10**6, "G": 10**9}
NOTE = (
    "Peak memory is measured with one thread: on CPU the step shares its chunks over "
    "torch.get_num_threads() threads, each with its own chunk workspace (~5 MB at the "
    "default chunk_size), which the profiler does not see from other threads."
)


def parse_size(text: str) -> int:
    text = text.strip()
    return int(float(text[:-1]) * SUFFIX[text[-1]]) if text[-1] in SUFFIX else int(text)


def size_name(n: int) -> str:
    for suffix, value in (("M", 10**6), ("k", 10**3)):
        if n >= value:
            return f"{n / value:.3g}{suffix}"
    return str(n)


def make_model(size: int, device: str, seed: int) -> list[nn.Parameter]:
    """Two ``d × d`` linear layers (with biases), about ``size`` parameters, with fixed random gradients."""
    d = max(1, round((math.sqrt(1 + 8 * size) - 2) / 4))  # 2 (d² + d) ≈ size
    generator = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(p.detach().to(device)) for p in nn.Sequential(nn.Linear(d, d), nn.Linear(d, d)).parameters()]
    for p in params:  # gradients over several orders of magnitude, as real ones are
        magnitude = torch.exp(torch.randn(p.shape, generator=generator) * 2) * 1e-3
        p.grad = (torch.randn(p.shape, generator=generator) * magnitude).to(device)
    return params


class NaiveStep:
    """The same learned optimizer written plainly: one ``nn.LSTMCell`` pass per layer over every coordinate."""

    def __init__(self, params: list[nn.Parameter], net: CoordinatewiseLSTM) -> None:
        self.params, self.net = params, net
        device = params[0].device
        self.cells = []
        for cell in net.cells:
            lstm = nn.LSTMCell(cell.input_size, cell.hidden_size).to(device)
            with torch.no_grad():
                lstm.weight_ih.copy_(cell.weight[:, : cell.input_size])
                lstm.weight_hh.copy_(cell.weight[:, cell.input_size :])
                lstm.bias_ih.copy_(cell.bias)
                lstm.bias_hh.zero_()
            self.cells.append(lstm.requires_grad_(False))
        self.output = nn.Linear(net.hidden_size, 1).to(device).requires_grad_(False)
        self.output.load_state_dict(net.output.state_dict())
        self.state = net.init_state(sum(p.numel() for p in params), device=device)

    @torch.no_grad()
    def step(self) -> None:
        grad = torch.cat([p.grad.reshape(-1) for p in self.params])
        x = preprocess(grad, self.net.preprocess, self.net.p)
        new_state = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, (self.state[layer, 0], self.state[layer, 1]))
            new_state += (h, c)
            x = h
        update = self.output(x).squeeze(1) * self.net.output_scale
        self.state = torch.stack(new_state).view_as(self.state)
        for p, u in zip(self.params, update.split([p.numel() for p in self.params])):
            p.add_(u.view_as(p))


def check(size: int, device: str, net: CoordinatewiseLSTM, chunk_size, compile) -> float:
    """Max |Δθ| between LearnedOptimizer and the naive step after two steps, relative to max |update|."""
    fast_params = make_model(size, device, seed=1)
    naive_params = [nn.Parameter(p.detach().clone()) for p in fast_params]
    start = [p.detach().clone() for p in fast_params]
    for p, q in zip(fast_params, naive_params):
        q.grad = p.grad
    fast = LearnedOptimizer(fast_params, net, chunk_size=chunk_size, compile=compile)
    naive = NaiveStep(naive_params, fast.net)
    for _ in range(2):
        fast.step()
        naive.step()
    moved = max((a - s).abs().max().item() for a, s in zip(naive_params, start))
    return max((a - b).abs().max().item() for a, b in zip(fast_params, naive_params)) / moved


def copy_bandwidth(device: str, numel: int = 2**28) -> float:
    """Bytes per second of a device-to-device copy (read + write), measured now: the step's roofline."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    seconds = common.interleaved({"copy": lambda: dst.copy_(src)}, 5, device)["copy"]
    return 2 * src.nbytes / seconds


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M,10M", help="parameter counts, e.g. 10k,1M")
    parser.add_argument(
        "--naive-max", default="1M", help="largest size to run the naive step at (it allocates 2.5x the state)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per candidate (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="LearnedOptimizer chunk_size (default: per device)")
    parser.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    parser.add_argument(
        "--with-compiled", action="store_true", help="also time compile=True (CPU: measures whether it pays)"
    )
    parser.add_argument("--state-dtype", default="float32", choices=["float32", "bfloat16"], help="LSTM state dtype")
    args = parser.parse_args(argv)
    threads = common.setup_threads(args.threads)
    where = common.machine(args.device)  # before our own load counts in the load average
    bandwidth = copy_bandwidth(args.device) if args.device.startswith("cuda") else None
    compile = {"auto": "auto", "true": True, "false": False}[args.compile]
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(hidden_size=20, num_layers=2, preprocess="log_sign", p=10.0, output_scale=0.1)
    naive_max = parse_size(args.naive_max)
    rows = []
    for label in args.sizes.split(","):
        size = parse_size(label)
        params = make_model(size, args.device, seed=0)
        n = sum(p.numel() for p in params)
        fast = LearnedOptimizer(params, net, chunk_size=args.chunk_size, compile=compile, state_dtype=args.state_dtype)
        cuda = args.device.startswith("cuda")
        adam = torch.optim.Adam(params, lr=1e-3, fused=True if cuda else None)
        fns = {"fast": fast.step, "adam": adam.step}
        naive = None
        if size <= naive_max:
            naive = NaiveStep(params, fast.net)
            fns["naive"] = naive.step
        if args.with_compiled:
            compiled = LearnedOptimizer(params, net, chunk_size=args.chunk_size, compile=True)
            fns["compiled"] = compiled.step
        times = common.interleaved(fns, args.repeats, args.device)
        state_bytes = sum(s["net_state"].nbytes for s in fast.state.values())
        with common.threads(1):  # the profiler sees the calling thread's allocations only (see NOTE)
            fast_extra = common.peak_extra_bytes(fast.step, args.device)
        row = [
            f"{label.strip()} ({n:,})",
            common.fmt_bytes(state_bytes),
            common.fmt_time(times["fast"]),
        ]
        if naive is not None:
            with common.threads(1):
                naive_extra = common.peak_extra_bytes(naive.step, args.device)
            error = check(size, args.device, net, args.chunk_size, compile) if size <= 10**6 else None
            row += [
                common.fmt_time(times["naive"]),
                f"**{times['naive'] / times['fast']:.1f}×**",
            ]
        else:
            row += ["—", "—"]
        row += [common.fmt_time(times["adam"]), f"{times['fast'] / times['adam']:.2g}×"]
        row += [f"{common.fmt_bytes(fast_extra)} (**{100 * fast_extra / state_bytes:.1f}%**)"]
        row += [f"{common.fmt_bytes(naive_extra)} ({100 * naive_extra / state_bytes:.0f}%)" if naive else "—"]
        row += [f"{error:.1e}" if naive and error is not None else "—"]
        if args.with_compiled:
            row += [f"{common.fmt_time(times['compiled'])} ({times['fast'] / times['compiled']:.2f}×)"]
        if cuda:
            moved = state_bytes * 2 + n * params[0].element_size() * 5  # state r+w; grad r; update w+r; param r+w
            limit = moved / bandwidth
            row += [f"{moved / 1e9:.2f} GB", common.fmt_time(limit), f"**{times['fast'] / limit:.2f}×**"]
        rows.append(row)
        del fast, adam, naive, params
    header = [
        "parameters",
        "LSTM state",
        "LearnedOptimizer.step",
        "naive step",
        "naive / ours",
        "Adam step",
        "ours / Adam",
        "extra peak memory, ours (% of state)",
        "extra peak, naive",
        "max |Δθ| vs naive (rel.)",
    ]
    if args.with_compiled:
        header.append("compile=True (speed-up)")
    if bandwidth is not None:
        header += ["bytes moved per step", f"bandwidth limit ({bandwidth / 1e12:.2f} TB/s copy)", "step / limit"]
        header[header.index("ours / Adam")] = "ours / fused Adam"
    title = f"step_overhead — device {args.device}, {threads} thread(s), median of {args.repeats} interleaved calls"
    out = common.report(title, where, header, rows, NOTE if args.device == "cpu" else "")
    print(out)
    return out


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# GPU check: correctness of the CUDA path against CPU, then both benchmarks on the GPU.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; installs nothing
#   SIZES=1M,10M bash benchmarks/gpu_check.sh
#
# 1. CUDA vs CPU (float32, TF32 off): the runtime's step_inplace (eager and
#    torch.compile), LSTM+GAC over several tensors (eager), LearnedOptimizer over several
#    steps (float32 and bfloat16 states),
#    and the meta-training unroll (losses and meta-gradients).  Each row prints the max
#    error relative to the tensor's scale; the script fails if any exceeds its bound.
# 2. No host synchronisation inside LearnedOptimizer.step(): steps (a normal one, one with a
#    NaN gradient, one after it) run under torch.cuda.set_sync_debug_mode("error"), which
#    raises on any synchronising CUDA call (.item(), bool(tensor), blocking copies...).
#    The NaN step must change nothing and its SkippedStepWarning must come from a later call.
# 3. FSDP2 on CUDA (NCCL, one process per GPU, at most 2): LearnedOptimizer over fully_shard
#    parameters for 6 steps equals the single-process CPU run (bound 1e-4 relative to the
#    update), and a torch.distributed.checkpoint save/resume after 3 steps equals the
#    uninterrupted run (tests/optim/fsdp_worker.py, the CPU/gloo test's worker, on cuda).
# 4. benchmarks/step_overhead.py (float32 and bfloat16 state: ratio to fused Adam and to the
#    bandwidth limit) and benchmarks/meta_throughput.py with --device cuda.  On CUDA the
#    step uses the fused Triton kernel (nets/lstm_triton.py) where Triton is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${SIZES:-1M,10M,100M}"

python - <<'EOF'
import sys
import warnings

import torch
from torch import nn

from l2l_lightning import CoordinatewiseLSTM, LearnedOptimizer, QuadraticTask, unroll
from l2l_lightning.nets import GlobalAveragingLSTM, Layout, Segment
from l2l_lightning.optim import SkippedStepWarning
from l2l_lightning.optim.runtime import StepOptions, step_inplace

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch")
torch.backends.cuda.matmul.allow_tf32 = False  # compare float32 with float32
torch.backends.cudnn.allow_tf32 = False
rows, failed = [], False


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def record(name, error, bound):
    global failed
    ok = error <= bound
    failed |= not ok
    rows.append((name, f"{error:.1e}", f"{bound:.0e}", "ok" if ok else "FAIL"))


# --- 1a. the chunked step, eager and compiled, vs CPU
for preprocess in ("none", "log_sign", "clamped"):
    torch._dynamo.reset()  # each mode compiles afresh: stay clear of the recompile limit
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(preprocess=preprocess)
    for n in (1, 1000, 2**18 + 123):
        g = torch.randn(n) * torch.exp(torch.randn(n) * 3) * 1e-3
        state = torch.randn(net.state_shape(n)) * 0.5
        cpu_state = state.clone()
        cpu = step_inplace(net, g, cpu_state)
        for compile in (False, True):
            gpu_state = state.to("cuda", copy=True)
            gpu = step_inplace(net.cuda(), g.cuda(), gpu_state, options=StepOptions(compile=compile))
            net.cpu()
            tag = "compiled" if compile else "eager"
            record(f"step_inplace {preprocess} n={n} {tag}: update", rel(gpu, cpu), 1e-5)
            record(f"step_inplace {preprocess} n={n} {tag}: state", rel(gpu_state, cpu_state), 1e-5)


# --- 1a'. LSTM+GAC (eager: its averaged columns depend on the chunk's rows), several tensors, vs CPU
for average_over in ("optimizee", "tensor"):
    torch.manual_seed(0)
    net = GlobalAveragingLSTM(global_cells=5, average_over=average_over)
    layout = Layout([Segment("w", (2**18 + 7,)), Segment("b", (300,))]).repeat(2)
    g = torch.randn(layout.numel) * 1e-3
    states = [torch.randn(net.state_shape(size)) * 0.5 for size in layout.sizes]
    cpu_states = [s.clone() for s in states]
    cpu = step_inplace(net, g, cpu_states, layout)
    gpu_states = [s.to("cuda", copy=True) for s in states]
    gpu = step_inplace(net.cuda(), g.cuda(), gpu_states, layout)
    net.cpu()
    record(f"GAC step_inplace ({average_over}): update", rel(gpu, cpu), 1e-5)
    record(f"GAC step_inplace ({average_over}): state", rel(torch.cat(gpu_states, 2), torch.cat(cpu_states, 2)), 1e-5)


# --- 1b. LearnedOptimizer on CUDA (compile="auto": compiled) vs CPU (eager)
def model(device, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(300, 200), nn.Tanh(), nn.Linear(200, 10)).to(device)


for state_dtype in ("float32", "bfloat16"):
    torch.manual_seed(1)
    net = CoordinatewiseLSTM()
    cpu_model, gpu_model = model("cpu"), model("cuda")
    cpu_opt = LearnedOptimizer(cpu_model.parameters(), net, state_dtype=state_dtype)
    gpu_opt = LearnedOptimizer(gpu_model.parameters(), net, state_dtype=state_dtype)
    x, y = torch.randn(64, 300), torch.randn(64, 10)
    for step in range(5):
        for m, opt, dev in ((cpu_model, cpu_opt, "cpu"), (gpu_model, gpu_opt, "cuda")):
            opt.zero_grad()
            nn.functional.mse_loss(m(x.to(dev)), y.to(dev)).backward()
            opt.step()
    error = max(rel(b, a) for a, b in zip(cpu_model.parameters(), gpu_model.parameters()))
    bound = 1e-4 if state_dtype == "float32" else 1e-2  # 5 steps; bf16 states round differently
    record(f"LearnedOptimizer 5 steps, {state_dtype} state: parameters", error, bound)
    error = max(rel(gpu_opt.state[b]["net_state"].float(), cpu_opt.state[a]["net_state"].float())
                for a, b in zip(cpu_model.parameters(), gpu_model.parameters()))
    record(f"LearnedOptimizer 5 steps, {state_dtype} state: LSTM states", error, bound * 10)

# --- 2. no host sync inside step(), and the NaN step changes nothing
gpu_model = model("cuda")
opt = LearnedOptimizer(gpu_model.parameters(), CoordinatewiseLSTM())
x, y = torch.randn(64, 300, device="cuda"), torch.randn(64, 10, device="cuda")
for _ in range(2):  # warm-up: first-step copies of the net, compilation
    opt.zero_grad()
    nn.functional.mse_loss(gpu_model(x), y).backward()
    opt.step()
torch.cuda.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    opt.zero_grad()
    nn.functional.mse_loss(gpu_model(x), y).backward()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()  # a normal step
        gpu_model[0].weight.grad[0, 0] = float("nan")
        before = [p.detach().clone() for p in gpu_model.parameters()]
        states = [opt.state[p]["net_state"].clone() for p in gpu_model.parameters()]
        opt.step()  # a step to skip, decided on the device
        after = [p.detach().clone() for p in gpu_model.parameters()]
        after_states = [opt.state[p]["net_state"].clone() for p in gpu_model.parameters()]
        gpu_model[0].weight.grad.nan_to_num_(0.0)
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()  # let the skip flag reach the host
        torch.cuda.set_sync_debug_mode("error")
        opt.step()  # reports the skipped one
        sync_ok = True
    except RuntimeError as error:
        sync_ok = False
        print("host synchronisation inside step():", error)
    finally:
        torch.cuda.set_sync_debug_mode("default")
skipped = [w for w in caught if issubclass(w.category, SkippedStepWarning)]
unchanged = all(torch.equal(a, b) for a, b in zip(before, after)) and all(
    torch.equal(a, b) for a, b in zip(states, after_states))
record("step() under set_sync_debug_mode('error')", 0.0 if sync_ok else 1.0, 0)
record("NaN-gradient step changed nothing (params, states)", 0.0 if unchanged else 1.0, 0)
record("its SkippedStepWarning came from the next step()", 0.0 if len(skipped) == 1 else 1.0, 0)

# --- 1c. the meta-training unroll (losses and meta-gradients) vs CPU
for second in (False, True):
    torch.manual_seed(0)
    net = CoordinatewiseLSTM(preprocess="none", output_scale=0.1)
    problem = QuadraticTask(dim=10, num_problems=128).sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params()
    cpu = unroll(net, problem, theta, net.init_state(theta.numel()), 0, 20, second_derivatives=second)
    cpu_grads = torch.autograd.grad(cpu.losses.sum(), list(net.parameters()))
    gpu_net = net.cuda()
    gproblem = QuadraticTask(dim=10, num_problems=128).sample(torch.Generator().manual_seed(0), "cuda")
    gpu = unroll(gpu_net, gproblem, theta.cuda(), gpu_net.init_state(theta.numel(), device="cuda"), 0, 20,
                 second_derivatives=second)
    gpu_grads = torch.autograd.grad(gpu.losses.sum(), list(gpu_net.parameters()))
    tag = "second derivatives" if second else "first order"
    record(f"unroll quadratic 20 steps ({tag}): losses", rel(gpu.losses, cpu.losses), 1e-4)
    record(f"unroll quadratic 20 steps ({tag}): meta-gradient", max(rel(b, a) for a, b in zip(cpu_grads, gpu_grads)), 1e-3)

width = max(len(r[0]) for r in rows)
print(f"\nCUDA vs CPU on {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
print(f"| {'check'.ljust(width)} | max error (rel. to scale) | bound | result |")
print(f"|{'-' * (width + 2)}|---------------------------|-------|--------|")
for name, error, bound, result in rows:
    print(f"| {name.ljust(width)} | {error.ljust(25)} | {bound.ljust(5)} | {result.ljust(6)} |")
if failed:
    sys.exit("gpu_check: some checks FAILED")
EOF

FSDP_OUT="$(mktemp -d)"
FSDP_WORLD="$(python -c 'import torch; print(min(2, torch.cuda.device_count()))')"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python tests/optim/fsdp_worker.py "$FSDP_OUT" 29651 cuda "$FSDP_WORLD"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python - "$FSDP_OUT" "$FSDP_WORLD" <<'EOF'
import sys

import torch

sys.path.insert(0, "tests/optim")
import fsdp_worker
from l2l_lightning import LearnedOptimizer

out = torch.load(f"{sys.argv[1]}/fsdp.pt", weights_only=True)
model, net, (x, y) = fsdp_worker.build()
start = [p.detach().clone() for p in model.parameters()]
fsdp_worker.train(model, LearnedOptimizer(model.parameters(), checkpoint=net), x, y, fsdp_worker.STEPS)
error = max(((a - p.detach()).abs().max() / (p.detach() - s).abs().max()).item()
            for a, p, s in zip(out["straight"], model.parameters(), start))
resumed = all(torch.equal(a, b) for a, b in zip(out["straight"], out["resumed"]))
print(f"\nFSDP2 on {sys.argv[2]} GPU(s): parameters vs single-process CPU, max error rel. to the update: {error:.1e} "
      f"(bound 1e-4); DCP save/resume after {fsdp_worker.STEPS // 2} steps equals the uninterrupted run: {resumed}")
if error > 1e-4 or not resumed or out["steps"] != [fsdp_worker.STEPS] * 4:
    sys.exit("gpu_check: FSDP2 check FAILED")
EOF
rm -rf "$FSDP_OUT"

python benchmarks/step_overhead.py --device cuda --sizes "$SIZES" --naive-max 10M
python benchmarks/step_overhead.py --device cuda --sizes "$SIZES" --naive-max 0 --state-dtype bfloat16
python benchmarks/meta_throughput.py --device cuda

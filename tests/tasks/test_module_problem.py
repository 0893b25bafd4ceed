"""The task API is general: a tiny MLP optimizee (an ordinary nn.Module) meta-trains end to end."""

import torch
from torch import nn

from l2l_lightning import CoordinatewiseLSTM, ModuleProblem, Task, unroll
from tests.conftest import tiny_learner, tiny_trainer


class TinyMLPTask(Task):
    """~20 lines: an MLP on synthetic 2-class data, a fresh init and fresh minibatches per draw."""

    def __init__(self, batch_size: int = 16) -> None:
        self.module = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
        self.batch_size = batch_size

    def sample(self, generator, device="cpu", split="train"):
        params = {}
        for name, p in self.module.named_parameters():
            params[name] = (torch.randn(p.shape, generator=generator) * 0.3).to(device)
        w = torch.randn(4, generator=generator)
        xs = torch.randn(8, self.batch_size, 4, generator=generator).to(device)

        def batch(step):
            x = xs[step % 8]
            return x, (x @ w.to(device) > 0).long()

        return ModuleProblem(self.module, params, batch, lambda out, b: nn.functional.cross_entropy(out, b[1]))


def test_module_problem_matches_the_module_itself():
    task = TinyMLPTask()
    problem = task.sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params()
    model = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 2))
    model.load_state_dict(problem.unflatten(theta))
    x, y = problem.batch(3)
    torch.testing.assert_close(problem.loss(theta, 3), nn.functional.cross_entropy(model(x), y).reshape(1))
    assert theta.numel() == sum(p.numel() for p in model.parameters())


def test_meta_gradient_reaches_the_net_through_an_mlp():
    net = CoordinatewiseLSTM(preprocess="log_sign")
    problem = TinyMLPTask().sample(torch.Generator().manual_seed(0))
    theta = problem.initial_params()
    losses, _, _ = unroll(net, problem, theta, net.init_state(theta.numel()), 0, 5)
    losses.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_meta_training_on_an_mlp_task_runs(tmp_path):
    learner = tiny_learner(task=TinyMLPTask(), net=CoordinatewiseLSTM(preprocess="log_sign"))
    before = [p.detach().clone() for p in learner.net.parameters()]
    tiny_trainer(tmp_path, max_steps=4).fit(learner)
    assert learner.global_step == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.net.parameters()))

"""The `l2l` command as a user runs it: configs, errors, end-to-end meta-training, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2l_lightning.cli import main
from l2l_lightning.optim.pretrained import export, load_net

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quadratic.yaml")
FAST = [
    "--trainer.max_steps", "3",
    "--trainer.enable_progress_bar", "false",
    "--model.num_steps", "4",
    "--model.unroll", "2",
    "--model.truncations_per_epoch", "3",
    "--model.baseline_lrs", "[0.01, 0.1]",
]  # fmt: skip


def run_cli(args, tmp_path):
    return main(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST, *args])


def test_print_config_documents_every_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for key in ("num_steps: 100", "unroll: 20", "preprocess: none", "second_derivatives: true", "lr: 0.003"):
        assert key in out


def test_fit_runs_meta_steps_then_tests_the_best_checkpoint(tmp_path, capsys):
    previous_umask = os.umask(0o022)
    try:
        run_cli([], tmp_path)
    finally:
        os.umask(previous_umask)
    checkpoints = list(tmp_path.glob("quadratic/version_*/checkpoints/*.ckpt"))
    assert any(c.name.startswith("best-") for c in checkpoints) and any(c.name == "last.ckpt" for c in checkpoints)
    assert {oct(c.stat().st_mode & 0o777) for c in checkpoints} == {"0o644"}  # readable by colleagues, as open() makes
    out = capsys.readouterr().out
    assert "test/mean_loss" in out and "test/adam_mean_loss" in out
    best = next(c for c in checkpoints if c.name.startswith("best-"))
    checkpoint = torch.load(best, weights_only=True)  # plain data only: safe to load
    assert checkpoint["global_step"] == 3 and checkpoint["l2l_net"]["init_args"]["preprocess"] == "none"
    assert list(tmp_path.glob("quadratic/version_*/events.out.tfevents.*"))


@pytest.mark.parametrize("net", ["l2l_lightning.FeatureMLP", "l2l_lightning.FeatureLSTM"])
def test_feature_nets_meta_train_and_export_from_the_command_line(net, tmp_path):
    run_cli(["--model.net", net, "--model.net.init_args.hidden_size", "4", "--model.val_problems", "1"], tmp_path)
    last = next(tmp_path.glob("quadratic/version_*/checkpoints/last.ckpt"))
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["l2l_net"]["class_path"].endswith(net.rsplit(".", 1)[1])
    loaded = load_net(str(export(last, tmp_path / "features.pt")))
    assert type(loaded).__name__ == net.rsplit(".", 1)[1] and loaded.config["hidden_size"] == 4


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--model.num_stepz", "5"], tmp_path)
    assert exit_info.value.code != 0
    assert "num_stepz" in capsys.readouterr().err


def test_unknown_preprocessing_lists_the_allowed_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--model.net.init_args.preprocess", "logsign"], tmp_path)
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "logsign" in err and "log_sign" in err and "clamped" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.num_steps", "5"], "num_steps=5 is not a multiple of unroll=2"),
        (["--model.task.init_args.dim", "0"], "dim=0 must be a positive integer"),
        (["--model.threads", "0"], "MetaLearner: threads='0' must be a positive integer (that many intra-op threads) or 'auto'"),
    ],
)
def test_bad_values_get_a_one_line_error(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(args, tmp_path)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l: error: ") and message in err and "Traceback" not in err


def test_a_scheduler_without_its_optimizer_is_refused_not_ignored(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["--lr_scheduler", "torch.optim.lr_scheduler.ConstantLR"], tmp_path)
    assert "only applied together with --optimizer" in capsys.readouterr().err


def test_top_level_optimizer_and_scheduler_are_applied(tmp_path):
    run_cli(["--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.5",
             "--lr_scheduler", "torch.optim.lr_scheduler.StepLR", "--lr_scheduler.step_size", "1"], tmp_path)  # fmt: skip
    checkpoint = torch.load(next(tmp_path.glob("quadratic/version_*/checkpoints/last.ckpt")), weights_only=True)
    assert checkpoint["optimizer_states"][0]["param_groups"][0]["momentum"] == 0  # SGD, not Adam
    assert checkpoint["lr_schedulers"][0]["step_size"] == 1


DDP_SCRIPT = """
import sys, torch, lightning as L
from l2l_lightning import MetaLearner, QuadraticTask, CoordinatewiseLSTM
from tests.optim.gloo_exit import exit_without_finalizing

class Record(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == 0:
            self.first_W = module.stream.carry.problem.W.clone()

    def on_train_end(self, trainer, module):
        torch.save({"W": self.first_W, "net": module.net.state_dict()}, f"{sys.argv[1]}/rank{trainer.global_rank}.pt")

L.seed_everything(0)
learner = MetaLearner(QuadraticTask(dim=3, num_problems=4), CoordinatewiseLSTM(hidden_size=4, preprocess="none"),
                      num_steps=4, unroll=2, truncations_per_epoch=8, baseline_lrs=[0.1])
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=3, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    num_sanity_val_steps=0, callbacks=[Record()])
trainer.fit(learner)
exit_without_finalizing()
"""


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_draws_different_problems_and_keeps_weights_in_sync(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert not torch.equal(rank0["W"], rank1["W"])  # each rank draws its own problems
    for key in rank0["net"]:
        assert torch.equal(rank0["net"][key], rank1["net"][key]), key  # DDP keeps the meta-weights identical


@pytest.mark.slow
def test_ddp_from_the_command_line(tmp_path):
    args = ["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
            "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]  # fmt: skip
    # through this interpreter, not `l2l` on PATH: the suite must pass from a venv that is not activated
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "l2l_lightning.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/mean_loss" in proc.stdout


def test_same_seed_same_weights_from_the_command_line(tmp_path):
    weights = []
    for run in ("a", "b"):
        run_cli(["--test_after_fit", "false"], tmp_path / run)
        checkpoint = torch.load(next((tmp_path / run).glob("quadratic/version_*/checkpoints/last.ckpt")), weights_only=True)
        weights.append(checkpoint["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_fit_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0 and "model:" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "compare").glob("*.yaml")), ids=lambda p: p.name)
def test_every_compare_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0 and "learned:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def fitted_ckpt(tmp_path_factory):
    """A real MetaLearner checkpoint from `l2l fit` (the last one)."""
    out = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(out), *FAST, "--test_after_fit", "false"])
    return next(out.glob("quadratic/version_*/checkpoints/last.ckpt"))


def _not_a_meta_learner_checkpoint(kind, fitted_ckpt, path):
    if kind == "exported":
        from l2l_lightning.optim.pretrained import export

        export(fitted_ckpt, path)
    elif kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        data = fitted_ckpt.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "plain dict":
        torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("exported", "is an exported learned optimizer (written by l2l-export), not a MetaLearner checkpoint"),
        ("random bytes", "cannot be read by torch.load"),
        ("truncated", "cannot be read by torch.load"),
        ("plain dict", "is not a Lightning checkpoint"),
    ],
)
@pytest.mark.parametrize("subcommand", ["test", "fit"])
def test_a_ckpt_path_that_is_not_a_meta_learner_checkpoint_is_one_line(
    fitted_ckpt, tmp_path, capsys, kind, message, subcommand
):
    path = _not_a_meta_learner_checkpoint(kind, fitted_ckpt, tmp_path / f"{kind.replace(' ', '_')}.ckpt")
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
              "--ckpt_path", str(path)])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l: error: ") and message in err and str(path) in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert path.read_bytes() == before


def test_a_ckpt_path_of_a_meta_learner_checkpoint_still_works(fitted_ckpt, tmp_path, capsys):
    main(["test", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
          "--ckpt_path", str(fitted_ckpt)])  # fmt: skip
    assert "test/mean_loss" in capsys.readouterr().out


def test_the_l2l_command_saves_checkpoints_atomically():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from l2l_lightning.cli import L2LCLI
    from l2l_lightning.meta.module import MetaLearner
    from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO

    cli = L2LCLI(MetaLearner, args=["--config", CONFIG, *FAST], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    class MyIO(TorchCheckpointIO):
        pass

    cli = L2LCLI(MetaLearner, args=["--config", CONFIG, *FAST], run=False, trainer_defaults={"plugins": [MyIO()]})
    assert type(cli.trainer.strategy.checkpoint_io) is MyIO  # a plugin the user chose is kept


def _l2l(args, cwd):
    """``l2l ARGS`` in a fresh process, as a user sees it (this interpreter, the checkout on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "l2l_lightning.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip


TINY_FIT = ["fit", "--config", CONFIG, *FAST, "--trainer.log_every_n_steps", "1", "--model.val_problems", "1"]
TINY_COMPARE = ["compare", "--learned", "[quadratic]", "--task", "l2l_lightning.QuadraticTask", "--num_problems", "1",
                "--tune_problems", "1", "--num_steps", "5", "--lrs", "[0.01, 0.1]", "--progress", "false"]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_fit_prints_its_results_and_nothing_else(tmp_path):
    """No tips, no hardware report, no model summary, no warnings about our own checkpoint callbacks or saves."""
    quiet = _l2l(TINY_FIT, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == ""
    lines = [line for line in quiet.stdout.splitlines() if line.strip()]
    assert "Test metric" in quiet.stdout and all(("test/" in line or "─" in line or "Test metric" in line) for line in lines), lines
    last = next(tmp_path.glob("runs/quadratic/version_*/checkpoints/last.ckpt"))
    test = ["test", "--config", CONFIG, "--ckpt_path", str(last), "--model.test_problems", "1"]
    tested = _l2l([*test, "--trainer.enable_progress_bar", "false"], tmp_path)
    assert tested.returncode == 0 and tested.stderr == "" and "test/mean_loss" in tested.stdout, tested.stderr[-3000:]
    other_net = _l2l([*test, "--model.net.init_args.hidden_size", "8", "--trainer.enable_progress_bar", "false"], tmp_path)
    assert "the checkpoint's net (CoordinatewiseLSTM(hidden_size=20" in other_net.stderr  # not silently
    verbose = _l2l([*TINY_FIT, "--verbose"], tmp_path)  # everything comes back
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    for expected in ("Seed set to 0", "GPU available", "Tip", "Trainable params", "Restoring states"):
        assert expected in verbose.stderr + verbose.stdout, expected


@pytest.mark.slow
def test_a_tiny_compare_prints_its_table_and_nothing_else(tmp_path):
    proc = _l2l([*TINY_COMPARE, "--out_dir", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0].split() == ["optimizer", "lr", "sum", "loss", "final", "loss"]
    assert "warn" not in proc.stdout.lower()


def test_the_learned_optimizer_help_fits_on_a_screen(capsys):
    """Its net and module arguments used to be typed nn.Module: the help listed every Module subclass (1,401 lines)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--optimizer.help", "l2l_lightning.LearnedOptimizer"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--optimizer.checkpoint" in out and "--optimizer.fused" in out
    assert len(out.splitlines()) <= 80, len(out.splitlines())


def test_a_net_class_on_the_command_line_starts_from_its_own_defaults_and_says_so(capsys, monkeypatch):
    """jsonargparse alone carries the config's LSTM settings (hidden_size: 20) into the new class, silently."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--model.net", "per_coordinate_mlp.PerCoordinateMLP",
              "--model.net.step_scale", "0.02", "--print_config"])  # fmt: skip
    out, err = capsys.readouterr()
    net = out[out.index("  net:"):]
    assert "hidden_size: 32" in net and "step_scale: 0.02" in net  # its default; a setting after it still applies
    assert "hidden_size: 32 (not 20)" in err and "--model.net.hidden_size 20" in err
    with pytest.raises(SystemExit):  # nothing reset, nothing said: the class's settings equal the config's
        main(["fit", "--config", CONFIG, "--model.net", "l2l_lightning.CoordinatewiseLSTM",
              "--model.net.preprocess", "none", "--print_config"])  # fmt: skip
    assert "note" not in capsys.readouterr().err


def test_only_a_net_class_is_reset():
    from l2l_lightning.cli import net_from_its_defaults

    assert net_from_its_defaults(["fit", "--model.net", "a.B", "--model.net.x", "1"]) == [
        "fit", "--model.net", "null", "--model.net", "a.B", "--model.net.x", "1"]  # fmt: skip
    assert net_from_its_defaults(["--model.net=a.B"]) == ["--model.net", "null", "--model.net=a.B"]
    for kept in (["--model.net", "null"], ["--model.net", "{class_path: a.B, init_args: {x: 1}}"], ["--model.netx", "a"]):
        assert net_from_its_defaults(kept) == kept

"""Exporting trained optimizers, finding them by name and refusing what is not one."""

from __future__ import annotations

import pathlib

import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from l2l_lightning import CheckpointError, CoordinatewiseLSTM, LearnedOptimizer
from l2l_lightning.optim import available, load_net, pretrained
from l2l_lightning.optim.export import main as export_main
from l2l_lightning.optim.pretrained import export

from tests.conftest import tiny_learner, tiny_trainer

from .conftest import SHIPPED_DIR, quiet_trainer


def same_net(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return a.config == b.config and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_writes_a_plain_file_with_weights_settings_and_metadata(meta_trained, tmp_path):
    net, ckpt = meta_trained
    out = export(ckpt, tmp_path / "q.pt", description="test export")
    record = torch.load(out, weights_only=True)  # no pickled objects in an exported file
    assert record["format"] == pretrained.FORMAT and record["format_version"] == 1
    assert record["class_path"] == "l2l_lightning.nets.lstm.CoordinatewiseLSTM"
    assert record["init_args"] == net.config
    meta = record["metadata"]
    assert meta["global_step"] == 100
    assert meta["task"]["class_path"].endswith("QuadraticTask") and meta["task"]["init_args"]["num_problems"] == 32
    assert meta["hyper_parameters"]["num_steps"] == 100 and meta["hyper_parameters"]["unroll"] == 20
    assert set(meta["versions"]) >= {"torch", "lightning", "l2l_lightning"}
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["description"] == "test export"
    assert meta["fingerprint"] == pretrained.fingerprint(net)
    assert out.stat().st_size < 100_000  # a few thousand weights, not a training checkpoint
    assert same_net(load_net(out), net)
    assert same_net(load_net(ckpt), net)  # the Lightning checkpoint loads directly too
    with pytest.raises(CheckpointError, match="exists"):
        export(ckpt, out)
    export(ckpt, out, overwrite=True)


def test_export_records_validation_figures(tmp_path):
    tiny = tiny_learner()
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=None, val_check_interval=2)
    trainer.fit(tiny)  # MetaLearner's own ModelCheckpoint monitors val/mean_loss
    ckpt = trainer.checkpoint_callback.best_model_path
    assert ckpt.endswith(".ckpt")
    figures = pretrained.info(export(ckpt, tmp_path / "tiny.pt"))["validation"]
    (best,) = [f for f in figures if f["monitor"] == "val/mean_loss"]
    assert best["best_score"] == pytest.approx(float(trainer.checkpoint_callback.best_model_score))


def test_names_resolve_from_the_pretrained_directory(meta_trained, pretrained_dir):
    net, ckpt = meta_trained
    assert available() == []
    with pytest.raises(CheckpointError, match="unknown pretrained optimizer 'quadratic'.*none are installed"):
        load_net("quadratic")
    export(ckpt, pretrained_dir / "quadratic.pt")
    export(ckpt, pretrained_dir / "other-one.pt")
    (pretrained_dir / "notes.txt").write_text("not an optimizer")
    assert available() == ["other-one", "quadratic"]
    assert same_net(load_net("quadratic"), net)
    with pytest.raises(CheckpointError, match=r"optimizer 'mnist'; available: 'other-one', 'quadratic'"):
        LearnedOptimizer([torch.nn.Parameter(torch.zeros(2))], checkpoint="mnist")


def test_a_bare_name_is_always_a_shipped_optimizer_and_never_a_file(meta_trained, pretrained_dir, tmp_path, monkeypatch):
    net, ckpt = meta_trained
    export(ckpt, pretrained_dir / "quadratic.pt")
    monkeypatch.chdir(tmp_path)
    impostor = CoordinatewiseLSTM(hidden_size=4)
    export(_save_record(impostor, tmp_path / "impostor.pt"), tmp_path / "quadratic")  # ./quadratic, no suffix
    export(_save_record(impostor, tmp_path / "impostor.pt"), tmp_path / "mnist")
    assert same_net(load_net("quadratic"), net)  # the shipped one, whatever lies in the working directory
    assert same_net(load_net("./quadratic"), impostor) and same_net(load_net(tmp_path / "quadratic"), impostor)
    assert pretrained.info("quadratic")["fingerprint"] == pretrained.fingerprint(net)
    with pytest.raises(CheckpointError, match="unknown pretrained optimizer 'mnist'"):
        load_net("mnist")  # a bare name never falls back to the file ./mnist
    assert same_net(load_net("impostor.pt"), impostor)  # a suffix makes it a path


def _save_record(net, path):
    torch.save({**_record(), "init_args": net.config, "state_dict": net.state_dict()}, path)
    return path


def test_the_shipped_directory_is_inside_the_package_and_declared_as_package_data():
    import tomllib

    import l2l_lightning

    package = pathlib.Path(l2l_lightning.__file__).resolve().parent
    assert SHIPPED_DIR == package / "pretrained" and SHIPPED_DIR.is_dir()
    pyproject = package.parent / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("installed as a wheel: no pyproject.toml next to the package")
    globs = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["l2l_lightning"]
    assert "pretrained/*.pt" in globs  # without it a wheel would ship no trained optimizer


def test_export_command(meta_trained, pretrained_dir, capsys):
    _, ckpt = meta_trained
    assert export_main([str(ckpt), "quadratic", "--description", "from the test"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert pretrained.info("quadratic")["description"] == "from the test"
    assert export_main([str(ckpt), "quadratic"]) == 2
    assert "exists" in capsys.readouterr().err
    assert export_main([str(ckpt), "quadratic", "--overwrite"]) == 0
    target = pretrained_dir.parent / "elsewhere" / "mine.pt"
    assert export_main([str(ckpt), str(target)]) == 0 and target.is_file()
    assert export_main([str(pretrained_dir / "missing.ckpt"), "x"]) == 2
    assert "no such file" in capsys.readouterr().err


class _Touch:
    """Unpickling this would create a file: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_files_that_are_not_trained_optimizers_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"not a learned optimizer.*dict with keys \['weight'\]"):
        load_net(tmp_path / "weights.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot be read by torch.load"):
        load_net(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="no such file"):
        load_net(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="expected a pretrained name, a path or a net"):
        load_net(3)

    marker = tmp_path / "executed"
    torch.save({"payload": _Touch(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="holds pickled Python objects"):
        load_net(tmp_path / "evil.pt")
    assert not marker.exists()  # never unpickled in full (nor a .ckpt: tests/test_safe_load.py)

    bad_version = {**_record(), "format_version": 99}
    torch.save(bad_version, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_net(tmp_path / "future.pt")
    wrong_weights = _record()
    wrong_weights["state_dict"] = {"output.weight": torch.zeros(1, 3)}
    torch.save(wrong_weights, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        load_net(tmp_path / "wrong.pt")
    not_a_module = {**_record(), "class_path": "l2l_lightning.errors.L2LError"}  # allowed module, not a net
    torch.save(not_a_module, tmp_path / "class.pt")
    with pytest.raises(CheckpointError, match="not a learned-optimizer net"):
        load_net(tmp_path / "class.pt")


def _record():
    net = CoordinatewiseLSTM(hidden_size=4)
    return {
        "format": pretrained.FORMAT,
        "format_version": 1,
        "class_path": "l2l_lightning.nets.lstm.CoordinatewiseLSTM",
        "init_args": net.config,
        "state_dict": net.state_dict(),
        "metadata": {},
    }


def test_a_lightning_checkpoint_of_another_module_is_refused(tmp_path):
    trainer = quiet_trainer(max_steps=1, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "boring.ckpt")
    with pytest.raises(CheckpointError, match="Lightning checkpoint.*not of l2l_lightning.MetaLearner"):
        load_net(tmp_path / "boring.ckpt")
    with pytest.raises(CheckpointError, match="not of l2l_lightning.MetaLearner"):
        export(tmp_path / "boring.ckpt", tmp_path / "boring.pt")
    assert not (tmp_path / "boring.pt").exists()


def test_export_runs_as_a_module(meta_trained, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "from_cli.pt"
    result = subprocess.run(
        [sys.executable, "-m", "l2l_lightning.optim.export", str(meta_trained[1]), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out}" in result.stdout
    assert same_net(load_net(out), meta_trained[0])


def test_an_lstm_gac_meta_trains_exports_and_loads_by_name(tmp_path, pretrained_dir):
    """LSTM+GAC through the whole pipeline: meta-training, checkpoint, export, name, LearnedOptimizer."""
    from l2l_lightning import GlobalAveragingLSTM

    learner = tiny_learner(net=GlobalAveragingLSTM(hidden_size=4, preprocess="none", global_cells=2, average_over="tensor"))
    trainer = tiny_trainer(tmp_path, max_steps=4)
    trainer.fit(learner)
    ckpt = tmp_path / "gac.ckpt"
    trainer.save_checkpoint(ckpt)
    export(ckpt, pretrained_dir / "gac.pt")
    loaded = load_net("gac")
    assert isinstance(loaded, GlobalAveragingLSTM) and loaded.config == learner.net.config
    model = torch.nn.Linear(3, 2)
    optimizer = LearnedOptimizer(model.parameters(), checkpoint="gac")
    model(torch.randn(5, 3)).square().sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert optimizer.state_dict()["l2l_net"]["init_args"]["average_over"] == "tensor"

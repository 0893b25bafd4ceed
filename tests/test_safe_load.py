"""Files are read without running code from them and written so that a crash loses nothing.

Every entry point that takes a file (``LearnedOptimizer(checkpoint=...)``, ``l2l compare
--learned``, ``l2l-export``) must refuse a file that would run code when unpickled or import a
module it names, and say how to make a safe file.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from l2l_lightning import CheckpointError, CoordinatewiseLSTM, LearnedOptimizer, QuadraticTask, RoutedNets
from l2l_lightning import safe_load
from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO
from l2l_lightning.cli import main as l2l_main
from l2l_lightning.compare import compare
from l2l_lightning.optim import load_net, pretrained
from l2l_lightning.optim.export import main as export_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Touch:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture
def evil_ckpt(tmp_path):
    """A ``.ckpt`` shaped like a Lightning checkpoint whose unpickling would create ``marker``."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": _Touch(marker)}, path)
    return path, marker


def _load_with_learned_optimizer(path):
    LearnedOptimizer([nn.Parameter(torch.zeros(2))], checkpoint=path)


def _load_with_compare(path):
    compare([str(path)], QuadraticTask(dim=2, num_problems=1), num_steps=2, num_problems=1, baselines=[], out_dir=None,
            progress=False)  # fmt: skip


def _load_with_export(path):
    pretrained.export(path, path.parent / "out.pt")


@pytest.mark.parametrize("load", [_load_with_learned_optimizer, _load_with_compare, _load_with_export])
def test_a_ckpt_holding_pickled_objects_is_refused_without_running_them(evil_ckpt, load):
    path, marker = evil_ckpt
    with pytest.raises(CheckpointError, match="holds pickled Python objects.*never unpickles.*l2l-export") as info:
        load(path)
    assert "system" in str(info.value) or "touch" in str(info.value) or "GLOBAL" in str(info.value)
    assert not marker.exists()
    assert not (path.parent / "out.pt").exists()


def test_the_command_lines_refuse_it_in_one_line(evil_ckpt, capsys):
    path, marker = evil_ckpt
    with pytest.raises(SystemExit) as exit_info:
        l2l_main(["compare", "--learned", f"[{path}]", "--task", "l2l_lightning.QuadraticTask", "--baselines", "[]",
                  "--out_dir", "null", "--progress", "false"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("l2l: error: ") and "holds pickled Python objects" in err and "Traceback" not in err
    assert export_main([str(path), str(path.parent / "out.pt")]) == 2
    assert "holds pickled Python objects" in capsys.readouterr().err
    assert not marker.exists() and not (path.parent / "out.pt").exists()


@pytest.mark.parametrize("content", ["random", "truncated", "empty"])
def test_unreadable_files_get_one_clear_error(tmp_path, content):
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
    data = {"random": bytes(range(128, 256)) + os.urandom(1000), "truncated": path.read_bytes()[:300], "empty": b""}[content]
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="cannot be read by torch.load.*truncated or corrupt") as error:
        load_net(path)
    # torch's own text advises re-running with weights_only=False: never pass that on for a file of unknown origin
    assert "weights_only" not in str(error.value) and "Re-running" not in str(error.value)
    with pytest.raises(CheckpointError, match="is a folder"):
        safe_load.load_plain(tmp_path)


# ------------------------------------------------------------------ class paths named by files
@pytest.fixture
def foreign_module(tmp_path, monkeypatch):
    """An importable module ``l2l_test_foreign`` whose import creates ``imported``, with a net class ``Net``."""
    marker = tmp_path / "imported"
    (tmp_path / "l2l_test_foreign.py").write_text(
        textwrap.dedent(f"""
            import pathlib
            from l2l_lightning import CoordinatewiseLSTM
            pathlib.Path({str(marker)!r}).touch()

            class Net(CoordinatewiseLSTM):
                pass
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "l2l_test_foreign", raising=False)
    monkeypatch.delenv(safe_load.ALLOWED_MODULES_ENV, raising=False)
    monkeypatch.setattr(safe_load, "_allowed_by_call", set())
    yield marker
    sys.modules.pop("l2l_test_foreign", None)


def _exported(class_path, net=None, **spec):
    net = net if net is not None else CoordinatewiseLSTM(hidden_size=4)
    return {
        "format": pretrained.FORMAT,
        "format_version": 1,
        "class_path": class_path,
        "init_args": spec.get("init_args", net.config),
        "state_dict": net.state_dict(),
        "metadata": {},
    }


def test_a_file_naming_a_module_outside_the_allowed_ones_is_refused_before_importing_it(
    foreign_module, tmp_path, monkeypatch
):
    torch.save(_exported("l2l_test_foreign.Net"), tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"'l2l_test_foreign\.Net'.*L2L_ALLOWED_MODULES=l2l_test_foreign"):
        LearnedOptimizer([nn.Parameter(torch.zeros(2))], checkpoint=tmp_path / "foreign.pt")
    assert not foreign_module.exists() and "l2l_test_foreign" not in sys.modules

    monkeypatch.setenv(safe_load.ALLOWED_MODULES_ENV, "otherpkg, l2l_test_foreign")
    assert type(load_net(tmp_path / "foreign.pt")).__name__ == "Net" and foreign_module.exists()


def test_allow_modules_from_python_and_nested_specs_are_checked_too(foreign_module, tmp_path):
    inner = CoordinatewiseLSTM(hidden_size=4)
    routed = RoutedNets({"a": inner}, {"a": ["*"]})
    record = _exported("l2l_lightning.nets.routed.RoutedNets", net=routed)
    record["init_args"]["nets"]["a"]["class_path"] = "l2l_test_foreign.Net"  # hidden inside the settings
    torch.save(record, tmp_path / "routed.pt")
    with pytest.raises(CheckpointError, match=r"'l2l_test_foreign\.Net'"):
        load_net(tmp_path / "routed.pt")
    assert not foreign_module.exists()

    safe_load.allow_modules("l2l_test_foreign")
    assert "l2l_test_foreign" in safe_load.allowed_modules()
    assert isinstance(load_net(tmp_path / "routed.pt"), RoutedNets) and foreign_module.exists()
    with pytest.raises(CheckpointError, match="not a module name"):
        safe_load.allow_modules("")


def test_a_module_merely_sharing_a_prefix_is_not_allowed(monkeypatch):
    monkeypatch.delenv(safe_load.ALLOWED_MODULES_ENV, raising=False)
    assert safe_load.is_allowed("l2l_lightning.nets.lstm.CoordinatewiseLSTM")
    assert not safe_load.is_allowed("l2l_lightning_evil.Net")
    assert not safe_load.is_allowed("os.system")


# ------------------------------------------------------------------ writes
def kill_during_save(script: str, cwd: pathlib.Path) -> None:
    """Run ``script`` in a child whose file-writing ``torch.save`` writes half its bytes and hangs,
    then SIGKILL it there: a process killed mid-write.  (Saves into memory buffers run normally.)"""
    ready = cwd / "half_written"
    prelude = textwrap.dedent(f"""
        import io, pathlib, time, torch
        _save = torch.save
        def _half_then_hang(obj, f, *args, **kwargs):
            if isinstance(f, io.BytesIO):
                return _save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            _save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            handle = f if hasattr(f, "write") else open(f, "wb")
            handle.write(data[: len(data) // 2])
            handle.flush()
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(3600)
        torch.save = _half_then_hang
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(script)], cwd=cwd, env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # a generous bound for a slow machine, not a timing assertion
        while not ready.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before writing: {child.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the child never started writing")
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()


def test_an_export_killed_mid_write_leaves_the_previous_file_intact(tmp_path):
    net = CoordinatewiseLSTM(hidden_size=4)
    torch.save(_exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM", net=net), tmp_path / "source.pt")
    old = pretrained.export(tmp_path / "source.pt", tmp_path / "shipped.pt")
    before = old.read_bytes()
    torch.manual_seed(7)
    torch.save(_exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM", net=CoordinatewiseLSTM(hidden_size=4)),
               tmp_path / "newer.pt")  # fmt: skip
    kill_during_save(
        """
        from l2l_lightning.optim.pretrained import export
        export("newer.pt", "shipped.pt", overwrite=True)
        """,
        tmp_path,
    )
    (partial,) = tmp_path.glob(".shipped.pt.*.tmp")  # killed while writing next to the file
    assert partial.stat().st_size > 0
    assert old.read_bytes() == before
    assert pretrained.fingerprint(load_net(old)) == pretrained.fingerprint(net)

    # the next save to that target removes what the killed one left, and nothing else
    (tmp_path / ".other.pt.0123456789ab.tmp").write_text("another target's")
    pretrained.export(tmp_path / "newer.pt", old, overwrite=True)
    assert not partial.exists() and (tmp_path / ".other.pt.0123456789ab.tmp").exists()
    assert not list(tmp_path.glob(".shipped.pt.*.tmp"))


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_saved_files_get_the_permissions_of_an_ordinary_open(tmp_path, umask_022):
    """``tempfile.mkstemp`` creates 0600 files: a run's exports and checkpoints were private on a shared cluster."""
    with open(tmp_path / "ordinary", "w"):
        pass
    ordinary = (tmp_path / "ordinary").stat().st_mode & 0o777
    assert ordinary == 0o644
    safe_load.atomic_save({"x": torch.zeros(1)}, tmp_path / "new.pt")
    assert (tmp_path / "new.pt").stat().st_mode & 0o777 == ordinary
    os.chmod(tmp_path / "new.pt", 0o640)  # an existing file keeps its mode, as with open(path, "w")
    safe_load.atomic_save({"x": torch.ones(1)}, tmp_path / "new.pt")
    assert (tmp_path / "new.pt").stat().st_mode & 0o777 == 0o640
    torch.save(_exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM"), tmp_path / "source.pt")
    assert export_main([str(tmp_path / "source.pt"), str(tmp_path / "exported.pt")]) == 0
    assert (tmp_path / "exported.pt").stat().st_mode & 0o777 == 0o644


def test_export_refuses_folders_bad_paths_and_empty_names(tmp_path, capsys):
    torch.save(_exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM"), tmp_path / "source.pt")
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = {
        str(tmp_path / "folder"): "is a folder",
        str(tmp_path / "a_file" / "out.pt"): "cannot write",
        "": "output NAME is empty",
        " ": "output NAME is empty",
    }
    for target, message in cases.items():
        assert export_main([str(tmp_path / "source.pt"), target]) == 2, target
        err = capsys.readouterr().err
        assert err.startswith("l2l-export: error: ") and message in err and "Traceback" not in err, (target, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "folder", "source.pt"]
    assert list((tmp_path / "folder").iterdir()) == []


def test_a_meta_learner_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path):
    """Lightning's own save (this version) is not enough: it writes a temporary file in the system's
    temp folder and moves it, a copy over the old checkpoint when that folder is on another file
    system, and never fsyncs.  The ``l2l`` command saves through AtomicCheckpointIO instead."""
    from tests.conftest import tiny_learner, tiny_trainer

    from l2l_lightning import MetaLearner

    trainer = tiny_trainer(tmp_path, max_steps=2, plugins=[AtomicCheckpointIO()])
    trainer.fit(tiny_learner())
    trainer.save_checkpoint(tmp_path / "meta.ckpt")
    before = (tmp_path / "meta.ckpt").read_bytes()
    kill_during_save(
        """
        import torch
        from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO
        from tests.conftest import tiny_learner, tiny_trainer
        trainer = tiny_trainer(".", max_steps=4, plugins=[AtomicCheckpointIO()], enable_checkpointing=False)
        trainer.fit(tiny_learner())
        trainer.save_checkpoint("meta.ckpt")
        """,
        tmp_path,
    )
    (partial,) = tmp_path.glob(".meta.ckpt.*.tmp")  # killed while writing next to the checkpoint
    assert 0 < partial.stat().st_size < len(before)
    assert (tmp_path / "meta.ckpt").read_bytes() == before
    restored = MetaLearner.load_from_checkpoint(tmp_path / "meta.ckpt")
    assert torch.load(tmp_path / "meta.ckpt", weights_only=True)["global_step"] == 2
    assert restored.net.spec == tiny_learner().net.spec

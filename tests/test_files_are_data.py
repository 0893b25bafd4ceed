"""Files are data, everywhere (issue 17): the regression wall.

Three ways a file's contents ran code, each reproduced with a module whose import leaves a
marker file, and the marker is asserted absent:

1. ``--ckpt_path http://…``: Lightning unpickles http(s) checkpoints (``weights_only=False``);
2. specs nested deeper than the old walk (11 levels of ``RoutedNets``), in every loader;
3. ``MetaLearner.load_from_checkpoint``: jsonargparse imported whatever the checkpoint's task,
   estimator, imitation or meta-optimizer named (a string as well as a spec).

Then: ``registry…`` file names, nets of absurd size, stored fingerprints, and every CLI user
error the issue lists, each one ``l2l: error:`` line with exit code 2.
"""

from __future__ import annotations

import functools
import http.server
import re
import sys
import textwrap
import threading
import uuid

import pytest
import torch
from torch import nn

from l2l_lightning import CheckpointError, ConfigError, CoordinatewiseLSTM, LearnedOptimizer, MetaLearner, safe_load
from l2l_lightning import LearnedOptimizerCallback
from l2l_lightning.cli import main as l2l_main
from l2l_lightning.meta.checkpoint_io import AtomicCheckpointIO
from l2l_lightning.optim import load_net, pretrained
from l2l_lightning.optim.export import main as export_main
from l2l_lightning.serialization import MAX_NET_NUMEL, NET_KEY
from tests.conftest import tiny_learner, tiny_trainer
from tests.test_cli import CONFIG, FAST
from tests.test_safe_load import _exported, _load_with_compare, _load_with_export, _load_with_learned_optimizer, _Touch

EVIL = "l2l_evil_module"
ROUTED = "l2l_lightning.nets.routed.RoutedNets"


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """An importable module ``l2l_evil_module`` whose import creates the returned marker file; it
    defines a net, a task, an estimator and an optimizer, so every role a file names can point at it."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / f"{EVIL}.py").write_text(
        textwrap.dedent(f"""
            import pathlib
            import torch
            from l2l_lightning import CoordinatewiseLSTM, QuadraticTask
            from l2l_lightning.meta.estimators import TruncatedBPTT
            pathlib.Path({str(marker)!r}).touch()
            SCALE = torch.ones(1)  # a module-level tensor: must not land on the meta device

            class Net(CoordinatewiseLSTM): pass
            class Task(QuadraticTask): pass
            class Estimator(TruncatedBPTT): pass
            class Opt(torch.optim.Adam): pass
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL, raising=False)
    monkeypatch.delenv(safe_load.ALLOWED_MODULES_ENV, raising=False)
    monkeypatch.setattr(safe_load, "_allowed_by_call", set())
    yield marker
    sys.modules.pop(EVIL, None)


def _one_line_error(capsys, prog="l2l"):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _refused_unrun(load, marker, match):
    """``load()`` raises a ``CheckpointError`` matching ``match`` and ``marker`` was not created; the
    marker is checked first, so on code that runs the file the failure says so."""
    try:
        load()
    except Exception as error:  # noqa: BLE001 - its type is asserted below, after the marker
        caught = error
    else:
        caught = None
    assert not marker.exists(), "the file ran code: its module was imported or its pickle run"
    assert isinstance(caught, CheckpointError) and re.search(match, str(caught)), repr(caught)


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        l2l_main(args)
    assert exit_info.value.code == 2
    return _one_line_error(capsys)


def _meta_checkpoint(tmp_path, name="meta.ckpt"):
    """A real MetaLearner checkpoint (no training), loaded back as plain data for editing."""
    path = tmp_path / name
    trainer = tiny_trainer(tmp_path, max_steps=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(tiny_learner())
    trainer.save_checkpoint(path)
    return path, torch.load(path, weights_only=True)


# ------------------------------------------------------------------ 1. URLs
@pytest.fixture
def evil_server(tmp_path):
    """``http://127.0.0.1:PORT/evil.ckpt``: a Lightning-shaped checkpoint whose unpickling creates a marker,
    served locally; ``requests`` lists the paths asked for."""
    marker = tmp_path / "UNPICKLED"
    served = tmp_path / "served"
    served.mkdir()
    name = f"evil-{uuid.uuid4().hex}.ckpt"  # a fresh name: torch.hub caches downloads by file name
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", NET_KEY: {}, "x": _Touch(marker)},
               served / name)  # fmt: skip
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{name}", marker, requests
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("subcommand", ["test", "validate", "fit"])
def test_a_checkpoint_url_is_refused_in_one_line_and_never_fetched(evil_server, tmp_path, capsys, subcommand):
    url, marker, requests = evil_server
    line = _cli([subcommand, "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
                 "--ckpt_path", url], capsys)  # fmt: skip
    assert not marker.exists() and requests == []
    assert "is a URL" in line and "download it first" in line


def test_a_file_url_is_refused_and_names_the_path_to_pass(tmp_path, capsys):
    line = _cli(["test", "--config", CONFIG, "--ckpt_path", f"file://{tmp_path}/x.ckpt"], capsys)
    assert f"pass the path itself ({tmp_path}/x.ckpt)" in line


def test_every_python_loader_refuses_urls_too(evil_server):
    url, marker, requests = evil_server
    loaders = [
        lambda: MetaLearner.load_from_checkpoint(url),
        lambda: LearnedOptimizer([nn.Parameter(torch.zeros(2))], checkpoint=url),
        lambda: AtomicCheckpointIO().load_checkpoint(url),
        lambda: safe_load.load_plain(url),
    ]
    for load in loaders:
        _refused_unrun(load, marker, "is a URL; l2l_lightning reads local files only")
    assert requests == []


# ------------------------------------------------------------------ registry
def test_a_file_named_registry_something_is_checked_like_any_file(tmp_path, capsys, monkeypatch):
    """Lightning treats only ``registry`` and ``registry:…`` specially (and only with litmodels installed)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's default would unpickle now
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "UNPICKLED"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": _Touch(marker)}, "registry_x.ckpt")
    line = _cli(["test", "--config", CONFIG, *FAST, "--ckpt_path", "registry_x.ckpt"], capsys)
    assert not marker.exists() and "registry_x.ckpt holds pickled Python objects" in line
    _refused_unrun(lambda: MetaLearner.load_from_checkpoint("registry_x.ckpt"), marker, "holds pickled Python objects")


def test_checkpoints_lightning_reads_for_l2l_are_plain_data_whatever_torch_is_told(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "UNPICKLED"
    torch.save({"x": _Touch(marker)}, tmp_path / "last.ckpt")
    load = functools.partial(AtomicCheckpointIO().load_checkpoint, tmp_path / "last.ckpt", weights_only=False)
    _refused_unrun(load, marker, "holds pickled Python objects")


# ------------------------------------------------------------------ 2. nesting
def _nested(levels, innermost):
    spec = {"class_path": innermost, "init_args": {}}
    for _ in range(levels):
        spec = {"class_path": ROUTED, "init_args": {"nets": {"a": spec}, "routes": {"a": ["*"]}}}
    return spec


@pytest.mark.parametrize("load", [_load_with_learned_optimizer, _load_with_compare, _load_with_export])
def test_a_deeply_nested_spec_in_an_exported_file_imports_nothing(evil, tmp_path, load):
    record = _exported(ROUTED)
    record.update(_nested(11, f"{EVIL}.Net"))
    torch.save(record, tmp_path / "deep.pt")
    _refused_unrun(lambda: load(tmp_path / "deep.pt"), evil, "nests its settings more than 16 levels deep")
    assert EVIL not in sys.modules


def test_a_deeply_nested_spec_in_a_checkpoint_imports_nothing(evil, tmp_path, capsys):
    path, checkpoint = _meta_checkpoint(tmp_path)
    checkpoint[NET_KEY] = _nested(11, f"{EVIL}.Net")
    torch.save(checkpoint, path)
    _refused_unrun(lambda: load_net(path), evil, "levels deep")
    _refused_unrun(lambda: LearnedOptimizerCallback(checkpoint=path), evil, "levels deep")
    # what the trainer calls for `l2l fit|test --ckpt_path`
    _refused_unrun(lambda: tiny_learner().on_load_checkpoint(checkpoint), evil, "levels deep")
    assert export_main([str(path), str(tmp_path / "out.pt")]) == 2
    assert not evil.exists() and "levels deep" in _one_line_error(capsys, "l2l-export")
    for subcommand in ("test", "fit"):
        line = _cli([subcommand, "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
                     "--ckpt_path", str(path)], capsys)  # fmt: skip
        assert not evil.exists() and "levels deep" in line
    with pytest.raises(ConfigError, match="init_from=.*levels deep"):
        tiny_learner(init_from=str(path))
    assert not evil.exists()
    checkpoint["hyper_parameters"]["net"] = checkpoint.pop(NET_KEY)
    checkpoint[NET_KEY] = tiny_learner().net.spec
    torch.save(checkpoint, path)
    _refused_unrun(lambda: MetaLearner.load_from_checkpoint(path), evil, "levels deep")
    assert EVIL not in sys.modules


def test_the_nesting_bound_is_a_refusal_not_a_walk_limit():
    deepest = {"class_path": "l2l_lightning.CoordinatewiseLSTM"}
    for _ in range(safe_load.MAX_NESTING - 1):  # MAX_NESTING levels of dicts and lists
        deepest = [deepest]
    safe_load.check_spec_allowed(deepest, "f.pt")  # exactly the bound: walked to the bottom
    with pytest.raises(CheckpointError, match="more than 16 levels deep"):
        safe_load.check_spec_allowed([deepest], "f.pt")
    # the project's own deepest, a RoutedNets in a checkpoint's hyper-parameters, is far inside it
    safe_load.check_spec_allowed({"net": _nested(2, "l2l_lightning.CoordinatewiseLSTM")}, "f.ckpt")


# ------------------------------------------------------------------ 3. hyper-parameters
@pytest.mark.parametrize(
    "key, value",
    [
        ("task", {"class_path": f"{EVIL}.Task", "init_args": {"dim": 3}}),
        ("task", f"{EVIL}.Task"),  # jsonargparse imports a bare string where a class is expected
        ("estimator", {"class_path": f"{EVIL}.Estimator"}),
        ("imitation", {"class_path": f"{EVIL}.Task"}),
        ("meta_optimizer", {"class_path": f"{EVIL}.Opt", "init_args": {"lr": 0.1}}),
        ("net", {"class_path": ROUTED, "init_args": {"nets": {"a": f"{EVIL}.Net"}, "routes": {"a": ["*"]}}}),
    ],
)
def test_load_from_checkpoint_imports_nothing_its_hyper_parameters_name(evil, tmp_path, key, value):
    path, checkpoint = _meta_checkpoint(tmp_path)
    checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, path)
    match = rf"hyper-parameter '{key}'\) names the class '{EVIL}\.\w+'.*L2L_ALLOWED_MODULES"
    _refused_unrun(lambda: MetaLearner.load_from_checkpoint(path), evil, match)
    assert EVIL not in sys.modules


def test_hyper_parameters_the_caller_gives_are_not_read_and_allowed_modules_load(evil, tmp_path):
    path, checkpoint = _meta_checkpoint(tmp_path)
    checkpoint["hyper_parameters"]["task"] = {"class_path": f"{EVIL}.Task", "init_args": {"dim": 3, "num_problems": 4}}
    torch.save(checkpoint, path)
    learner = tiny_learner()
    assert MetaLearner.load_from_checkpoint(path, task=learner.task).task is learner.task
    assert not evil.exists()
    safe_load.allow_modules(EVIL)
    assert type(MetaLearner.load_from_checkpoint(path).task).__name__ == "Task" and evil.exists()


def test_an_allowed_module_imported_by_a_file_is_imported_normally(evil, tmp_path):
    """The size check builds the net on the meta device; the module must be imported outside it."""
    torch.save(_exported(f"{EVIL}.Net"), tmp_path / "mine.pt")
    safe_load.allow_modules(EVIL)
    assert type(load_net(tmp_path / "mine.pt")).__name__ == "Net" and evil.exists()
    assert sys.modules[EVIL].SCALE.device.type == "cpu"


def test_a_torch_optimizer_and_the_projects_own_classes_still_load(tmp_path):
    path, checkpoint = _meta_checkpoint(tmp_path)
    assert checkpoint["hyper_parameters"]["meta_optimizer"]["class_path"] == "torch.optim.adam.Adam"
    assert MetaLearner.load_from_checkpoint(path).net.spec == tiny_learner().net.spec


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: c.pop("hyper_parameters"), "its hyper_parameters are missing"),
        (lambda c: c.update(hyper_parameters="task: x"), "its hyper_parameters are str, not a dict"),
        (lambda c: c.pop("state_dict"), "has no state_dict"),
        (lambda c: c.pop(NET_KEY), "is not a checkpoint of l2l_lightning.MetaLearner"),
    ],
)
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, damage, message):
    path, checkpoint = _meta_checkpoint(tmp_path)
    damage(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises((CheckpointError, ValueError), match=message) as info:
        MetaLearner.load_from_checkpoint(path)
    assert str(path) in str(info.value)


def test_hyper_parameters_of_the_wrong_type_are_one_clear_error(tmp_path):
    path, checkpoint = _meta_checkpoint(tmp_path)
    checkpoint["hyper_parameters"]["num_steps"] = "abc"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=r"meta.ckpt: its hyper-parameters do not fit MetaLearner: .*num_steps"):
        MetaLearner.load_from_checkpoint(path)


# ------------------------------------------------------------------ sizes and fingerprints
def test_a_net_of_absurd_size_is_refused_before_anything_is_allocated(tmp_path, capsys):
    record = _exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM")
    record["init_args"] = {**record["init_args"], "hidden_size": 200_000}
    torch.save(record, tmp_path / "huge.pt")
    match = rf"huge.pt: its net .* would have 480,003,400,001 weights, more than the {MAX_NET_NUMEL:,}"
    with pytest.raises(CheckpointError, match=match):
        LearnedOptimizer([nn.Parameter(torch.zeros(2))], checkpoint=tmp_path / "huge.pt")
    assert export_main([str(tmp_path / "huge.pt"), str(tmp_path / "out.pt")]) == 2
    assert "refused before allocating" in _one_line_error(capsys, "l2l-export")
    path, checkpoint = _meta_checkpoint(tmp_path)
    checkpoint["hyper_parameters"]["net"]["init_args"]["hidden_size"] = 200_000
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="refused before allocating"):
        MetaLearner.load_from_checkpoint(path)


def test_an_export_whose_weights_changed_is_refused_naming_the_file(tmp_path, capsys):
    torch.save(_exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM"), tmp_path / "source.pt")
    exported = pretrained.export(tmp_path / "source.pt", tmp_path / "good.pt")
    record = torch.load(exported, weights_only=True)
    record["state_dict"]["output.bias"].view(torch.uint8)[0] ^= 0x01  # one flipped bit
    torch.save(record, tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match=r"flipped.pt: its weights do not match the fingerprint stored in it"):
        load_net(tmp_path / "flipped.pt")
    assert export_main([str(tmp_path / "flipped.pt"), str(tmp_path / "again.pt")]) == 2
    assert "do not match the fingerprint" in _one_line_error(capsys, "l2l-export")
    assert isinstance(load_net(exported), CoordinatewiseLSTM)  # the untouched file loads


def test_export_refuses_a_string_metadata_and_writing_over_its_own_input(tmp_path, capsys):
    record = _exported("l2l_lightning.nets.lstm.CoordinatewiseLSTM")
    record["metadata"] = "hello"
    torch.save(record, tmp_path / "stringy.pt")
    assert export_main([str(tmp_path / "stringy.pt"), str(tmp_path / "out.pt")]) == 2
    assert "its metadata must be a dict" in _one_line_error(capsys, "l2l-export")
    path, _ = _meta_checkpoint(tmp_path, "train.ckpt")
    before = path.read_bytes()
    assert export_main([str(path), str(path), "--overwrite"]) == 2
    assert "is the file being exported" in _one_line_error(capsys, "l2l-export")
    assert path.read_bytes() == before


def test_empty_names_and_folders_where_a_file_is_expected(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint='' is empty; give a pretrained name"):
        load_net("")
    with pytest.raises(CheckpointError, match="is a folder, not a file"):
        load_net(tmp_path)


# ------------------------------------------------------------------ the CLI: one line each
_PES = ["--model.estimator", "l2l_lightning.meta.estimators.PES"]
_GAC = ["--model.net", "l2l_lightning.nets.GlobalAveragingLSTM"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([*_PES, "--model.estimator.num_particles", "3"], "num_particles=3 must be even (antithetic pairs"),
        ([*_PES, "--model.estimator.num_particles", "0"], "num_particles=0 must be an integer >= 2, and even"),
        ([*_PES, "--model.estimator.num_particles", "-2"], "num_particles=-2 must be an integer >= 2, and even"),
        ([*_PES, "--model.estimator.sigma", "0"], "sigma=0.0 must be a positive finite number"),
        ([*_PES, "--model.estimator.sigma", "-1"], "sigma=-1.0 must be a positive finite number"),
        (["--model.net.init_args.hidden_size", "0"], "hidden_size=0 must be a positive integer"),
        (["--model.net.init_args.hidden_size", "-1"], "hidden_size=-1 must be a positive integer"),
        (["--model.net.init_args.output_scale", "-1"], "output_scale=-1.0 must be a positive finite number"),
        ([*_GAC, "--model.net.global_cells", "0"], "global_cells=0 must be an integer from 1 to 20 (the cells"),
        (["--model.meta_optimizer.init_args.lr", "-1"], "meta_optimizer: Invalid learning rate: -1.0"),
        (["--model.threads", "²"], "threads='²' must be a positive integer (that many intra-op threads) or 'auto'"),
        (["--model.init_from", ""], "init_from='': checkpoint='' is empty"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, capsys, args, message):
    line = _cli(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST, *args], capsys)
    assert message in line


def test_files_where_folders_are_expected_and_binary_configs_are_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    base = ["fit", "--config", CONFIG, *FAST]
    line = _cli([*base, "--trainer.default_root_dir", str(tmp_path / "a_file")], capsys)
    assert "--trainer.default_root_dir=" in line and "is a file, not a folder" in line
    line = _cli([*base, "--trainer.logger.init_args.save_dir", str(tmp_path / "a_file")], capsys)
    assert "--trainer.logger.init_args.save_dir=" in line and "is a file, not a folder" in line
    line = _cli([*base, "--trainer.logger.init_args.save_dir", str(tmp_path / "a_file" / "runs")], capsys)
    assert f"lies under {tmp_path / 'a_file'}, which is a file" in line
    for command in (["fit"], ["compare"]):
        line = _cli([*command, "--config", str(tmp_path / "binary.yaml")], capsys)
        assert "binary.yaml is not a text (YAML) file" in line
    line = _cli(["fit", "--config", CONFIG, *FAST, "--model.init_from", str(tmp_path)], capsys)
    assert "is a folder, not a file" in line


@pytest.mark.parametrize(
    "subcommand, keyword",
    [(s, k) for s in ("test", "validate") for k in ("best", "last", "hpc")] + [("fit", "best"), ("fit", "hpc")],
)
def test_a_checkpoint_keyword_with_no_such_checkpoint_is_an_error(tmp_path, capsys, keyword, subcommand):
    line = _cli([subcommand, "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
                 "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", keyword], capsys)  # fmt: skip
    assert f"--ckpt_path {keyword}" in line and "pass the checkpoint file instead" in line
    assert "test/mean_loss" not in capsys.readouterr().out  # nothing was evaluated


def test_fit_with_ckpt_path_last_and_no_checkpoint_still_starts_fresh(tmp_path):
    """Lightning's meaning, kept: ``last`` may be set before the first run."""
    l2l_main(["fit", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
              "--test_after_fit", "false", "--ckpt_path", "last"])  # fmt: skip
    assert list(tmp_path.glob("quadratic/version_0/checkpoints/last.ckpt"))


def test_last_is_resolved_as_lightning_does_then_checked_like_any_file(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    args = ["test", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath",
            str(folder), "--ckpt_path", "last"]  # fmt: skip
    marker = tmp_path / "UNPICKLED"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6", "x": _Touch(marker)}, folder / "last.ckpt")
    line = _cli(args, capsys)
    assert not marker.exists() and "last.ckpt holds pickled Python objects" in line
    (folder / "last.ckpt").unlink()
    _meta_checkpoint(folder, "last.ckpt")
    l2l_main(args)
    assert "test/mean_loss" in capsys.readouterr().out


def test_an_hpc_checkpoint_is_resolved_then_checked_like_any_file(tmp_path, capsys):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "hpc_ckpt_1.ckpt")
    line = _cli(["test", "--config", CONFIG, "--trainer.logger.init_args.save_dir", str(tmp_path), *FAST,
                 "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "hpc"], capsys)  # fmt: skip
    assert "hpc_ckpt_1.ckpt is not a Lightning checkpoint" in line


_COMPARE = ["compare", "--task", "l2l_lightning.QuadraticTask", "--baselines", "[]", "--num_steps", "2",
            "--num_problems", "1", "--progress", "false"]  # fmt: skip


def test_compare_refuses_duplicate_labels_a_missing_device_and_a_file_as_out_dir(tmp_path, capsys):
    line = _cli([*_COMPARE, "--learned", "[a=quadratic,a=quadratic]", "--out_dir", "null"], capsys)
    assert "two optimizers are labelled 'a'" in line
    line = _cli([*_COMPARE, "--learned", "[adam=quadratic]", "--baselines", "[adam]", "--out_dir", "null"], capsys)
    assert "two optimizers are labelled 'adam'" in line
    (tmp_path / "a_file").write_text("x")
    line = _cli([*_COMPARE, "--learned", "[quadratic]", "--out_dir", str(tmp_path / "a_file")], capsys)
    assert "compare: out_dir=" in line and "is a file, not a folder" in line
    if not torch.cuda.is_available():
        line = _cli([*_COMPARE, "--learned", "[quadratic]", "--out_dir", "null", "--device", "cuda"], capsys)
        assert "compare: device='cuda' is not available here" in line and "--device cpu" in line


def test_a_meta_learner_checkpoint_still_loads_everywhere(tmp_path):
    """Nothing that worked changes: a real checkpoint loads in each loader."""
    path, _ = _meta_checkpoint(tmp_path)
    assert load_net(path).spec == tiny_learner().net.spec
    assert MetaLearner.load_from_checkpoint(path).task.config == tiny_learner().task.config
    pretrained.export(path, tmp_path / "out.pt")
    assert load_net(tmp_path / "out.pt").spec == tiny_learner().net.spec


"""The READMEs run as written: every code block of ``README.md`` and ``l2l_lightning/pretrained/README.md``.

A block runs unless the line directly above its opening fence is ``<!-- not-run: REASON -->``
(a reason is required).  How each kind runs:

* ``bash`` / ``sh``: in a fresh folder holding links to the checkout's ``configs/`` and
  ``examples/``, under ``bash -euo pipefail``, with the checkout on ``PYTHONPATH``.  Heavy
  programs are tiny-sized by shell functions defined before the block (:data:`SHIMS`):
  ``l2l fit/validate/test`` and ``l2l compare`` get settings that make them take seconds
  (:func:`tiny_argv`: right after the configs, so the configs' sizes give way and the block's
  own flags still win: a block that asks for more epochs, say to resume, gets them);
  ``pip install`` of this project and ``apt-get install`` do nothing (the suite runs in the
  installed checkout, on a machine with the data); ``tensorboard`` does nothing.  Files a block
  names as the reader's own are provided: ``MY_PHOTO.jpg`` (a photograph of Debian's
  ``opencv-doc``) and ``my_app.py`` (a LightningCLI script with a small model).
* ``python``: executed with names a snippet takes from the reader's code already defined
  (:func:`_snippet_namespace`: ``model``, ``loader``, ``loss_fn``, ``L``, ``torch``), where
  ``L.Trainer`` stops after two steps.
* ``yaml``: a fragment of a ``MetaLearner`` config (``net:``, ``task:`` …), parsed by
  ``l2l fit --print_config`` on top of ``configs/quadratic.yaml``.

Any other block, a diagram say, must be marked not-run.  A pytest plugin for Markdown code
blocks was considered (pytest-codeblocks, pytest-markdown-docs); neither reads the project's
``not-run`` marker nor tiny-sizes shell commands, so this collector is ~150 lines of our own.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "l2l_lightning" / "pretrained" / "README.md")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")

#: Settings given to every ``l2l`` command of a block, by subcommand: seconds instead of minutes.
TINY = {
    "fit": "--trainer.max_epochs 2 --model.num_steps 4 --model.unroll 2 --model.truncations_per_epoch 1 "
    "--model.val_problems 1 --model.test_problems 1 --model.baseline_lrs [0.1] --trainer.log_every_n_steps 1 "
    "--trainer.enable_progress_bar false",
    "compare": "--num_problems 1 --tune_problems 1 --num_steps 4 --lrs [0.1] --progress false",
}
TINY["validate"] = TINY["test"] = TINY["fit"]


def tiny_argv(argv: list[str]) -> list[str]:
    """``l2l ARGV`` with :data:`TINY`'s settings after its last ``--config FILE`` (else after the subcommand)."""
    if not argv or argv[0] not in TINY:
        return argv
    at = max((i + 2 for i, token in enumerate(argv) if token == "--config"), default=1)
    return [*argv[:at], *TINY[argv[0]].split(), *argv[at:]]


def run_l2l(argv: list[str]) -> None:
    """The ``l2l`` of a README block: the real command, tiny-sized."""
    from l2l_lightning.cli import main

    sys.argv[1:] = tiny_argv(argv)
    main()


SHIMS = textwrap.dedent(
    """
    l2l() { "$L2L_PYTHON" -c 'import sys; from tests.test_readme import run_l2l; run_l2l(sys.argv[1:])' "$@"; }
    l2l-export() { "$L2L_PYTHON" -m l2l_lightning.optim.export "$@"; }
    python() { "$L2L_PYTHON" "$@"; }
    pip() {
        case "$*" in
            "install -e ."|"install -e .[test]") ;;  # installed already: the suite runs in this checkout
            *) echo "the README's pip command changed: $*" >&2; return 1 ;;
        esac
    }
    apt-get() { :; }      # the packaged data the README installs is on the machines that run the suite
    tensorboard() { :; }  # a viewer: nothing to check
    """
)

MY_APP = '''
"""A reader's LightningCLI script over a small model that leaves its optimizer to the command line."""
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.demos.boring_classes import BoringModel


class MyModel(BoringModel):
    configure_optimizers = None  # LightningCLI builds it from --optimizer / --lr_scheduler


LightningCLI(MyModel, trainer_defaults={"max_steps": 2, "logger": False, "enable_checkpointing": False,
                                        "enable_progress_bar": False, "enable_model_summary": False,
                                        "limit_val_batches": 0})
'''


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  #: of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  #: the reason, when marked

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}-{self.lang or 'plain'}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their ``not-run`` reasons."""
    lines = path.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        end = next(
            (j for j in range(index + 1, len(lines)) if lines[j].strip().startswith(match["fence"])
             and not lines[j].strip().strip(match["fence"][0])),
            None,
        )  # fmt: skip
        assert end is not None, f"{path}:{index + 1}: a code block that never closes"
        marker = NOT_RUN.match(lines[index - 1].strip()) if index else None
        found.append(Block(path, index + 1, match["lang"], "\n".join(lines[index + 1:end]) + "\n",
                           marker["reason"] if marker else None))  # fmt: skip
        index = end + 1
    return found


ALL = [block for path in READMES for block in blocks(path)]
#: Blocks that start meta-training or compare runs: seconds each, so "slow" like the other end-to-end tests.
HEAVY = re.compile(r"(^|[\s;&|(])(l2l\s|l2l-export|python\s+(examples|my_app)|python -m l2l_lightning)")


def _params():
    for block in ALL:
        marks = [pytest.mark.slow] if block.lang in ("bash", "sh") and HEAVY.search(block.code) else []
        yield pytest.param(block, id=block.id, marks=marks)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like the checkout's root, as a reader's shell would be in, whose outputs are thrown away."""
    for name in ("configs", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copy("/usr/share/doc/opencv-doc/examples/data/baboon.jpg", tmp_path / "MY_PHOTO.jpg")  # apt-get install opencv-doc
    (tmp_path / "my_app.py").write_text(MY_APP)
    return tmp_path


def _snippet_namespace() -> dict:
    """What a README snippet takes from the reader's code: a small LightningModule, its data, its loss."""
    import lightning
    import torch
    from lightning.pytorch.demos.boring_classes import BoringModel

    class TinyLightning:
        """``lightning`` itself, except that a ``Trainer`` stops after two steps and keeps no files."""

        Trainer = functools.partial(
            lightning.Trainer, max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, accelerator="cpu",
        )  # fmt: skip

        def __getattr__(self, name: str):
            return getattr(lightning, name)

    class Model(BoringModel):
        """A LightningModule whose forward is a Linear(32, 2), with a plain optimizer (no scheduler to drop)."""

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    model = Model()
    loader = [(torch.randn(8, 32), torch.randn(8, 2)) for _ in range(3)]
    return {"torch": torch, "L": TinyLightning(), "model": model, "loader": loader,
            "loss_fn": torch.nn.functional.mse_loss, "__name__": "readme_snippet"}  # fmt: skip


@pytest.mark.parametrize("block", _params())
def test_readme_block(block: Block, workdir: Path, monkeypatch) -> None:
    if block.not_run is not None:
        pytest.skip(f"not run: {block.not_run}")
    where = f"{block.id}: "
    if block.lang in ("bash", "sh"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "L2L_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
        script = f"set -euo pipefail\n{SHIMS}\n{block.code}"
        proc = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, where + f"exit code {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    elif block.lang == "python":
        monkeypatch.chdir(workdir)
        exec(compile(block.code, block.id, "exec"), _snippet_namespace())  # noqa: S102 - the project's own README
    elif block.lang == "yaml":
        import yaml

        from l2l_lightning.cli import main

        (workdir / "fragment.yaml").write_text(yaml.safe_dump({"model": yaml.safe_load(block.code)}))
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(ROOT / "configs" / "quadratic.yaml"), "--config", str(workdir / "fragment.yaml"),
                  "--print_config"])  # fmt: skip
        assert exit_info.value.code == 0, where + "the fragment does not parse as a MetaLearner config"
    else:
        pytest.fail(where + f"a {block.lang or 'plain'} block: mark it `<!-- not-run: REASON -->` on the line "
                    "directly above its fence, or give it a language this test runs (bash, python, yaml)")  # fmt: skip


def test_every_not_run_marker_sits_on_a_block():
    """A marker that drifted away from its block (a line in between) would leave the block unmarked: say so."""
    for path in READMES:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if NOT_RUN.match(line.strip()):
                following = lines[number + 1] if number + 1 < len(lines) else ""
                assert FENCE.match(following), f"{path}:{number + 1}: a not-run marker not directly above a code block"

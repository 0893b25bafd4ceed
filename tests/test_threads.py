"""The thread policy (l2l_lightning.threads): its decisions, and that MetaLearner and compare apply and restore it.

No timing here: the speed it buys is measured in benchmarks/busy_machine.py."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from l2l_lightning import ConfigError, QuadraticTask, threads
from l2l_lightning.threads import SMALL_WORK_ROWS, ThreadPolicy, check_threads, decide_threads, user_choice
from tests.conftest import tiny_learner, tiny_trainer


@pytest.mark.parametrize(
    "setting, rows, current, user, expected",
    [
        ("auto", 1_280, 2, None, 1),  # the README's quadratic: small ops, one thread
        ("auto", SMALL_WORK_ROWS - 1, 4, None, 1),
        ("auto", SMALL_WORK_ROWS, 2, None, None),  # big enough to share: torch's default stays
        ("auto", 15_910, 2, None, None),  # MNIST MLP: the second core pays
        ("auto", 1_280, 2, "OMP_NUM_THREADS=2", None),  # the user's explicit choice wins over auto
        ("auto", 1_280, 1, None, None),  # already one thread: nothing to change
        (3, 1_280, 2, None, 3),  # an explicit count is used as given, even over the user's env
        (3, 1_280, 2, "OMP_NUM_THREADS=1", 3),
        (2, 10**6, 2, None, None),  # already so
        ("4", 10, 2, None, 4),  # from a command line
    ],
)
def test_decisions(setting, rows, current, user, expected):
    assert decide_threads(setting, rows, current, user) == expected


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "two", "", None, "0"])
def test_bad_settings_say_what_is_allowed(bad):
    with pytest.raises(ConfigError, match=r"^threads=.* must be a positive integer \(that many intra-op threads\) or 'auto'"):
        check_threads(bad)


def test_bad_setting_is_refused_by_metalearner_and_compare():
    with pytest.raises(ConfigError, match="MetaLearner: threads=0"):
        tiny_learner(threads=0)
    from l2l_lightning.compare import compare

    with pytest.raises(ConfigError, match="compare: threads='many'"):
        compare(["quadratic"], QuadraticTask(dim=3, num_problems=2), threads="many", out_dir=None, progress=False)


def test_user_choice_is_detected(monkeypatch):
    monkeypatch.setattr(threads, "_THREADS_AT_IMPORT", 2)
    assert user_choice({"OMP_NUM_THREADS": "1"}, current=2) == "OMP_NUM_THREADS=1"
    assert user_choice({"MKL_NUM_THREADS": "3"}, current=2) == "MKL_NUM_THREADS=3"
    assert user_choice({"OMP_NUM_THREADS": ""}, current=2) is None
    assert user_choice({}, current=2) is None
    assert user_choice({}, current=1) == "torch.set_num_threads(1)"  # changed after import: the user's


@pytest.fixture
def default_two_threads(monkeypatch):
    """A process where nobody chose: two threads, torch's default (what `l2l fit` sees on a 2-core machine)."""
    for var in threads.THREAD_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "_THREADS_AT_IMPORT", 2)


class _Record(L.Callback):
    def __init__(self):
        self.seen = set()

    def on_train_batch_start(self, *args):
        self.seen.add(("train", torch.get_num_threads()))

    def on_validation_batch_start(self, *args):
        self.seen.add(("val", torch.get_num_threads()))

    def on_test_batch_start(self, *args):
        self.seen.add(("test", torch.get_num_threads()))


@pytest.mark.parametrize("setting, during", [("auto", 1), (3, 3)])
def test_metalearner_applies_the_policy_and_restores_it(tmp_path, default_two_threads, setting, during):
    learner = tiny_learner(threads=setting, val_problems=1)
    assert learner.hparams["threads"] == setting  # saved with the checkpoint's settings
    record = _Record()
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1, val_check_interval=2, callbacks=[record])
    trainer.fit(learner)
    assert torch.get_num_threads() == 2  # restored at teardown
    trainer.test(learner, verbose=False)  # a later stage re-applies the same decision
    assert torch.get_num_threads() == 2
    assert record.seen == {("train", during), ("val", during), ("test", during)}


def test_metalearner_keeps_the_users_choice(tmp_path, default_two_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    record = _Record()
    tiny_trainer(tmp_path, max_steps=2, callbacks=[record]).fit(tiny_learner())
    assert record.seen == {("train", 2)}


def test_compare_applies_and_restores(default_two_threads, monkeypatch):
    from l2l_lightning import compare as compare_module

    seen = []
    original = compare_module._run_all

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(compare_module, "_run_all", spy)
    compare_module.compare(["quadratic"], QuadraticTask(dim=3, num_problems=2), num_steps=3, num_problems=1,
                           baselines=["sgd"], lrs=[0.1], tune_problems=1, out_dir=None, progress=False)  # fmt: skip
    assert seen == [1] and torch.get_num_threads() == 2


def test_policy_restore_without_apply_is_harmless(default_two_threads):
    policy = ThreadPolicy("auto")
    policy.apply()  # nothing decided yet: no size known
    policy.restore()
    assert torch.get_num_threads() == 2 and policy.decided is None

"""Finished runs on disk, so that a new optimizer runs alone and an interrupted bench resumes.

A run is deterministic given the task's config, the optimizer (a baseline's name, a class
path, or a learned net's weight fingerprint), the schedule, the learning rate and the seed;
those make the file name.  The package version is stored *inside* the entry: an entry written
by another version is ignored (with a note, once per version) and overwritten, since the
models, data streams or loop may have changed.  Entries are written atomically, one per
run, as soon as the run ends: killing a bench loses at most the run in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

from l2l_lightning.bench.runner import Run
from l2l_lightning.version import __version__


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/l2l-lightning/bench`` (``~/.cache/...``): shared by every out folder."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "l2l-lightning" / "bench"


class RunCache:
    """Runs keyed by (task config, optimizer identity, schedule, lr, seed); ``folder=None`` caches nothing."""

    def __init__(self, folder: Optional[Path], note: Callable[[str], None] = print, version: str = __version__) -> None:
        self.folder, self.note, self.version = folder, note, version
        self._noted: set[str] = set()
        self.hits = self.misses = 0

    def _path(self, task_key: str, identity: str, schedule: str, lr: float, seed: int) -> Path:
        name = hashlib.sha256(json.dumps([task_key, identity, schedule, repr(float(lr)), seed]).encode()).hexdigest()[:24]
        return self.folder / task_key / f"{name}.json"

    def get(self, task_key: str, identity: str, schedule: str, lr: float, seed: int) -> Optional[Run]:
        if self.folder is None:
            return None
        path = self._path(task_key, identity, schedule, lr, seed)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            self.misses += 1
            return None
        if entry.get("version") != self.version:
            other = str(entry.get("version"))
            if other not in self._noted:
                self._noted.add(other)
                self.note(f"note: cached runs from l2l-lightning {other} are ignored (this is {self.version}); they are run again")
            self.misses += 1
            return None
        self.hits += 1
        return Run.from_json(entry["run"])

    def put(self, task_key: str, identity: str, schedule: str, lr: float, seed: int, run: Run) -> None:
        if self.folder is None:
            return
        path = self._path(task_key, identity, schedule, lr, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"version": self.version, "identity": identity, "schedule": schedule, "lr": lr, "seed": seed, "run": run.to_json()}
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entry))
        os.replace(temporary, path)

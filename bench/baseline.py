"""torch as it was at an earlier git revision, timed beside this tree's backends in the same alternating rounds.

An issue's bars are set against the code as it was when the issue was filed. Shared work since (a leaner
decoding loop) speeds up torch too, so a ratio against today's torch alone hides what a request has gained.
`make bench-backends ARGS="--baseline REV"` exports REV's tree with `git archive` into a temporary folder (this
checkout is left as it is), runs that tree's captioner in a worker process (bench/rows.py) and its service
from that tree, on the same model file and photos.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from .common import ROOT

WORKER = Path(__file__).with_name("rows.py")


def checkout(rev: str) -> Path:
    """REV's source tree (committed files only) in a new temporary folder, which the caller may delete."""
    into = Path(tempfile.mkdtemp(prefix=f"captioner-{rev[:12]}-"))
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


class Worker:
    """REV's captioner in a process of its own; `row(name)` is a callable that runs that row there once.
    `source`: the file the worker's captioner was imported from (inside `tree`)."""

    def __init__(self, tree: Path, model: Path, threads: int, photos: list[Path]):
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(tree), str(model), str(threads),
                                      *map(str, photos)], cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        said = self.proc.stdout.readline().split(maxsplit=1)
        if said[:1] != ["ready"]:
            self.close()
            raise RuntimeError(f"the baseline worker in {tree} did not start (exit {self.proc.poll()})")
        self.source = Path(said[1].strip())

    def row(self, name: str) -> Callable[[], None]:
        def run() -> None:
            self.proc.stdin.write(name + "\n")
            self.proc.stdin.flush()
            if self.proc.stdout.readline().strip() != "done":
                raise RuntimeError(f"the baseline worker failed on {name!r}")

        return run

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)

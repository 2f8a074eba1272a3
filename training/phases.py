"""Where a training run's time and memory go: each named phase's wall time and peak resident memory.

`make train` logs the table at the end and writes it to OUT_DIR/phases.json; `make bench-scale` reads it at
growing data sizes to find a phase that grows faster than the data. Phases may nest: an outer phase's time
is its own, without its inner phases' (so the times add up to the run's), and its peak includes theirs.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int:
    """The process's peak resident memory since the last `reset_peak_rss` (Linux), else since it started."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Start a new peak at the current resident size (Linux: writing 5 to clear_refs); elsewhere a no-op."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


@dataclass
class Phase:
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    calls: int = 0


class PhaseClock:
    """`with clock("vocabulary"): ...` adds that block's wall time and peak memory to the phase's record."""

    def __init__(self) -> None:
        self.phases: dict[str, Phase] = {}
        self._running: list[list] = []  # [phase, seconds spent in its inner phases] from the outermost

    def _fold_peak(self) -> None:
        """Give every running phase the peak seen since the last reset, then start a new peak."""
        peak = peak_rss_bytes()
        for phase, _ in self._running:
            phase.peak_rss_bytes = max(phase.peak_rss_bytes, peak)
        reset_peak_rss()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        phase = self.phases.setdefault(name, Phase())
        self._fold_peak()
        entry = [phase, 0.0]
        self._running.append(entry)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            phase.seconds += elapsed - entry[1]
            phase.calls += 1
            self._fold_peak()
            self._running.remove(entry)
            if self._running:
                self._running[-1][1] += elapsed

    def table(self) -> str:
        return "\n".join(f"{name:<24} {p.seconds:9.2f} s  peak RSS {p.peak_rss_bytes / 2**30:6.2f} GB"
                         + (f"  ({p.calls} calls)" if p.calls > 1 else "") for name, p in self.phases.items())

    def to_dict(self) -> dict:
        return {name: asdict(p) for name, p in self.phases.items()}

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

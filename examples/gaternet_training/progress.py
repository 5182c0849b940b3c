"""Progress output and the metrics log: tqdm bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class Progress:
    """One epoch's progress: a tqdm bar on a TTY, else a line every ``log_every`` steps.

    ``update`` is cheap when nothing is shown: the caller passes a function that produces
    the numbers, so device values are synchronised only when printed.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, log_every: int = 50,
                 stream: Any = None) -> None:
        self.total, self.desc, self.enabled, self.log_every = total, desc, enabled, log_every
        self.stream = stream or sys.stderr
        self.step = 0
        self.start = time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty() and os.environ.get("GATEKIT_PLAIN_PROGRESS") is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=self.stream, dynamic_ncols=True,
                            leave=True)

    def update(self, numbers: Any) -> None:
        """Advance one step; ``numbers()`` returns a dict of values to show (called lazily)."""
        self.step += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if self.step % max(1, self.log_every // 5) == 0 or self.step == self.total:
                self.bar.set_postfix_str(_fmt(numbers()), refresh=False)
        elif self.step % self.log_every == 0 or self.step == self.total:
            rate = self.step / max(time.perf_counter() - self.start, 1e-9)
            print(f"{self.desc} step {self.step}/{self.total} {_fmt(numbers())} {rate:.1f} it/s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(numbers: dict[str, float]) -> str:
    parts = []
    for key, value in numbers.items():
        if key in ("acc", "open"):
            parts.append(f"{key} {100 * value:.1f}%")
        else:
            parts.append(f"{key} {value:.4g}")
    return " ".join(parts)


class MetricsLog:
    """Append-only JSON-lines file: one record per epoch and one for the final evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs after ``epoch`` (written by a run that died before its checkpoint)."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if rec.get("epoch", 0) <= epoch and rec.get("event", "epoch") == "epoch":
                keep.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

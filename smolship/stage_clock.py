"""Stage timings of one bundle's export, from the progress calls every step already makes.

Every target and the validator report progress at their step boundaries ("torch.export", "lowering to
XNNPACK", "parity doc-3", "gguf blk.4.attn_q.weight"); the clock charges the time until the next call to
that call's stage, so each target gets stage timings in its manifest without timing code of its own.
A per-item description is folded into its stage name by cutting it at the first word that names an item
(holds a digit or a weight path): "parity doc-3" and "parity doc-7" are one stage, "parity".
"""

from __future__ import annotations

import re
import time

_ITEM = re.compile(r"\s*(?:\S*\d|\S+\.weight\b|model\.).*$")


def stage_of(desc: str) -> str:
    """The stage a progress description belongs to (its leading words, before any item name)."""
    name = _ITEM.sub("", desc).rstrip(" :(,")
    return name or desc.split(" ", 1)[0] or "unnamed"


class StageClock:
    """Wraps a progress callback; `seconds()` is {stage: wall seconds} in the order the stages began."""

    def __init__(self, progress=None, first: str = "preparing", clock=time.perf_counter):
        self._progress = progress
        self._clock = clock
        self._current: str | None = first  # until the first progress call
        self._since = clock()
        self._totals: dict[str, float] = {}

    def __call__(self, desc: str, frac: float) -> None:
        self.enter(stage_of(desc))
        if self._progress is not None:
            self._progress(desc, frac)

    def enter(self, stage: str) -> None:
        """Charge the time so far to the current stage and start `stage` (a no-op when it is the current one)."""
        if stage == self._current:
            return
        now = self._clock()
        if self._current is not None:
            self._totals[self._current] = self._totals.get(self._current, 0.0) + now - self._since
        self._current, self._since = stage, now

    def seconds(self) -> dict[str, float]:
        """Totals so far, the running stage included, rounded to 0.1 s."""
        totals = dict(self._totals)
        if self._current is not None:
            totals[self._current] = totals.get(self._current, 0.0) + self._clock() - self._since
        return {k: round(v, 1) for k, v in totals.items()}

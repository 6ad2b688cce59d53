"""A tqdm progress bar on stderr, fed by the engine's `progress(stage, done, total)` callbacks."""

from __future__ import annotations

# Below this many steps a bar counts plainly (0/6, not 0.00/6.00) and shows no rate (?it/s before the first step).
SCALED_TOTAL = 1000
SMALL_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


class ProgressBar:
    """One bar per stage; disabled when stderr is not a terminal or when `enabled` is False."""

    def __init__(self, unit: str = "rows", enabled: bool = True):
        self.unit, self.enabled = unit, enabled
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self._stage:
            self.close()
            self._stage = stage
            self._bar = new_bar(stage, total, self.unit)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._stage = None

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_bar(stage: str, total: int, unit: str):
    """A tqdm bar for one stage on stderr (tqdm is imported here: `iimm CMD --help` does not need it)."""
    from tqdm.auto import tqdm

    if total is not None and total < SCALED_TOTAL:
        return tqdm(total=total, desc=stage, unit=unit, leave=False, disable=None, bar_format=SMALL_BAR)
    return tqdm(total=total, desc=stage, unit=unit, unit_scale=True, leave=False, disable=None)

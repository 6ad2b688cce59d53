"""A tqdm progress bar on stderr, fed by the engine's `progress(stage, done, total)` callbacks."""

from __future__ import annotations

from tqdm.auto import tqdm


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
            self._bar = tqdm(total=total, desc=stage, unit=self.unit, unit_scale=True, leave=False, disable=None)
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

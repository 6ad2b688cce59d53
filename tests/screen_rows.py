"""Screen rows built by hand, for tests of ranking and charts."""

from iimm.engine.calibration.screen import ScreenRow


def screen_row(name: str, model: str, iimm: float, gain: float | None = None, below: float = 0.1,
               above: float = 0.1) -> ScreenRow:
    """A row of `name` scored by `model`; with `gain`, a calibrated 'full' prediction of [gain-below, gain+above]."""
    r = ScreenRow(name, model, {"iimm": iimm}, 10, True)
    if gain is not None:
        r.predictions["full"] = {"gain": {"value": gain, "low": gain - below, "high": gain + above}}
    return r

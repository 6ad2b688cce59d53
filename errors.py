"""Errors a user can fix: the CLI prints their message as one line and exits non-zero."""


class IimmError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


class InputError(IimmError):
    """Bad embeddings, labels, files or options."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for reports of one task among many that failed)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class BadRowError(InputError):
    """An image embedding row is all zeros or holds NaN/Inf; `score` names the file it came from."""


def bad_row_error(index: int, row) -> BadRowError:
    """The one-line error for image row `index`, which is all zeros or holds NaN/Inf."""
    import numpy as np

    if hasattr(row, "detach"):  # a tensor, maybe on a GPU or in bfloat16
        row = row.detach().double().cpu().numpy()
    what = "has NaN or Inf values" if not np.all(np.isfinite(np.asarray(row, dtype=np.float64))) else "is all zeros"
    return BadRowError(f"image embedding row {index} {what}; every row must be a finite, non-zero vector: drop that "
                      f"row or re-extract its embedding")


class BackendUnavailable(IimmError):
    """An explicitly requested compute backend cannot run on this machine."""

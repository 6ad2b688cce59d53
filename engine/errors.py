"""Errors a user can fix (defined in `iimm.errors`, which the kernels share without importing the engine)."""

from ..errors import BackendUnavailable, IimmError, InputError, one_line

__all__ = ["IimmError", "InputError", "BackendUnavailable", "one_line"]

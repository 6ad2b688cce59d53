"""Errors a user can fix: the CLI prints their message as one line and exits non-zero."""


class IimmError(Exception):
    """A problem with the user's input or environment; the message names it and the fix."""


class InputError(IimmError):
    """Bad embeddings, labels, files or options."""


class BackendUnavailable(IimmError):
    """An explicitly requested compute backend cannot run on this machine."""

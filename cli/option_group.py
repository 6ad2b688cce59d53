"""A group of Click options handed to the command as one dataclass argument."""

from __future__ import annotations

import dataclasses
import functools


def option_group(cls, options: list, argname: str):
    """Decorator factory: add `options` to a command and pass their values as `argname=cls(...)`.

    The option parameter names must be the field names of the dataclass `cls`.
    """
    names = [f.name for f in dataclasses.fields(cls)]

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            return command(*args, **{argname: cls(**{name: kwargs.pop(name) for name in names})}, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate

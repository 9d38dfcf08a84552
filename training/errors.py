"""Errors that the `python -m training` command reports as one line with exit status 2."""

from __future__ import annotations


class InputError(ValueError):
    """Invalid command-line input, such as an unreadable weights file or an output directory in use.

    Library callers can catch it as a ValueError.
    """

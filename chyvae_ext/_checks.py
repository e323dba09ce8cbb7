"""Argument checks shared across the package (one message format for every integer argument)."""

from __future__ import annotations

import argparse

import numpy as np


def check_int(name: str, value: object, least: int = 0) -> int:
    """``value`` as an int when it is an integer (Python or NumPy, not bool) >= ``least``; otherwise a
    ValueError that names the argument, what it must be and what it got."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(least, f"an integer >= {least}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_positive(name: str, value: object) -> float:
    """``value`` as a float when it is a finite real number > 0 (not bool); otherwise a ValueError that
    names the argument and what it got."""
    real = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not real or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float when it is a finite real number >= 0 (not bool); otherwise a ValueError that
    names the argument and what it got."""
    real = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if not real or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a usage error on one line, ``error: MESSAGE (see PROG --help)``, as every other
    refusal of the command lines is (exit status 2, as argparse's)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

"""Which GPUs a build's CUDA architecture list can run on.

The list is TORCH_CUDA_ARCH_LIST's form, as the build recorded it: entries such as ``8.0``, ``9.0a``
or ``10.0+PTX``, separated by ``;``, spaces or commas. By CUDA's compatibility rules, machine code
for X.Y runs on devices X.Z with Z >= Y (same major version); arch-specific code (``9.0a``) only on
X.Y itself; PTX for X.Y (``+PTX``) is compiled by the driver for any device of capability >= X.Y.
"""

from __future__ import annotations

import re

_ENTRY = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


def parse_arch_list(archs: str) -> list[tuple[int, int, str, bool]]:
    """[(major, minor, suffix, ptx)] of an architecture list; ValueError naming a bad entry."""
    if not isinstance(archs, str):
        raise TypeError(f"archs must be a string like '8.0;9.0+PTX', got {type(archs).__name__}")
    out = []
    for entry in re.split(r"[;,\s]+", archs.strip()):
        if not entry:
            continue
        m = _ENTRY.match(entry)
        if m is None:
            raise ValueError(
                f"CUDA architecture list {archs!r}: cannot read entry {entry!r} (expected e.g. 9.0, 9.0a or 9.0+PTX)"
            )
        out.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4) is not None))
    return out


def runs_on(archs: str | None, capability: tuple[int, int]) -> bool:
    """Whether code built for ``archs`` can run on a device of compute ``capability`` (major, minor)."""
    if not archs:
        return False
    major, minor = capability
    for a_major, a_minor, suffix, ptx in parse_arch_list(archs):
        if ptx and (major, minor) >= (a_major, a_minor):
            return True
        if suffix == "a" and (major, minor) == (a_major, a_minor):
            return True
        if suffix == "f" and major == a_major and minor >= a_minor:
            return True
        if suffix == "" and major == a_major and minor >= a_minor:
            return True
    return False

"""``seamline segment``, ``evaluate`` and ``bench`` sub-commands (filled in below)."""

from __future__ import annotations


def add_segment_commands(sub) -> None:  # noqa: ARG001 - extended as stages land
    return None

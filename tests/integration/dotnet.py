"""Helpers for tests that call the C# code under Mono (pythonnet must already be loaded: the ``cs`` fixture)."""

from __future__ import annotations


def net_frames(frames: list[bytes]):
    """Python byte strings as a .NET ``byte[][]``: the frames argument of Codec.Decode and ZmtpDealer.Send."""
    from System import Array, Byte

    out = Array.CreateInstance(Array[Byte], len(frames))
    for i, f in enumerate(frames):
        out[i] = Array[Byte](list(f))
    return out

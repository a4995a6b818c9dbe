"""Long videos by autoregressive rollout (Video LDM §3.1.1, "Long-term generation").

Each segment of T frames is generated with its first S frames given: the last S frames of what
exists. The paper starts from one frame made by the image model (S = 1 for the first segment)
and then conditions on two frames, which encode motion. Only one segment is ever sampled at a
time, so memory does not grow with the video's length.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import ContextError


@dataclass(frozen=True)
class Segment:
    index: int
    context_frames: int    # S for this segment: frames taken from the end of the video so far
    new_frames: int        # T - S frames appended


def plan_rollout(existing: int, segment_length: int, context_frames: int, segments: int) -> list[Segment]:
    """The segments that extend a video of `existing` frames. Bad input is refused before any
    sampling, with what was expected and what was found."""
    if segments < 1:
        raise ContextError(f"expected at least 1 segment, found {segments}.")
    if existing < 1:
        raise ContextError("expected at least 1 existing frame to extend from (e.g. one frame from the image model), found 0.")
    if context_frames < 1:
        raise ContextError(f"expected at least 1 context frame per segment, found {context_frames}.")
    check_segment_overlap(segment_length, context_frames)
    plan, frames = [], existing
    for i in range(segments):
        s = min(context_frames, frames)
        plan.append(Segment(i, s, segment_length - s))
        frames += segment_length - s
    return plan


def check_segment_overlap(segment_length: int, context_frames: int):
    """The overlap (S context frames) below the segment (T frames), or a segment adds nothing."""
    if context_frames >= segment_length:
        raise ContextError(f"context_frames: the segment overlap ({context_frames}) must be smaller than the segment "
                           f"length ({segment_length}), or no new frames would be generated.")


def rollout_length(existing: int, segment_length: int, context_frames: int, segments: int) -> int:
    return existing + sum(s.new_frames for s in plan_rollout(existing, segment_length, context_frames, segments))

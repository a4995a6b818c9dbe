"""Moving shapes: a seeded synthetic video source whose motion is known exactly.

Each clip holds 1-3 shapes (square, disc, triangle) that move at constant velocity, bounce off the
borders, spin, and swing in hue, over a slowly drifting low-frequency texture. Everything is a
function of continuous time t (pixels per second at scale 1) and of continuous position, so

- the same seed at fps/4 gives exactly every 4th frame of the render at fps, and
- `scale=4` renders the same scene at 4x the resolution (ground truth for an upscaler).

Edges are antialiased analytically: a shape covers a pixel by clamp(0.5 - d, 0, 1), d being the
signed distance from the pixel centre to the shape's edge in output pixels. Frames are drawn one
at a time so a frame's pixels never depend on how many other frames were asked for.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .limits import tensor_bytes
from .training.objective import TrainingError

KINDS = ("square", "disc", "triangle")
SIDES = {"square": 4, "triangle": 3}
# Named hues (degrees); a shape swings at most HUE_SWING degrees around its own, so its name holds.
HUES = {"red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 120.0, "cyan": 185.0, "blue": 225.0,
        "purple": 275.0, "magenta": 315.0}
HUE_SWING = 12.0


@dataclass
class ShapeTrack:
    """Where one shape is in every frame, in pixels of the rendered frame (x, y from the top left)."""

    kind: str
    centre: Tensor  # (T, 2) x, y
    angle: Tensor  # (T,) radians
    colour: Tensor  # (T, 3) RGB in [0, 1]
    size: float  # circumradius


@dataclass
class SyntheticClip:
    frames: Tensor  # (T, 3, H, W) in [-1, 1]
    tracks: list[ShapeTrack]
    caption: str


@dataclass(frozen=True)
class _Shape:
    """One shape in scale-1 pixels and seconds."""

    kind: str
    colour_name: str
    hue: float  # degrees
    hue_rate: float  # hue swing frequency, Hz
    hue_phase: float
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]  # px / s
    angle: float
    spin: float  # rad / s


@dataclass(frozen=True)
class _Wave:
    kx: float  # cycles across the width
    ky: float  # cycles across the height
    phase: float
    drift: float  # cycles / s


def _scene(seed: int, height: int, width: int):
    rng = random.Random(seed)
    side = min(height, width)
    names = rng.sample(sorted(HUES), k=rng.randint(1, 3))
    shapes = []
    for name in names:
        radius = rng.uniform(0.10, 0.20) * side
        speed, heading = rng.uniform(0.25, 0.75) * side, rng.uniform(0, 2 * math.pi)
        shapes.append(_Shape(
            kind=rng.choice(KINDS), colour_name=name, hue=HUES[name], hue_rate=rng.uniform(0.1, 0.5),
            hue_phase=rng.uniform(0, 2 * math.pi), radius=radius,
            start=(rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
            angle=rng.uniform(0, 2 * math.pi), spin=rng.uniform(-1.5, 1.5)))
    waves = [_Wave(rng.uniform(-2.5, 2.5), rng.uniform(-2.5, 2.5), rng.uniform(0, 2 * math.pi), rng.uniform(-0.1, 0.1))
             for _ in range(3)]
    # Two muted background colours, so the saturated shapes stand out.
    background = [[rng.uniform(0.1, 0.4) for _ in range(3)], [rng.uniform(0.4, 0.7) for _ in range(3)]]
    return shapes, waves, torch.tensor(background, dtype=torch.float64)


def _bounce(start: float, velocity: float, lo: float, hi: float, t: Tensor) -> Tensor:
    """Position on [lo, hi] of a point moving at constant velocity and reflecting at both ends:
    a triangle wave of period 2 (hi - lo)."""
    span = hi - lo
    if span <= 0:
        return torch.full_like(t, (lo + hi) / 2)
    u = torch.remainder(start - lo + velocity * t, 2 * span)
    return lo + span - (u - span).abs()


def _hsv_to_rgb(hue_degrees: Tensor, saturation: float = 0.85, value: float = 0.95) -> Tensor:
    """(T,) hue in degrees -> (T, 3) RGB in [0, 1]."""
    h = torch.remainder(hue_degrees, 360.0)[:, None] / 60.0
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype) + h, 6.0)
    return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _track(shape: _Shape, t: Tensor, height: int, width: int) -> ShapeTrack:
    """The shape's state at times t, in scale-1 pixels."""
    x = _bounce(shape.start[0], shape.velocity[0], shape.radius, width - shape.radius, t)
    y = _bounce(shape.start[1], shape.velocity[1], shape.radius, height - shape.radius, t)
    hue = shape.hue + HUE_SWING * torch.sin(2 * math.pi * shape.hue_rate * t + shape.hue_phase)
    return ShapeTrack(shape.kind, torch.stack([x, y], dim=-1), shape.angle + shape.spin * t, _hsv_to_rgb(hue),
                      shape.radius)


def _signed_distance(kind: str, x: Tensor, y: Tensor, radius: float, angle: float) -> Tensor:
    """Distance from (x, y), relative to the centre, to the shape's edge; negative inside. Polygons
    use the largest distance to an edge line, exact inside and along edges, which is all 1 px of
    antialiasing needs."""
    if kind == "disc":
        return torch.hypot(x, y) - radius
    n = SIDES[kind]
    apothem = radius * math.cos(math.pi / n)
    normals = [angle + 2 * math.pi * (k + 0.5) / n for k in range(n)]
    return torch.stack([x * math.cos(a) + y * math.sin(a) for a in normals]).amax(dim=0) - apothem


def _render_frame(t: float, shapes, tracks, i: int, waves, background: Tensor, height: int, width: int,
                  scale: int) -> Tensor:
    # Pixel centres in scale-1 coordinates.
    ys = ((torch.arange(height * scale, dtype=torch.float64) + 0.5) / scale)[:, None]
    xs = ((torch.arange(width * scale, dtype=torch.float64) + 0.5) / scale)[None, :]
    # sin(a(x) + b(y)) = sin a cos b + cos a sin b: transcendentals on rows and columns only, which
    # is far cheaper, and small enough that torch never hands them to its thread pool.
    texture = 0
    for w in waves:
        a = 2 * math.pi * w.kx * xs / width
        b = 2 * math.pi * (w.ky * ys / height + w.drift * t) + w.phase
        texture = texture + torch.sin(a) * torch.cos(b) + torch.cos(a) * torch.sin(b)
    v = 0.5 + 0.5 * texture / len(waves)  # (H, W) in [0, 1]
    image = background[0, :, None, None] * (1 - v) + background[1, :, None, None] * v
    for shape, track in zip(shapes, tracks):
        cx, cy = track.centre[i].tolist()
        d = _signed_distance(shape.kind, xs - cx, ys - cy, shape.radius, float(track.angle[i]))
        cover = torch.clamp(0.5 - d * scale, 0.0, 1.0)  # distance in output pixels
        image = image * (1 - cover) + track.colour[i, :, None, None] * cover
    return image


def clip_bytes(frames: int, height: int, width: int, scale: int = 1) -> int:
    """Memory a clip takes while it is rendered: the float32 video and one float64 frame being drawn
    with its temporaries, six frames' worth (a square's four edge distances, its cover, the blend;
    measured 5.2 at 2048x2048)."""
    size = (int(height) * int(scale), int(width) * int(scale))
    return tensor_bytes((frames, 3, *size)) + 6 * tensor_bytes((3, *size), torch.float64)


def moving_shapes_clip(seed: int, frames: int, height: int, width: int, fps: float = 30.0, scale: int = 1,
                       on_frame: Callable[[int], None] | None = None) -> SyntheticClip:
    """A clip of `frames` frames at `fps`, frame i at time i / fps; `scale` renders the same scene at
    (scale * height, scale * width), with tracks in the pixels of that render. `on_frame(i)` runs
    after frame i is drawn (progress, or raising to stop)."""
    if not (frames >= 1 and height >= 8 and width >= 8 and math.isfinite(fps) and fps > 0 and scale >= 1
            and int(scale) == scale):
        raise TrainingError(f"expected frames >= 1, height and width >= 8, a finite fps > 0 and an integer scale >= 1, "
                            f"found frames={frames}, {height}x{width}, fps={fps}, scale={scale}.")
    shapes, waves, background = _scene(seed, height, width)
    t = torch.tensor([i / fps for i in range(frames)], dtype=torch.float64)
    tracks = [_track(s, t, height, width) for s in shapes]
    video = torch.empty(frames, 3, height * scale, width * scale)   # filled a frame at a time
    for i in range(frames):
        video[i] = _render_frame(float(t[i]), shapes, tracks, i, waves, background, height, width, scale) * 2 - 1
        if on_frame is not None:
            on_frame(i)
    scaled = [ShapeTrack(tr.kind, (tr.centre * scale).float(), tr.angle.float(), tr.colour.float(), tr.size * scale)
              for tr in tracks]
    return SyntheticClip(video, scaled, _caption(shapes))


def _caption(shapes) -> str:
    return " and ".join(f"{s.colour_name} {s.kind} moving {_direction(*s.velocity)}" for s in shapes)


def _direction(vx: float, vy: float) -> str:
    horizontal, vertical = ("right" if vx > 0 else "left"), ("down" if vy > 0 else "up")
    if abs(vx) > 2 * abs(vy):
        return horizontal
    if abs(vy) > 2 * abs(vx):
        return vertical
    return f"towards the {'top' if vy < 0 else 'bottom'} {horizontal}"

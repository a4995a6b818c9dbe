"""A loss curve as an image (the Train Temporal Adapter node's preview): raw loss in grey, its
running mean in colour, log-scaled y axis when the loss spans more than a decade."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw


def running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curve_image(losses: list[float], width: int = 512, height: int = 256, title: str = "loss") -> torch.Tensor:
    """(1, height, width, 3) float image in [0, 1], ComfyUI's IMAGE layout."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 56, width - 12, 22, height - 24
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    values = [v for v in losses if math.isfinite(v)]
    if values:
        lo, hi = min(values), max(values)
        log = lo > 0 and hi / lo > 10
        f = math.log10 if log else (lambda v: v)
        a, b = f(lo), f(hi)
        span = (b - a) or 1.0

        def point(i, v):
            x = left + (right - left) * (i / max(len(losses) - 1, 1))
            return x, bottom - (bottom - top) * ((f(v) - a) / span)

        def line(series, colour):
            pts = [point(i, v) for i, v in enumerate(series) if math.isfinite(v)]
            if len(pts) > 1:
                draw.line(pts, fill=colour, width=1)
            elif pts:
                draw.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=colour)

        line(losses, (170, 170, 170))
        line(running_mean(losses, max(1, len(losses) // 20)), (30, 90, 200))
        draw.text((4, top - 2), f"{hi:.4g}", fill=(0, 0, 0))
        draw.text((4, bottom - 10), f"{lo:.4g}", fill=(0, 0, 0))
        draw.text((left, 4), f"{title}{' (log)' if log else ''}: {values[0]:.4g} → {values[-1]:.4g}", fill=(0, 0, 0))
    draw.text((left, bottom + 6), "step 1", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 6), f"step {len(losses)}", fill=(0, 0, 0))
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(1, height, width, 3).float() / 255.0

"""What the pack refuses before it computes: outputs larger than a memory limit, and numbers or
latents that are not finite.

A node that allocates its whole output (a synthetic video, an extended or interpolated latent, an
upscaled latent, a decoded IMAGE) first works out the bytes its inputs imply and compares them with
`output_limit_bytes()`: by default 16 GiB, which fits a workstation beside the model; the server's
operator sets another limit with the environment variable VIDEOLDM_MAX_OUTPUT_GIB (an API client
cannot change it). NaN and infinity pass every `<` and `>` comparison, so ranges are checked with
`math.isfinite` first; a latent that turns non-finite while sampling stops the run at that step.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Mapping, Sequence

import torch

from .errors import VideoLDMError

LIMIT_VARIABLE = "VIDEOLDM_MAX_OUTPUT_GIB"
DEFAULT_LIMIT_GIB = 16.0
GIB = 1024 ** 3


class MemoryLimitError(VideoLDMError):
    """Inputs that imply more memory than the pack's limit."""


class InputValueError(VideoLDMError):
    """A node input's value the node cannot use: a number that is NaN, infinite or outside its range;
    a linked text, choice or on/off value of another kind."""


class NonFiniteError(VideoLDMError):
    """A latent that turned NaN or infinite while sampling."""


def output_limit_bytes() -> int:
    """The largest output a node allocates: VIDEOLDM_MAX_OUTPUT_GIB GiB when the operator set a
    positive number, else DEFAULT_LIMIT_GIB."""
    try:
        gib = float(os.environ.get(LIMIT_VARIABLE, DEFAULT_LIMIT_GIB))
    except ValueError:
        gib = DEFAULT_LIMIT_GIB
    return int((gib if math.isfinite(gib) and gib > 0 else DEFAULT_LIMIT_GIB) * GIB)


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense tensor of `shape` (Python integers: no overflow however large)."""
    return math.prod(int(s) for s in shape) * torch.empty((), dtype=dtype).element_size()


def describe_bytes(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.1f} MiB"


def check_output_size(node: str, implied: int, inputs: Mapping[str, object], what: str = "its output",
                      limit: int | None = None) -> int:
    """Refuses `implied` bytes above the limit, naming the node, the inputs that imply them and
    both sizes; returns `implied`."""
    limit = output_limit_bytes() if limit is None else limit
    if implied > limit:
        given = ", ".join(f"{k}={v}" for k, v in inputs.items())
        raise MemoryLimitError(
            f"{node}: {given} imply {describe_bytes(implied)} for {what}, above the Video LDM pack's limit of "
            f"{describe_bytes(limit)}. Ask for fewer frames or a smaller size (the server's operator can raise the "
            f"limit with the environment variable {LIMIT_VARIABLE}).")
    return implied


def is_finite_number(value) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite: what every number the pack
    takes from a prompt, a spec or a run config must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number_problem(name: str, value, low: float | None = None, high: float | None = None) -> str | None:
    """Why `value` cannot be the number input `name` (not a number, NaN, infinite, out of
    [low, high]), or None when it can."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):   # numpy's scalars are Real too
        return f"{name} must be a number, found {value!r}."
    if not math.isfinite(value):
        return f"{name} must be a finite number, found {value!r}."
    if low is not None and value < low:
        return f"{name} must be at least {low}, found {value!r}."
    if high is not None and value > high:
        return f"{name} must be at most {high}, found {value!r}."
    return None


_AMINMAX_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
                   torch.int32, torch.int64)


def value_bounds(values: torch.Tensor) -> tuple[float, float]:
    """The least and greatest value of a non-empty real tensor, read in one pass with no temporary
    the size of the tensor (one device sync); both NaN when it holds a NaN, and an infinity shows as
    one of them. Types the reduction does not take are read through a copy: float8 as float32 (4x
    its size), wide unsigned integers as float64."""
    if values.dtype not in _AMINMAX_DTYPES:
        values = values.float() if values.is_floating_point() else values.double()
    low, high = torch.stack(torch.aminmax(values)).tolist()
    return float(low), float(high)


def all_finite(values: torch.Tensor) -> bool:
    """True when a tensor holds no NaN or infinity (integers always), from its bounds: no mask the
    size of the video or of the joint latents."""
    if not values.is_floating_point() or values.numel() == 0:
        return True
    return all(math.isfinite(bound) for bound in value_bounds(values))


def count_non_finite(values: torch.Tensor) -> int:
    """How many NaN or infinite values a tensor holds, counted block by block along its first
    dimension (frame by frame: no mask the size of the video); what a refusal says once
    `all_finite` has found one."""
    blocks = values.split(1) if values.ndim > 1 else (values,)
    return sum(int((~torch.isfinite(block if block.dtype in _AMINMAX_DTYPES else block.float())).sum())
               for block in blocks)


def check_finite_input(values: torch.Tensor, node: str, name: str):
    """Refuses an input tensor (a LATENT's samples, IMAGE frames) holding NaN or infinity, naming the
    node and the input, before any work: a sampler or decoder would carry it into every frame."""
    if all_finite(values):
        return
    bad = count_non_finite(values)
    raise NonFiniteError(f"{node}: {name} holds {bad} NaN or infinite values (of {values.numel()}); the stage that "
                         "made it went wrong. Check it (its model, VAE and settings) and run again.")


def check_finite_latent(latents, node: str, where: str):
    """Stops a run whose latent (a tensor, or several: a sampler step's prediction x0 and x) holds
    NaN or infinity; a broken model, adapter or schedule would otherwise finish with black frames
    and no word."""
    for x in (latents,) if torch.is_tensor(latents) else latents:
        if x is None or all_finite(x):
            continue
        bad = count_non_finite(x)
        raise NonFiniteError(
            f"{node}: the latent turned non-finite {where} ({bad} of {x.numel()} values are NaN or infinite). "
            "Usually the model, an applied temporal adapter's weights or the sampler settings are broken; check "
            "them (a lower cfg or context_scale, another sampler or scheduler) and run again.")

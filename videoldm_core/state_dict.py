"""One check of weights against what a module expects (keys and shapes), made before anything
loads, in the pack's error style: what is missing, what is unexpected, what has the wrong shape."""

from __future__ import annotations

from typing import Iterable, Mapping

from torch import nn


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def weight_mismatch(expected: Mapping, found: Mapping, ignore_missing: Iterable[str] = ()) -> str:
    """'' when `found` has exactly the keys of `expected` with the same shapes (a key ending in one of
    `ignore_missing` may be absent); else what differs, with a few examples of each kind."""
    ignore = tuple(ignore_missing)
    missing = sorted(k for k in set(expected) - set(found) if not (ignore and k.endswith(ignore)))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if _shape(expected[k]) != _shape(found[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} with the wrong shape (e.g. {k}: expected {_shape(expected[k])}, "
                     f"found {_shape(found[k])})")
    return "; ".join(parts)


def check_weights(expected: Mapping, found: Mapping, what: str, error: type[Exception] = ValueError,
                  ignore_missing: Iterable[str] = ()):
    """Raises `error("<what>: <what differs>.")` unless `found` fits `expected` (a module's
    state_dict(), or key -> shape). `what` names the file and the part, e.g.
    "'x.safetensors': the weights do not match the adapter spec"."""
    problem = weight_mismatch(expected, found, ignore_missing)
    if problem:
        raise error(f"{what}: {problem}.")


def loadable_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """key -> shape of every weight `module` takes from a state dict, whatever layers the host built
    it with. A host may build Linear layers that get their weights only when a state dict loads
    (ComfyUI's under DynamicVRAM: weight and bias None, the bias flagged `comfy_need_lazy_init_bias`),
    and state_dict() leaves those out: their weight is (out_features, in_features)."""
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear) and layer.weight is None:
            prefix = f"{name}." if name else ""
            shapes[prefix + "weight"] = (layer.out_features, layer.in_features)
            if getattr(layer, "comfy_need_lazy_init_bias", False):
                shapes[prefix + "bias"] = (layer.out_features,)
    return shapes

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


def spec_layout(module: nn.Module) -> Mapping:
    """What a file must hold for `module` (key -> tensor), whatever layers the host built it with:
    its state_dict(), or the state_dict() of its spec built in torch.nn on the meta device when some
    layer has no weight yet. A host may build layers that get their weights only when a state dict
    loads (ComfyUI's Linear under DynamicVRAM: weight None), and state_dict() leaves those out."""
    if any(isinstance(m, nn.Linear) and m.weight is None for m in module.modules()):
        return type(module)(module.spec, device="meta").state_dict()
    return module.state_dict()

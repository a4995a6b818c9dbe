"""The temporal layers of a Stable Video Diffusion UNet (sgm `VideoUNet`) -> the Video LDM placement.

SVD's temporal layers are exactly Video LDM's at SD2.x shape (656.1M parameters): per ResBlock
`time_stack` (3D-conv block) + `time_mixer.mix_factor`; per spatial transformer `time_stack.{d}`
(temporal blocks with ff_in and text cross-attention), `time_pos_embed`, `time_mixer.mix_factor`.
Keys keep their names without the `model.diffusion_model.` prefix. SVD uses 64-wide heads.
"""

from __future__ import annotations

import re

from ..temporal_adapter import AdapterFormatError, AdapterSpec

_TEMPORAL = re.compile(r"^(?:model\.diffusion_model\.)?((?:input_blocks|output_blocks)\.\d+\.\d+|middle_block\.\d+)\."
                       r"(time_stack|time_mixer|time_pos_embed)\.(.+)$")
SVD_HEAD_WIDTH = 64


def looks_like_svd(state_dict) -> bool:
    """Temporal layers of a UNet's blocks: a whole SVD checkpoint's first stage has `time_stack`
    layers too, which this importer leaves on disk."""
    return any(_TEMPORAL.match(k) for k in state_dict)


def import_svd(state_dict: dict, source: str = "SVD UNet") -> tuple[AdapterSpec, dict]:
    slots_weights: dict[str, dict] = {}
    for key, value in state_dict.items():
        m = _TEMPORAL.match(key)
        if m:
            slots_weights.setdefault(m.group(1), {})[f"{m.group(2)}.{m.group(3)}"] = value
    if not slots_weights:
        raise AdapterFormatError(f"{source}: no SVD temporal keys ('*.time_stack.*', '*.time_mixer.mix_factor').")
    slots, native = {}, {}
    for path, weights in slots_weights.items():
        if "time_stack.in_layers.2.weight" in weights:
            conv = weights["time_stack.in_layers.2.weight"]
            slots[path] = dict(kind="resblock", channels=conv.shape[0], emb_channels=weights["time_stack.emb_layers.1.weight"].shape[1],
                               kernel_t=conv.shape[2], merge_strategy="learned_with_images", alpha=0.0)
        elif "time_pos_embed.0.weight" in weights:
            channels = weights["time_pos_embed.0.weight"].shape[1]
            if channels < SVD_HEAD_WIDTH or channels % SVD_HEAD_WIDTH:
                raise AdapterFormatError(f"{source}: temporal transformer at {path} has {channels} channels; SVD's "
                                         f"attention heads are {SVD_HEAD_WIDTH} wide, so expected a multiple of "
                                         f"{SVD_HEAD_WIDTH}.")
            depth = len({k.split(".")[1] for k in weights if k.startswith("time_stack.")})
            context_key = "time_stack.0.attn2.to_k.weight"
            slots[path] = dict(kind="transformer", channels=channels, heads=channels // SVD_HEAD_WIDTH,
                               dim_head=SVD_HEAD_WIDTH, depth=depth,
                               context_dim=weights[context_key].shape[1] if context_key in weights else None,
                               positional="absolute", merge_strategy="learned_with_images", alpha=0.0)
        else:
            raise AdapterFormatError(f"{source}: temporal layer at {path} is neither a 3D-conv block nor a temporal "
                                     f"transformer (keys {sorted(weights)[:3]}).")
        native.update({f"{path}.{k}": v for k, v in weights.items()})
    spec = AdapterSpec(family="SD2.x", placement="videoldm", slots=slots, source="svd")
    return spec, native

"""Reading temporal adapters: the native format, and public formats with the same maths.

`import_adapter(state_dict, metadata, source)` detects the format and returns (spec, state dict in
the native layout), or raises AdapterFormatError naming what it expected and what it found.
"""

from __future__ import annotations

from ..temporal_adapter import ADAPTER_METADATA_KEY, AdapterFormatError, AdapterSpec
from ..temporal_decoder import TEMPORAL_DECODER_METADATA_KEY
from .animatediff import import_animatediff, looks_like_animatediff
from .svd import import_svd, looks_like_svd

LAVIE_NOTE = ("LaVie's temporal attention sits inside each spatial transformer block, between the text "
              "cross-attention and the feed-forward; ComfyUI 0.30.0 offers no hook at that point (only "
              "patches around attn1/attn2 outputs), so it cannot run without replacing the host's block.")


def import_adapter(state_dict: dict, metadata: dict | None = None, source: str = "adapter") -> tuple[AdapterSpec, dict]:
    metadata = metadata or {}
    if ADAPTER_METADATA_KEY in metadata:
        return AdapterSpec.from_json(metadata[ADAPTER_METADATA_KEY], source=source), dict(state_dict)
    if TEMPORAL_DECODER_METADATA_KEY in metadata or any(".time_mix_conv." in k or ".time_mix_block." in k
                                                        or (k.startswith(("decoder.", "first_stage_model.decoder."))
                                                            and ".time_stack." in k) for k in state_dict):
        raise AdapterFormatError(f"{source}: this is a temporal VAE decoder (temporal layers of a VAE decoder, e.g. "
                                 f"SVD's), not temporal layers for a UNet. Load it with Load Temporal VAE (an add-on "
                                 f"goes in models/temporal_decoders, an SVD VAE in models/vae) and decode with "
                                 f"Temporal VAE Decode.")
    if looks_like_svd(state_dict):
        return import_svd(state_dict, source)
    if looks_like_animatediff(state_dict):
        return import_animatediff(state_dict, source)
    if any(".attn_temp." in k or ".attn_temporal." in k for k in state_dict):
        kind = "LaVie VSR (x4 upscaler) model" if any(k.startswith("down_temporal_blocks.") for k in state_dict) else "LaVie model"
        raise AdapterFormatError(f"{source}: this is a {kind}; its temporal layers are not supported. {LAVIE_NOTE}")
    sample = sorted(state_dict)[:3]
    raise AdapterFormatError(
        f"{source}: unrecognised temporal adapter format. Expected a Video LDM adapter (safetensors with "
        f"'{ADAPTER_METADATA_KEY}' metadata), an AnimateDiff/HotshotXL motion module ('*.motion_modules.*') or an SVD "
        f"UNet ('*.time_stack.*'); found {len(state_dict)} keys like {sample}.")

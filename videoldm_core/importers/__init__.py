"""Reading temporal adapters: the native format, and public formats with the same maths.

`import_adapter(state_dict, metadata, source)` detects the format and returns (spec, state dict in
the native layout), or raises AdapterFormatError naming what it expected and what it found. The
state dict may hold shapes only (a file's header): every format's spec is read off shapes.
`read_adapter_file(path, name)` does that for a file, checking before it reads any weights.
"""

from __future__ import annotations

from ..state_dict import check_weights
from ..temporal_adapter import ADAPTER_METADATA_KEY, AdapterFormatError, AdapterSpec, TemporalAdapter
from ..weights_file import WeightsFile, build_on_meta
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
    if looks_like_svd(state_dict):   # before the decoder's test: a whole SVD file holds both
        return _imported(import_svd, state_dict, source, "an SVD UNet's temporal layers")
    if TEMPORAL_DECODER_METADATA_KEY in metadata or any(".time_mix_conv." in k or ".time_mix_block." in k
                                                        or (k.startswith(("decoder.", "first_stage_model.decoder."))
                                                            and ".time_stack." in k) for k in state_dict):
        raise AdapterFormatError(f"{source}: this is a temporal VAE decoder (temporal layers of a VAE decoder, e.g. "
                                 f"SVD's), not temporal layers for a UNet. Load it with Load Temporal VAE (an add-on "
                                 f"goes in models/temporal_decoders, an SVD VAE in models/vae) and decode with "
                                 f"Temporal VAE Decode.")
    if looks_like_animatediff(state_dict):
        return _imported(import_animatediff, state_dict, source, "an AnimateDiff motion module")
    if any(".attn_temp." in k or ".attn_temporal." in k for k in state_dict):
        kind = "LaVie VSR (x4 upscaler) model" if any(k.startswith("down_temporal_blocks.") for k in state_dict) else "LaVie model"
        raise AdapterFormatError(f"{source}: this is a {kind}; its temporal layers are not supported. {LAVIE_NOTE}")
    sample = sorted(state_dict)[:3]
    raise AdapterFormatError(
        f"{source}: unrecognised temporal adapter format. Expected a Video LDM adapter (safetensors with "
        f"'{ADAPTER_METADATA_KEY}' metadata), an AnimateDiff/HotshotXL motion module ('*.motion_modules.*') or an SVD "
        f"UNet ('*.time_stack.*'); found {len(state_dict)} keys like {sample}.")


def _imported(importer, state_dict: dict, source: str, what: str) -> tuple[AdapterSpec, dict]:
    """`importer`'s result; a layout it cannot read (a key missing, a tensor of too few dimensions)
    is an AdapterFormatError naming the file."""
    try:
        return importer(state_dict, source)
    except AdapterFormatError as e:
        raise e if str(e).startswith(source) else AdapterFormatError(f"{source}: {e}") from None
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise AdapterFormatError(f"{source}: looks like {what} but its keys or shapes are not in that layout "
                                 f"({type(e).__name__}: {e}).") from None


def read_adapter_file(path, name: str) -> tuple[AdapterSpec, dict]:
    """(spec, weights in the native layout) of an adapter file of any format. The spec, from the
    header, is checked against the file's shapes by building the adapter on the meta device, and
    only then are the weights read (and refused if any is NaN or infinite): a file whose spec
    declares more than it holds costs its header."""
    file = WeightsFile(path, name, AdapterFormatError)
    spec, shapes = import_adapter(file.shapes, file.metadata, file.source)
    adapter = build_on_meta(lambda: TemporalAdapter(spec), file, "temporal adapter")
    check_weights(adapter.state_dict(), shapes, f"{file.source}: the weights do not match the adapter spec",
                  AdapterFormatError)
    # only the tensors the adapter takes (an SVD checkpoint's spatial UNet, VAE and encoders stay on disk)
    key_of = {id(shape): key for key, shape in file.shapes.items()}
    used = [key_of[id(shape)] for shape in shapes.values() if id(shape) in key_of]
    read_spec, native = import_adapter(file.tensors(used), file.metadata, file.source)
    return (read_spec, native) if read_spec == spec else import_adapter(file.tensors(), file.metadata, file.source)

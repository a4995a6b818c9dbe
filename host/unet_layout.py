"""What the pack reads off a ComfyUI model: its SD family and the layout of its spatial layers."""

from __future__ import annotations

import weakref

import comfy.supported_models as sm
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..videoldm_core.families import SD1, SD2, SD_X4_UPSCALER, SDXL, Family
from ..videoldm_core.placement import SpatialLayer
from ..videoldm_core.temporal_adapter import AdapterCompatibilityError

# Most specific first: SD21UnclipL subclasses SD20, SDXLRefiner is not SDXL, x4 is SD2-based.
_FAMILIES = (
    (sm.SD_X4Upscaler, SD_X4_UPSCALER),
    (sm.SDXL, SDXL),
    (sm.SD20, SD2),
    (sm.SD15, SD1),
)


def model_family(model_patcher) -> Family:
    """The MODEL's family; one the pack does not know is named after ComfyUI's model config class."""
    config = model_patcher.model.model_config
    for cls, family in _FAMILIES:
        if isinstance(config, cls):
            return family
    return Family(type(config).__name__)


def named_layers(diffusion_model):
    """(path, layer) for every layer of every UNet block, "input_blocks.4.1" style, in execution order.
    A model without them (a DiT: Flux, SD3, Wan) is refused by name."""
    if not all(hasattr(diffusion_model, name) for name in ("input_blocks", "middle_block", "output_blocks")):
        raise AdapterCompatibilityError(
            f"expected the MODEL to be an SD-family UNet (SD1.x, SD2.x, SDXL, the SD x4 upscaler), found "
            f"{type(diffusion_model).__name__}, which has no UNet blocks for temporal layers to follow.")
    blocks = [(f"input_blocks.{i}", b) for i, b in enumerate(diffusion_model.input_blocks)]
    if diffusion_model.middle_block is not None:
        blocks.append(("middle_block", diffusion_model.middle_block))
    blocks += [(f"output_blocks.{i}", b) for i, b in enumerate(diffusion_model.output_blocks)]
    for block_path, block in blocks:
        for j, layer in enumerate(block):
            yield f"{block_path}.{j}", layer


# layer -> its LDM path, for every UNet the pack has applied adapters to or run them in. Weak: a
# UNet the host drops takes its entries with it.
_LAYER_PATHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_KNOWN_UNETS: weakref.WeakSet = weakref.WeakSet()


def know_layer_paths(diffusion_model):
    """Remembers the path of each layer of `diffusion_model` (once per instance). The host runs an
    adapted MODEL in other instances of its UNet too: one loaded again for a non-dynamic delegate
    (DynamicVRAM with hooks), TorchCompile's under DynamicVRAM, training's; slots are found there by path."""
    if diffusion_model in _KNOWN_UNETS:
        return
    for path, layer in named_layers(diffusion_model):
        _LAYER_PATHS[layer] = path
    _KNOWN_UNETS.add(diffusion_model)


def layer_path(layer) -> str | None:
    """The LDM path of a layer of a UNet passed to `know_layer_paths`, else None."""
    return _LAYER_PATHS.get(layer)


def spatial_layout(diffusion_model) -> list[SpatialLayer]:
    """Every plain ResBlock and SpatialTransformer of an SD UNet, by LDM path, in execution order.
    Video layers (VideoResBlock, SpatialVideoTransformer) are not plain and are left out."""
    layout = []
    for path, layer in named_layers(diffusion_model):
        if type(layer) is ResBlock:
            layout.append(SpatialLayer(path, "resblock", layer.out_channels,
                                       emb_channels=layer.emb_layers[1].in_features if hasattr(layer, "emb_layers") else 0))
        elif type(layer) is SpatialTransformer:
            first = layer.transformer_blocks[0]
            attn2 = getattr(first, "attn2", None)
            layout.append(SpatialLayer(path, "transformer", layer.in_channels, heads=first.attn1.heads,
                                       dim_head=first.attn1.dim_head, depth=len(layer.transformer_blocks),
                                       context_dim=attn2.to_k.in_features if attn2 is not None else None))
    return layout

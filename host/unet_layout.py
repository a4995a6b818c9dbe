"""What the pack reads off a ComfyUI model: its SD family and the layout of its spatial layers."""

from __future__ import annotations

import comfy.supported_models as sm
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..videoldm_core.families import SD1, SD2, SD_X4_UPSCALER, SDXL, Family
from ..videoldm_core.placement import SpatialLayer

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
    """(path, layer) for every layer of every UNet block, "input_blocks.4.1" style, in execution order."""
    blocks = [(f"input_blocks.{i}", b) for i, b in enumerate(diffusion_model.input_blocks)]
    if diffusion_model.middle_block is not None:
        blocks.append(("middle_block", diffusion_model.middle_block))
    blocks += [(f"output_blocks.{i}", b) for i, b in enumerate(diffusion_model.output_blocks)]
    for block_path, block in blocks:
        for j, layer in enumerate(block):
            yield f"{block_path}.{j}", layer


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

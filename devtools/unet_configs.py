"""UNet configs of the SD families as ComfyUI detects them, full size and tiny, for tests and benchmarks."""

from __future__ import annotations

_COMMON = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True,
               legacy=False, use_temporal_attention=False, use_temporal_resblock=False)

SD15 = dict(_COMMON, model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            transformer_depth_middle=1, context_dim=768, num_heads=8, num_head_channels=-1,
            use_linear_in_transformer=False, adm_in_channels=None)

SD21 = dict(SD15, context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)

SDXL = dict(_COMMON, model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2],
            transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
            transformer_depth_middle=10, context_dim=2048, num_heads=-1, num_head_channels=64,
            use_linear_in_transformer=True, adm_in_channels=2816, num_classes="sequential")


def tiny(config: dict, width: int = 32, context_dim: int = 32, head_width: int = 8) -> dict:
    """The same block structure at a small width (GroupNorm needs multiples of 32); deep SDXL
    transformers are cut to depth 2 so tests stay fast while depth > 1 is still exercised."""
    out = dict(config, model_channels=width, context_dim=context_dim,
               transformer_depth=[min(d, 2) for d in config["transformer_depth"]],
               transformer_depth_output=[min(d, 2) for d in config["transformer_depth_output"]],
               transformer_depth_middle=min(config["transformer_depth_middle"], 2))
    if config["num_head_channels"] != -1:
        out["num_head_channels"] = head_width
    else:
        out["num_heads"] = 4
    if config.get("adm_in_channels"):
        out["adm_in_channels"] = 64
    return out

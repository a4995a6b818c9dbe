"""The recipe tests' random-weight files are in the public layouts: the SD x4 upscaler's UNet keys
and shapes are exactly those of the published checkpoint, and SD1.5's load as ComfyUI's SD15."""

from pathlib import Path

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"


def test_the_x4_upscaler_fixture_has_the_published_unet_layout(pack):
    from devtools.public_checkpoints import x4_upscaler_shapes

    published = dict(line.split("\t") for line in (KEYS / "sd_x4_upscaler_unet_keys.txt").read_text().splitlines())
    ours = {k: str(list(s)) for k, s in x4_upscaler_shapes().items() if k.startswith("model.diffusion_model.")}
    assert ours == published


def test_the_sd15_fixture_is_detected_as_sd15_by_comfyui(pack):
    import comfy.model_detection
    import comfy.ops
    import comfy.supported_models
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from devtools.public_checkpoints import meta_shapes
    from devtools.unet_configs import SD15

    shapes = meta_shapes(lambda: UNetModel(**SD15, operations=comfy.ops.disable_weight_init))
    state_dict = {f"model.diffusion_model.{k}": torch.empty(s, device="meta") for k, s in shapes.items()}
    config = comfy.model_detection.model_config_from_unet(state_dict, "model.diffusion_model.")
    assert type(config) is comfy.supported_models.SD15

"""AnimateDiff import + apply against an independent implementation: diffusers' MotionAdapter and
UNetMotionModel, on the same random weights, for tiny SD1.5-shaped (v1, v2, v3) and SDXL-shaped
UNets. The motion module file is written in AnimateDiff's original key layout and goes through
the pack's real importer and the real ComfyUI UNet.

diffusers normalises a motion module's input over all frames of a video and every spatial norm per
frame. The first comparison sets the imported slots to that convention, so everything else
(layout, attention, positions, feed-forward, placement) is checked exactly. The second gives the
diffusers reference the norms of the original code of each release (AnimateDiff v1: nn.GroupNorm on
(b, c, f, h, w) in every ResnetBlock3D and conv_norm_out, per-frame motion-module norm; the SDXL
beta module: per-frame spatial norms, the motion-module norm over the clip) and checks the pack's
import as it comes, two videos batched as CFG batches them.
"""

import dataclasses
import re

import pytest
import torch

from devtools import unet_configs

TOLERANCE = 1e-4  # max |diff| of the UNet output (fp32, values of order 1)
FRAMES = 6


def randomize_(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return module


def diffusers_unet(config):
    from diffusers import UNet2DConditionModel

    widths = tuple(config["model_channels"] * m for m in config["channel_mult"])
    has_attn = [d > 0 for d in config["transformer_depth"][::2]]
    heads = [config["num_heads"]] * len(widths) if config["num_head_channels"] == -1 else [w // config["num_head_channels"] for w in widths]
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=widths, layers_per_block=2,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
        transformer_layers_per_block=[max(d, 1) for d in config["transformer_depth"][::2]],
        cross_attention_dim=config["context_dim"], attention_head_dim=heads, norm_num_groups=32,
        use_linear_projection=config["use_linear_in_transformer"])


def to_comfy_unet(reference, config, pack_module):
    """The diffusers UNet's weights in ComfyUI's own UNetModel (ComfyUI's diffusers key map)."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(config)
    source = reference.state_dict()
    state_dict = {ldm: source[diff] for diff, ldm in mapping.items() if diff in source}
    family = sm.SD15 if config["channel_mult"] == [1, 2, 4, 4] else sm.SDXL
    model_config = family(dict(config, adm_in_channels=None, num_classes=None))
    # the stock configs overwrite the head layout with full-size defaults; keep the tiny one
    model_config.unet_config.update(num_heads=config["num_heads"], num_head_channels=config["num_head_channels"])
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
    assert not missing and not unexpected, (missing[:3], unexpected[:3])
    return comfy.model_patcher.ModelPatcher(model, "cpu", "cpu")


def original_layout(adapter_state):
    """diffusers MotionAdapter keys -> AnimateDiff's original motion-module keys (the inverse of
    diffusers' conversion script); each attention block gets its own copy of the positional table."""
    out = {}
    for key, value in adapter_state.items():
        m = re.match(r"^(.*motion_modules\.\d+)\.(.*)$", key)
        prefix, rest = m.group(1) + ".temporal_transformer", m.group(2)
        if rest.endswith("pos_embed.pe"):
            block = rest.removesuffix(".pos_embed.pe")
            for i in (0, 1):
                out[f"{prefix}.{block}.attention_blocks.{i}.pos_encoder.pe"] = value
            continue
        for a, b in (("attn1.", "attention_blocks.0."), ("attn2.", "attention_blocks.1."), ("norm1.", "norms.0."),
                     ("norm2.", "norms.1."), ("norm3.", "ff_norm.")):
            rest = re.sub(rf"(transformer_blocks\.\d+\.){re.escape(a)}", rf"\g<1>{b}", rest)
        out[f"{prefix}.{rest}"] = value
    return out


VARIANTS = {
    "v1": dict(base=unet_configs.SD15, max_len=24, mid=False, source="animatediff-v1", family="SD1.x"),
    "v2": dict(base=unet_configs.SD15, max_len=32, mid=True, source="animatediff-v2", family="SD1.x"),
    "v3": dict(base=unet_configs.SD15, max_len=32, mid=False, source="animatediff-v3", family="SD1.x"),
    "sdxl": dict(base=unet_configs.SDXL, max_len=32, mid=False, source="animatediff-sdxl", family="SDXL"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_motion_module_matches_diffusers(variant, pack_module):
    check_against_diffusers(VARIANTS[variant], unet_configs.tiny(VARIANTS[variant]["base"]), variant, pack_module)


def test_full_size_sd15_motion_module_matches_diffusers(pack_module):
    """Real SD1.5 and AnimateDiff v2 shapes (860M + 453M random parameters), two frames at 8x8."""
    check_against_diffusers(VARIANTS["v2"], unet_configs.SD15, "v2-full", pack_module, frames=2, tolerance=1e-3)


def random_motion_adapter(config, v):
    """diffusers' MotionAdapter at `config`'s widths for variant `v`, random weights (seed 2)."""
    from diffusers import MotionAdapter

    widths = tuple(config["model_channels"] * m for m in config["channel_mult"])
    return randomize_(MotionAdapter(block_out_channels=widths, motion_layers_per_block=2, motion_num_attention_heads=8,
                                    motion_norm_num_groups=32, motion_max_seq_length=v["max_len"],
                                    use_motion_mid_block=v["mid"]), seed=2)


def check_against_diffusers(v, config, variant, pack_module, frames=FRAMES, tolerance=TOLERANCE):
    from diffusers import UNetMotionModel

    reference_2d = randomize_(diffusers_unet(config), seed=1)
    motion = random_motion_adapter(config, v)
    reference = UNetMotionModel.from_unet2d(reference_2d, motion).eval()

    importers = pack_module("videoldm_core.importers")
    patch = pack_module("host.temporal_adapter")
    spec, weights = importers.import_adapter(original_layout(motion.state_dict()), {}, f"{variant}.safetensors")
    assert (spec.source, spec.family, spec.max_frames) == (v["source"], v["family"], v["max_len"])
    spec = dataclasses.replace(spec, slots={p: dict(c, group_norm="video") for p, c in spec.slots.items()}, clip_norms=[])
    model = to_comfy_unet(reference_2d, config, pack_module)
    patched = patch.apply_adapter(model, patch.build_adapter_patcher(spec, weights, variant), variant)

    torch.manual_seed(3)
    x = torch.randn(1, 4, frames, 8, 8)
    t = torch.tensor([411.0])
    text = torch.randn(1, 7, config["context_dim"])
    with torch.no_grad():
        # diffusers takes the text per frame ((b f), n, d), as its pipelines repeat it
        expected = reference(x, t, encoder_hidden_states=text.expand(frames, -1, -1)).sample[0].movedim(1, 0)  # (F, C, H, W)
        options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0])
        got = patched.model.diffusion_model(x[0].movedim(1, 0), t.expand(frames), context=text.expand(frames, -1, -1),
                                            transformer_options=options)
        image_only = model.model.diffusion_model(x[0].movedim(1, 0), t.expand(frames), context=text.expand(frames, -1, -1),
                                                 transformer_options={"cond_or_uncond": [0]})
    assert (got - expected).abs().max() < tolerance
    assert (image_only - expected).abs().max() > 100 * tolerance, "the motion modules made no difference"


class OverClip(torch.nn.Module):
    """A GroupNorm applied to (b, c, f, h, w), as AnimateDiff v1's ResnetBlock3D norms and UNet3D
    conv_norm_out ran (torch.nn.GroupNorm on 5-D tensors): statistics over each video's frames."""

    def __init__(self, norm, frames):
        super().__init__()
        self.norm, self.frames = norm, frames

    def forward(self, x):   # ((b f), c, h, w)
        b = x.shape[0] // self.frames
        return self.norm(x.reshape(b, self.frames, *x.shape[1:]).transpose(1, 2)).transpose(1, 2).reshape(x.shape)


class PerFrame(torch.nn.Module):
    """The motion module's GroupNorm per frame, as AnimateDiff main's TemporalTransformer3DModel
    ran it (rearranged to (b f) c h w first); diffusers hands it (b, c, f, h, w)."""

    def __init__(self, norm):
        super().__init__()
        self.norm = norm

    def forward(self, x):   # (b, c, f, h, w)
        b, c, f, h, w = x.shape
        return self.norm(x.transpose(1, 2).reshape(b * f, c, h, w)).reshape(b, f, c, h, w).transpose(1, 2)


def original_norms(reference, variant, frames):
    """The diffusers reference with each GroupNorm where the original release ran it."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    if variant == "v1":
        for module in list(reference.modules()):
            if isinstance(module, ResnetBlock2D):
                module.norm1, module.norm2 = OverClip(module.norm1, frames), OverClip(module.norm2, frames)
            if isinstance(module, AnimateDiffTransformer3D):
                module.norm = PerFrame(module.norm)
        reference.conv_norm_out = OverClip(reference.conv_norm_out, frames)
    return reference   # the SDXL beta module: diffusers' own convention is the original's


@pytest.mark.parametrize("variant", ["v1", "sdxl"])
def test_imported_module_normalises_where_its_original_code_did(variant, pack_module):
    from diffusers import UNetMotionModel

    v, config = VARIANTS[variant], unet_configs.tiny(VARIANTS[variant]["base"])
    reference_2d = randomize_(diffusers_unet(config), seed=1)
    motion = random_motion_adapter(config, v)
    reference = UNetMotionModel.from_unet2d(reference_2d, motion).eval()
    patch = pack_module("host.temporal_adapter")
    spec, weights = pack_module("videoldm_core.importers").import_adapter(original_layout(motion.state_dict()), {}, variant)
    assert spec.clip_norms == (["resblock", "output"] if variant == "v1" else [])
    model = to_comfy_unet(reference_2d, config, pack_module)
    patched = patch.apply_adapter(model, patch.build_adapter_patcher(spec, weights, variant), variant)

    torch.manual_seed(3)
    x = torch.randn(2, 4, FRAMES, 8, 8)            # two videos: the cond and uncond halves of a CFG batch
    t = torch.tensor([411.0, 411.0])
    text = torch.randn(2, 7, config["context_dim"])
    with torch.no_grad():
        per_frame = reference(x, t, encoder_hidden_states=text.repeat_interleave(FRAMES, 0)).sample
        expected = original_norms(reference, variant, FRAMES)(x, t, encoder_hidden_states=text.repeat_interleave(FRAMES, 0)).sample
        frames_first = x.movedim(2, 1).reshape(2 * FRAMES, 4, 8, 8)
        options = dict(patched.model_options["transformer_options"], cond_or_uncond=[0, 1])
        wrappers = patched.wrappers   # the clone's DIFFUSION_MODEL wrappers, as sampling hands them to the UNet
        got = patched.model.diffusion_model(frames_first, t.repeat_interleave(FRAMES), context=text.repeat_interleave(FRAMES, 0),
                                            transformer_options={**options, "wrappers": wrappers})
    got = got.reshape(2, FRAMES, 4, 8, 8).movedim(1, 2)
    assert (got - expected).abs().max() < TOLERANCE
    if variant == "v1":
        assert (per_frame - expected).abs().max() > 100 * TOLERANCE, "clip-wide norms made no difference"


LORA_LAYERS = ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "up_blocks.3.attentions.1.transformer_blocks.0.attn2.to_v",
               "mid_block.attentions.0.transformer_blocks.0.ff.net.2")


def kohya_lora(reference, rank=4, seed=8):
    """A LoRA file's state dict in the kohya layout core's LoraLoader reads, for a few linear layers."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in LORA_LAYERS:
        weight = reference.get_submodule(name).weight
        key = "lora_unet_" + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator)
        out[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator)
        out[f"{key}.alpha"] = torch.tensor(float(rank))
    return out


def test_an_adapter_over_a_fine_tune_with_a_core_lora_is_the_adapter_maths_over_those_weights(pack_module):
    """A DreamBooth-style fine-tune (same layout, other weights) with a LoRA through core's loader,
    then the motion module: equal to diffusers' motion UNet over the fine-tune's weights with the
    LoRA merged (W + up·down·alpha/rank); the fine-tune MODEL itself stays untouched."""
    import comfy.sd
    from diffusers import UNetMotionModel

    v, config = VARIANTS["v2"], unet_configs.tiny(VARIANTS["v2"]["base"])
    motion = random_motion_adapter(config, v)
    patch = pack_module("host.temporal_adapter")
    spec, weights = pack_module("videoldm_core.importers").import_adapter(original_layout(motion.state_dict()), {}, "v2")
    spec = dataclasses.replace(spec, slots={p: dict(c, group_norm="video") for p, c in spec.slots.items()})
    adapter = patch.build_adapter_patcher(spec, weights, "v2")

    fine_tune_2d = randomize_(diffusers_unet(config), seed=7)
    lora = kohya_lora(fine_tune_2d)
    merged_2d = randomize_(diffusers_unet(config), seed=7)
    with torch.no_grad():
        for name in LORA_LAYERS:
            key = "lora_unet_" + name.replace(".", "_")
            merged_2d.get_submodule(name).weight += lora[f"{key}.lora_up.weight"] @ lora[f"{key}.lora_down.weight"]
    expected_unet = UNetMotionModel.from_unet2d(merged_2d, motion).eval()

    fine_tune = to_comfy_unet(fine_tune_2d, config, pack_module)
    before = {k: v.clone() for k, v in fine_tune.model.diffusion_model.state_dict().items()}
    with_lora, _ = comfy.sd.load_lora_for_models(fine_tune, None, lora, 1.0, 0.0)
    patched = patch.apply_adapter(with_lora, adapter, "v2")

    torch.manual_seed(3)
    x = torch.randn(1, 4, FRAMES, 8, 8)
    t = torch.tensor([411.0])
    text = torch.randn(1, 7, config["context_dim"])
    with torch.no_grad():
        expected = expected_unet(x, t, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample[0].movedim(1, 0)
        patched.patch_model(device_to=torch.device("cpu"))   # the LoRA patches, as a sampler's load applies them
        try:
            got = patched.model.diffusion_model(x[0].movedim(1, 0), t.expand(FRAMES), context=text.expand(FRAMES, -1, -1),
                                                transformer_options=dict(patched.model_options["transformer_options"],
                                                                         cond_or_uncond=[0], wrappers=patched.wrappers))
        finally:
            patched.unpatch_model()
        without_lora = UNetMotionModel.from_unet2d(fine_tune_2d, motion).eval()(
            x, t, encoder_hidden_states=text.expand(FRAMES, -1, -1)).sample[0].movedim(1, 0)
    assert (got - expected).abs().max() < TOLERANCE
    assert (without_lora - expected).abs().max() > 100 * TOLERANCE, "the LoRA made no difference"
    after = fine_tune.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the fine-tune MODEL's weights changed"

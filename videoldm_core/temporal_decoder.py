"""Temporal layers for the autoencoder's decoder (Video LDM §3.2: "we introduce additional temporal
layers for the autoencoder's decoder"; the encoder stays frozen). Layout and names of sgm's
`temporal_ae.VideoDecoder`, as in SVD's VAE:

- after every decoder ResNet block ("mid.block_1", "up.3.block.0", ...): `time_stack`, a 3D-conv
  residual block with (k,1,1) kernels and no timestep input, and `mix_factor`, blended the
  decoder's way round: α·temporal + (1−α)·spatial with α = sigmoid(mix_factor);
- after `conv_out`: `conv_out.time_mix_conv`, a Conv3d(k,1,1) applied to the output (not residual);
- optionally (sgm's time_mode "all"), after every decoder attention block ("mid.attn_1",
  "up.3.attn.0", ...): temporal self-attention over the frames at each position (a single-head
  temporal transformer block with a sinusoidal frame embedding), blended like the ResNet blocks.
  Its output layers start at zero, so fresh attention layers leave the decoder unchanged.

`TemporalDecoder.decode(decoder, z, T)` runs any image decoder in the LDM layout (conv_in, mid,
up[i].block/attn/upsample, norm_out, conv_out) with these layers; the image decoder's own
modules are used as they are, so the same temporal layers fit any KL-f8-style decoder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .alpha_blender import blend, merge_alpha, register_mix_factor
from .errors import VideoLDMError
from .layer_factory import placed, zero_
from .positional import sinusoidal_embedding
from .state_dict import check_weights, loadable_shapes
from .temporal_adapter import MAX_KERNEL_T, set_submodule
from .temporal_layers import TemporalResBlock, TemporalTransformerBlock
from .metadata_spec import MAX_WIDTH, MetadataSpec, expect_int
from .weights_file import WeightsFile, WeightsFileError, build_on_meta

TEMPORAL_DECODER_METADATA_KEY = "videoldm_temporal_decoder"
TEMPORAL_DECODER_VERSION = 1
# the decoder layers temporal layers follow, in the LDM decoder's names
BLOCK_PATH = re.compile(r"^(?:mid\.block_[12]|up\.\d{1,2}\.block\.\d{1,2})$")
ATTENTION_PATH = re.compile(r"^(?:mid\.attn_1|up\.\d{1,2}\.attn\.\d{1,2})$")


class TemporalDecoderFormatError(WeightsFileError):
    """A file or state dict is not a temporal decoder this pack can read."""


class DecodeInputError(VideoLDMError):
    """Latents, or a VAE, that the temporal decode cannot decode as a video."""


@dataclass(frozen=True)
class TemporalDecoderSpec(MetadataSpec):
    METADATA_KEY = TEMPORAL_DECODER_METADATA_KEY
    FORMAT_ERROR = TemporalDecoderFormatError

    blocks: dict                      # decoder ResNet block path -> channels
    out_channels: int                 # image channels of conv_out (time_mix_conv width)
    attention: dict = field(default_factory=dict)   # decoder attention block path -> channels (optional)
    kernel_t: int = 3
    merge_strategy: str = "learned"
    source: str = "native"
    description: str = ""
    version: int = TEMPORAL_DECODER_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.blocks, dict) or not self.blocks:
            raise TemporalDecoderFormatError(f"expected at least one decoder block, found {self.blocks!r:.40}.")
        if not isinstance(self.attention, dict):
            raise TemporalDecoderFormatError(f"attention: expected an object, found {type(self.attention).__name__}.")
        for field_name, layers, pattern in (("blocks", self.blocks, BLOCK_PATH), ("attention", self.attention, ATTENTION_PATH)):
            for path, channels in layers.items():
                if not pattern.match(path):
                    raise TemporalDecoderFormatError(f"{field_name}: expected decoder layer paths like "
                                                     f"{'mid.block_1, up.0.block.2' if field_name == 'blocks' else 'mid.attn_1, up.3.attn.0'}"
                                                     f", found {path!r:.60}.")
                expect_int(f"{field_name}[{path!r}] (channels)", channels, TemporalDecoderFormatError, maximum=MAX_WIDTH)
        expect_int("out_channels", self.out_channels, TemporalDecoderFormatError, maximum=MAX_WIDTH)
        expect_int("kernel_t", self.kernel_t, TemporalDecoderFormatError, maximum=MAX_KERNEL_T)
        if self.kernel_t % 2 == 0:
            raise TemporalDecoderFormatError(f"kernel_t: expected an odd number of frames, found {self.kernel_t}.")
        if not all(isinstance(v, str) for v in (self.source, self.description)) or not isinstance(self.extra, dict):
            raise TemporalDecoderFormatError("expected source and description as text and extra as an object.")
        if self.merge_strategy not in ("fixed", "learned"):
            raise TemporalDecoderFormatError(f"expected merge strategy 'fixed' or 'learned', found {self.merge_strategy!r}.")
        if not isinstance(self.version, int) or not 1 <= self.version <= TEMPORAL_DECODER_VERSION:
            raise TemporalDecoderFormatError(f"expected format version 1..{TEMPORAL_DECODER_VERSION}, found {self.version!r}.")


class DecoderTemporalBlock(nn.Module):
    def __init__(self, channels: int, kernel_t: int = 3, merge_strategy: str = "learned", alpha: float = 0.0, operations=nn):
        super().__init__()
        self.merge_strategy = merge_strategy
        self.time_stack = TemporalResBlock(channels, emb_channels=0, kernel_t=kernel_t, operations=operations)
        register_mix_factor(self, merge_strategy, alpha)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        z = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        z = blend(merge_alpha(self.merge_strategy, self.mix_factor), z, self.time_stack(z), alpha_on="temporal")
        return rearrange(z, "b c t h w -> (b t) c h w")


class DecoderTemporalAttention(nn.Module):
    """Self-attention over frames at each position after a decoder attention block, the pack's own
    design (not the layout of sgm's VideoBlock / core's AttnVideoBlock, which mixes inside the
    attention block, before proj_out, with α on the spatial branch; no public file ships those
    layers, SVD decodes with its 3D-conv blocks only): x + frame embedding → temporal transformer
    block → α·temporal + (1−α)·spatial."""

    def __init__(self, channels: int, merge_strategy: str = "learned", alpha: float = 0.0, operations=nn):
        super().__init__()
        self.merge_strategy = merge_strategy
        self.video_time_embed = nn.Sequential(operations.Linear(channels, channels * 4), nn.SiLU(),
                                              zero_(operations.Linear(channels * 4, channels)))
        self.time_mix_block = TemporalTransformerBlock(channels, heads=1, dim_head=channels, cross_attention=False,
                                                       operations=operations)
        register_mix_factor(self, merge_strategy, alpha)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        _, c, h, w = x.shape
        tokens = rearrange(x, "(b t) c h w -> (b h w) t c", t=num_frames)
        frames = sinusoidal_embedding(torch.arange(num_frames, device=x.device), c).to(x.dtype)
        mixed = self.time_mix_block(tokens + self.video_time_embed(frames)[None])
        mixed = rearrange(mixed, "(b h w) t c -> (b t) c h w", h=h, w=w)
        return blend(merge_alpha(self.merge_strategy, self.mix_factor), x, mixed, alpha_on="temporal")


class TimeMixConv(nn.Module):
    """Holds `time_mix_conv`: a Conv3d over frames applied to the decoder output. A fresh one is the
    identity (centre tap = identity matrix), so a fresh temporal decoder equals the image decoder."""

    def __init__(self, channels: int, kernel_t: int = 3, operations=nn):
        super().__init__()
        self.time_mix_conv = operations.Conv3d(channels, channels, (kernel_t, 1, 1), padding=(kernel_t // 2, 0, 0))
        with torch.no_grad():
            self.time_mix_conv.weight.zero_()
            self.time_mix_conv.weight[:, :, kernel_t // 2, 0, 0] = torch.eye(channels)
            self.time_mix_conv.bias.zero_()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        z = self.time_mix_conv(rearrange(x, "(b t) c h w -> b c t h w", t=num_frames))
        return rearrange(z, "b c t h w -> (b t) c h w")


class TemporalDecoder(nn.Module):
    def __init__(self, spec: TemporalDecoderSpec, operations=nn, dtype=None, device=None):
        super().__init__()
        self.spec = spec
        operations = placed(operations, dtype, device)
        for path, channels in spec.blocks.items():
            set_submodule(self, path, DecoderTemporalBlock(channels, spec.kernel_t, spec.merge_strategy, operations=operations))
        for path, channels in spec.attention.items():
            set_submodule(self, path, DecoderTemporalAttention(channels, spec.merge_strategy, operations=operations))
        self.conv_out = TimeMixConv(spec.out_channels, spec.kernel_t, operations=operations)

    def after(self, path: str, h: torch.Tensor, num_frames: int) -> torch.Tensor:
        known = path in self.spec.blocks or path in self.spec.attention
        return self.get_submodule(path)(h, num_frames) if known else h

    def load_weights(self, state_dict: dict, source: str = "temporal decoder", assign: bool = False):
        """Strict load; a mismatch is named before anything loads."""
        check_weights(loadable_shapes(self), state_dict, f"{source}: temporal decoder weights do not match its spec",
                      TemporalDecoderFormatError)
        self.load_state_dict(state_dict, strict=True, assign=assign)
        return self

    def decode(self, decoder: nn.Module, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`decoder`'s forward with the temporal layers after its blocks and output; z: ((b t), c, h, w)."""
        h = decoder.conv_in(z)
        h = self.after("mid.block_1", decoder.mid.block_1(h, None), num_frames)
        h = self.after("mid.attn_1", decoder.mid.attn_1(h), num_frames)
        h = self.after("mid.block_2", decoder.mid.block_2(h, None), num_frames)
        for i_level in reversed(range(decoder.num_resolutions)):
            level = decoder.up[i_level]
            for i_block in range(decoder.num_res_blocks + 1):
                h = self.after(f"up.{i_level}.block.{i_block}", level.block[i_block](h, None), num_frames)
                if len(level.attn) > 0:
                    h = self.after(f"up.{i_level}.attn.{i_block}", level.attn[i_block](h), num_frames)
            if i_level != 0:
                h = level.upsample(h)
        h = decoder.conv_out(F.silu(decoder.norm_out(h)))
        h = self.conv_out(h, num_frames)
        return torch.tanh(h) if getattr(decoder, "tanh_out", False) else h


def spec_for_decoder(decoder: nn.Module, kernel_t: int = 3, attention: bool = False, **fields) -> TemporalDecoderSpec:
    """The temporal layers an LDM-layout image decoder takes: one block per ResNet block, and with
    `attention` one temporal attention layer per attention block (sgm's time_mode "all")."""
    blocks = {"mid.block_1": decoder.mid.block_1.out_channels, "mid.block_2": decoder.mid.block_2.out_channels}
    attn = {"mid.attn_1": decoder.mid.block_1.out_channels} if attention else {}
    for i_level in range(decoder.num_resolutions):
        for i_block, block in enumerate(decoder.up[i_level].block):
            blocks[f"up.{i_level}.block.{i_block}"] = block.out_channels
            if attention and len(decoder.up[i_level].attn) > i_block:
                attn[f"up.{i_level}.attn.{i_block}"] = block.out_channels
    return TemporalDecoderSpec(blocks=blocks, out_channels=decoder.conv_out.out_channels, kernel_t=kernel_t,
                               attention=attn, **fields)


def read_addon(weights: dict, metadata: dict | None, source: str) -> tuple[TemporalDecoderSpec, dict]:
    """(spec, weights) of a temporal-decoder add-on file's contents (the pack's format: the decoder's
    temporal layers with their spec in the safetensors metadata)."""
    if not metadata or TEMPORAL_DECODER_METADATA_KEY not in metadata:
        raise TemporalDecoderFormatError(f"{source} is not a temporal-decoder add-on (no "
                                         f"'{TEMPORAL_DECODER_METADATA_KEY}' metadata).")
    return TemporalDecoderSpec.from_json(metadata[TEMPORAL_DECODER_METADATA_KEY], source), weights


def check_temporal_decoder(spec: TemporalDecoderSpec, shapes: dict, file: WeightsFile):
    """The temporal decoder `spec` describes, built on the meta device, against `shapes` (the
    file's, in the native layout): a spec that declares more than the file holds is refused
    before anything is allocated."""
    module = build_on_meta(lambda: TemporalDecoder(spec), file, "temporal decoder")
    check_weights(module.state_dict(), shapes, f"{file.source}: temporal decoder weights do not match its spec",
                  TemporalDecoderFormatError)


def check_fits_decoder(spec: TemporalDecoderSpec, decoder: nn.Module, source: str, vae_source: str):
    """An add-on's temporal layers against the image decoder they follow (any device, meta too): a
    layer after a block the decoder lacks, or of another width, is refused before it is built."""
    layout = spec_for_decoder(decoder, attention=True)
    for ours, theirs in ((spec.blocks, layout.blocks), (spec.attention, layout.attention)):
        for path, channels in ours.items():
            if theirs.get(path) != channels:
                found = f"{theirs[path]} channels there" if path in theirs else "no such layer"
                raise TemporalDecoderFormatError(
                    f"{source}: its temporal layer after {path} has {channels} channels, but the decoder of {vae_source} "
                    f"has {found}. Choose the add-on made for this VAE, or 'none'.")
    if spec.out_channels != layout.out_channels:
        raise TemporalDecoderFormatError(f"{source}: its output layer has {spec.out_channels} channels, the decoder of "
                                         f"{vae_source} outputs {layout.out_channels}. Choose the add-on made for this VAE.")


def read_addon_file(path, name: str, decoder: nn.Module | None = None, vae_source: str = "the VAE"
                    ) -> tuple[TemporalDecoderSpec, dict]:
    """(spec, weights) of a temporal-decoder add-on file, checked against its shapes (and, given the
    image `decoder` it will follow, against that decoder's widths) before any weight is read, and
    refused if any weight is NaN or infinite."""
    file = WeightsFile(path, name, TemporalDecoderFormatError)
    spec, shapes = read_addon(file.shapes, file.metadata, file.source)
    check_temporal_decoder(spec, shapes, file)
    if decoder is not None:
        check_fits_decoder(spec, decoder, file.source, vae_source)
    return spec, file.tensors()


def split_svd_vae(state_dict: dict, source: str = "VAE") -> tuple[dict, TemporalDecoderSpec, dict]:
    """An SVD VAE (bare, or an SVD checkpoint's `first_stage_model.*`) -> (image VAE state dict,
    temporal decoder spec, temporal decoder state dict in the native layout)."""
    prefix = "first_stage_model."
    if any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    image, temporal = {}, {}
    for key, value in state_dict.items():
        if key.startswith("decoder.") and (".time_stack." in key or key.endswith(".mix_factor") or ".time_mix_conv." in key):
            temporal[key[len("decoder."):]] = value
        else:
            image[key] = value
    if not temporal:
        raise TemporalDecoderFormatError(f"{source}: no temporal decoder layers ('decoder.*.time_stack.*', "
                                         "'decoder.*.mix_factor', 'decoder.conv_out.time_mix_conv.*').")
    if "decoder.conv_in.weight" not in image:
        raise TemporalDecoderFormatError(f"{source}: temporal decoder layers without an image decoder ('decoder.conv_in.weight').")
    try:
        blocks = {k.removesuffix(".mix_factor"): temporal[k.removesuffix("mix_factor") + "time_stack.in_layers.2.weight"].shape[0]
                  for k in temporal if k.endswith(".mix_factor")}
        mix = temporal["conv_out.time_mix_conv.weight"]
        spec = TemporalDecoderSpec(blocks=blocks, out_channels=mix.shape[0], kernel_t=mix.shape[2], source="svd")
    except KeyError as e:
        raise TemporalDecoderFormatError(f"{source}: SVD temporal decoder layers in an unknown layout (no {e}).") from None
    except IndexError:
        raise TemporalDecoderFormatError(f"{source}: SVD temporal decoder layers in an unknown layout (a weight with "
                                         f"too few dimensions).") from None
    except TemporalDecoderFormatError as e:
        raise TemporalDecoderFormatError(f"{source}: {e}") from None
    return image, spec, temporal

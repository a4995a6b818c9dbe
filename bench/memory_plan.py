"""Memory plan for training at the paper's sizes (issue 21): what one GPU holds when it trains the
SD1.x / SD2.x temporal layers (649M / 656M trained, the spatial UNet frozen) or the paper's
all-trainable 1.5B interpolation model, with DDP or FSDP, bf16 autocast and gradient checkpointing.

Parameter counts are real: ComfyUI's SD UNets, text encoders and VAE and the pack's own Video LDM
adapter (host.unet_layout + videoldm_core.placement, with the context encoder and the interpolation
embedding) are built on the meta device and counted. Layer input shapes are real too (a forward of
the UNet on meta tensors). Activations are an ESTIMATE, not a measurement (no GPU was lent):

  - with gradient checkpointing (host/temporal_forward.py: each spatial layer and its temporal slots
    are one checkpointed region) a step keeps every region's input (bf16) and, in the backward,
    one region recomputed: the largest of RECOMPUTE[kind] x its input, RECOMPUTE = 60 input-sized
    bf16 tensors for a transformer (per token of width C: norms saved in fp32 under autocast,
    q/k/v/out of self- and cross-attention, GEGLU's 8C projection and its gate, for the spatial and
    the temporal block, plus gradients in flight) and 14 for a ResBlock with its 3D-conv block
    (norms, SiLUs and conv inputs of both);
  - without checkpointing every region keeps its RECOMPUTE tensors at once.

Bytes per trainable parameter: fp32 weights 4 + gradients 4 + AdamW's two moments 8 + EMA 4 = 20
with DDP's gradient_as_bucket_view=True (the gradients live in the all-reduce buckets; without it
DDP holds the buckets besides: 24); autocast's bf16 copies of the weights add 2 during the step.
FSDP (train.sharding "fsdp", FSDP2 fully_shard on the phase as one unit) keeps 20 / N per rank and,
during the step, the gathered fp32 weights and their full gradients (before the reduce-scatter)
plus the bf16 copies: 10 B per parameter more. Frozen weights (UNet, VAE, text encoder: streamed
data is encoded on the training GPU) in bf16 (2 B) or fp32 (4 B). CUDA context, NCCL buffers and
allocator slack: OVERHEAD_GIB.

Usage: .venv/bin/python -m bench.memory_plan [--frames 16] [--height 320] [--width 512] [--gpus 8]
"""

from __future__ import annotations

import argparse
import importlib

import torch

from devtools import unet_configs
from devtools.comfy_in_process import init_comfy
from devtools.public_checkpoints import SD15_VAE

from .common import print_table

GIB = 2**30
# input-sized bf16 tensors one checkpointed layer (with its temporal slots) holds while recomputed (estimate)
RECOMPUTE = {"SpatialTransformer": 60, "ResBlock": 14}
OVERHEAD_GIB = 2.0      # CUDA context, NCCL buffers, allocator fragmentation (estimate)
DDP_BYTES, DDP_NO_VIEW_BYTES, FSDP_SHARDED_BYTES, FSDP_STEP_BYTES, AUTOCAST_BYTES = 20, 24, 20, 10, 2
# the paper's per-GPU batches ([S] table, method notes): prediction 3 on A100-80GB, interpolation 8
PAPER_BATCH = {"prediction": 3, "interpolation": 8}


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(family: str):
    """(spatial UNet, Video LDM adapter with context encoder + interpolation embedding, text encoder,
    VAE) parameter counts, and the UNet's layer input shapes at `shape`, all on the meta device."""
    pack = init_comfy(extra_args=("--use-pytorch-cross-attention",))   # SDPA runs on meta tensors
    import comfy.ops
    import comfy.sd1_clip
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.text_encoders.sd2_clip import SD2ClipModel

    layout_of = importlib.import_module(f"{pack.__name__}.host.unet_layout").spatial_layout
    adapters = importlib.import_module(f"{pack.__name__}.videoldm_core.temporal_adapter")
    placement = importlib.import_module(f"{pack.__name__}.videoldm_core.placement")
    config = unet_configs.SD15 if family == "SD1.x" else unet_configs.SD21
    with torch.device("meta"):
        unet = UNetModel(**config, operations=comfy.ops.disable_weight_init)
        text = comfy.sd1_clip.SDClipModel() if family == "SD1.x" else SD2ClipModel()
        vae = AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4)
    layout = layout_of(unet)
    plain = adapters.AdapterSpec(family, "videoldm", placement.videoldm_slots(layout))
    emb = {layer.emb_channels for layer in layout if layer.kind == "resblock"}.pop()
    full = adapters.AdapterSpec(family, "videoldm", placement.videoldm_slots(layout, context_channels=64),
                                context_encoder=dict(in_channels=5, width=64, levels=len(config["channel_mult"])),
                                context_frames=[0, 1, 2], interpolation=dict(emb_channels=emb, regimes=2,
                                                                             augmentation=[0.0, 0.3]))
    return {"unet": count(unet), "temporal": count(adapters.TemporalAdapter(plain, device="meta")),
            "adapter": count(adapters.TemporalAdapter(full, device="meta")), "text": count(text), "vae": count(vae),
            "unet_module": unet, "context_dim": config["context_dim"]}


def layer_inputs(unet, frames: int, latent: tuple[int, int], context_dim: int) -> list[tuple[str, int]]:
    """(kind, elements of its input) of each ResBlock and SpatialTransformer (the checkpointed
    regions) for one clip, from a forward on meta tensors."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    sizes = []
    hooks = [m.register_forward_pre_hook(lambda module, args: sizes.append((type(module).__name__, args[0].numel())))
             for m in unet.modules() if type(m) in (ResBlock, SpatialTransformer)]
    with torch.no_grad():
        unet(torch.empty(frames, 4, *latent, device="meta"), torch.empty(frames, device="meta"),
             context=torch.empty(frames, 77, context_dim, device="meta"), transformer_options={})
    for hook in hooks:
        hook.remove()
    return sizes


def activation_gib(inputs: list[tuple[str, int]], clips: int, checkpointing: bool = True) -> float:
    """The ESTIMATE described above, bf16, for `clips` clips."""
    held = [RECOMPUTE[kind] * size for kind, size in inputs]
    per_clip = sum(size for _, size in inputs) + max(held) if checkpointing else sum(held)
    return clips * per_clip * 2 / GIB


def plan(args) -> list[tuple]:
    rows = []
    latent = (args.height // 8, args.width // 8)
    for family in ("SD1.x", "SD2.x"):
        sizes = build(family)
        inputs = layer_inputs(sizes["unet_module"], args.frames, latent, sizes["context_dim"])
        act_1 = activation_gib(inputs, 1)
        print(f"{family}: spatial UNet {sizes['unet'] / 1e6:.2f}M, Video LDM temporal layers {sizes['temporal'] / 1e6:.2f}M "
              f"(+ context encoder and interpolation embedding: {sizes['adapter'] / 1e6:.2f}M), text encoder "
              f"{sizes['text'] / 1e6:.1f}M, VAE {sizes['vae'] / 1e6:.1f}M; activations per clip of {args.frames} x "
              f"{args.height}x{args.width} (estimate): {act_1:.2f} GiB with checkpointing, "
              f"{activation_gib(inputs, 1, False):.1f} GiB without", flush=True)
        setups = [(f"{family} prediction: temporal layers", sizes["adapter"], sizes["unet"], "prediction")]
        if family == "SD1.x":   # the paper's interpolation model: 1,509M, spatial layers trained too
            setups.append(("SD1.x interpolation: all trainable", sizes["adapter"] + sizes["unet"], 0, "interpolation"))
        for name, trainable, frozen_unet, kind in setups:
            frozen = frozen_unet + sizes["text"] + sizes["vae"]
            for batch in (1, PAPER_BATCH[kind]):
                act = activation_gib(inputs, batch)
                common = frozen * 2 / GIB + trainable * AUTOCAST_BYTES / GIB + act + OVERHEAD_GIB
                ddp = trainable * DDP_BYTES / GIB + common
                fsdp = trainable * (FSDP_SHARDED_BYTES / args.gpus + FSDP_STEP_BYTES - AUTOCAST_BYTES) / GIB + common
                rows.append((name, f"{trainable / 1e6:,.0f}M", f"{frozen / 1e6:,.0f}M", f"{frozen * 2 / GIB:.1f} / "
                             f"{frozen * 4 / GIB:.1f}", str(batch), f"{act:.1f}", f"{ddp:.1f}", fits(ddp),
                             f"{fsdp:.1f}", fits(fsdp)))
    return rows


def fits(gib: float) -> str:
    return "40+80 GB" if gib <= 40 * 0.93 else "80 GB" if gib <= 80 * 0.93 else "neither"   # 7 % kept free


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--gpus", type=int, default=8, help="ranks FSDP splits over")
    args = parser.parse_args(argv)
    rows = plan(args)
    print_table(f"GiB per GPU, bf16 autocast + gradient checkpointing, {args.frames} x {args.height}x{args.width}, "
                f"FSDP over {args.gpus} ranks (frozen weights in bf16; activations and overhead are estimates)",
                rows, ("setup", "trained", "frozen", "frozen GiB bf16 / fp32", "clips/GPU", "activations",
                       "DDP", "DDP fits", f"FSDP/{args.gpus}", "FSDP fits"))


if __name__ == "__main__":
    main()

"""GroupNorms of the frozen image model run over all frames of a clip, where a public module's
original code did (AnimateDiff v1 and HotshotXL: `nn.GroupNorm` on (b, c, f, h, w) in every ResBlock
and the UNet's output norm), on the patched clone only.

`clip_wise` gives the listed norm modules a (g t) c h w → g c t h w view for the duration of one
call of one layer: statistics over each cond's T frames (g = the conds batched by CFG; core
context windows call with the window's frames). The hooks live only inside that call, made by the
clone's own layer handler or DIFFUSION_MODEL wrapper: the input MODEL and every other branch run
the norms per frame, as before.
"""

from __future__ import annotations

from contextlib import contextmanager

from einops import rearrange

from .keys import OPTIONS_KEY


@contextmanager
def clip_wise(norms, groups: int, strength: float = 1.0):
    """`strength` s: per frame + s (over the clip - per frame), as an adapter's strength scales its
    slots' change (s = 1: over the clip alone; near 0: near the image model's per-frame norm)."""
    def before(module, args):
        return (rearrange(args[0], "(g t) c h w -> g c t h w", g=groups), *args[1:])

    def after(module, args, out):
        clip = rearrange(out, "g c t h w -> (g t) c h w")
        if strength == 1.0:
            return clip
        frames = rearrange(args[0], "g c t h w -> (g t) c h w")
        per_frame = type(module).forward(module, frames)   # the module's own forward, no hooks
        return per_frame + strength * (clip - per_frame)

    handles = [h for norm in norms for h in (norm.register_forward_pre_hook(before), norm.register_forward_hook(after))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def clip_norms_of(adapters) -> set:
    """The union of the applied adapters' clip-wide norms."""
    return {norm for a in adapters for norm in a.adapter.spec.clip_norms}


def clip_norm_strength(adapters, norm: str) -> float:
    """The strength of `norm` over the clip: the largest of the adapters that run it so."""
    return max(a.strength for a in adapters if norm in a.adapter.spec.clip_norms)


def resblock_norms(layer):
    """A ResBlock's two GroupNorms: the first of in_layers and of out_layers."""
    return layer.in_layers[0], layer.out_layers[0]


def output_norm_over_clip(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    """DIFFUSION_MODEL wrapper: the UNet's output GroupNorm over each cond's frames."""
    groups = len(transformer_options.get("cond_or_uncond", [0]))
    adapters = transformer_options.get(OPTIONS_KEY, [])
    if x.shape[0] // groups < 2 or "output" not in clip_norms_of(adapters):
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    with clip_wise([executor.class_obj.out[0]], groups, clip_norm_strength(adapters, "output")):
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

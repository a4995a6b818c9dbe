"""The paper's four ablations on the toy family, side by side, over held-out moving-shapes clips
and several seeds (mean ± standard deviation), with metrics that fit data whose motion is known
(devtools/video_metrics.py):

1. frames from the image model alone vs with temporal layers (the predictor with no context
   frames is the plain video model): trajectory jerk of the shapes' centroids, px/frame²;
2. the image decoder vs the temporally fine-tuned decoder on encoded held-out clips:
   temporal-difference error against the true frames (reconstruction flicker);
3. per-frame x4 upscaling vs the temporal x4 upscaler from the true 64x64 frames: temporal-
   difference error against the true 256x256 frames;
4. prediction rollout without (context scale 1) vs with context guidance: frame change across
   segment boundaries relative to the change elsewhere.
Lower is better everywhere; the paper's direction is "ours" below "baseline".

Usage: python -m devtools.toy_eval [--family toy] [--seeds 3] [--videos 4] [--steps 20] [--only 1 2 3 4]
                                   [--upscale-steps 6] [--upscale-cfg 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch

from . import paths
from .comfy_in_process import init_comfy
from .toy_family import FPS, KEYFRAME_FPS, NAMES, SEED, SIDE, family_file

EVAL_SEED = SEED + 7  # held-out clips: the training data used SEED, SEED + 1 and SEED + 2
FRAMES = 8


class Family:
    """The toy family loaded through the pack's own loaders."""

    def __init__(self, folder: Path):
        pack = init_comfy()
        self.m = lambda name: importlib.import_module(f"{pack.__name__}.{name}")
        bundle_host, bundle = self.m("host.bundle"), self.m("videoldm_core.bundle")
        from comfy.utils import load_torch_file

        def bundle_at(key):
            path = family_file(folder, key)
            return bundle_host.build_components(bundle.read_bundle_spec(path), load_torch_file(str(path)), NAMES[key])

        self.model, self.clip, self.vae = bundle_at("base")
        self.x4_model, _, self.x4_vae = bundle_at("x4")
        adapters = self.m("host.temporal_adapter")
        patch = self.m("host.temporal_adapter")
        predictor = adapters.load_temporal_adapter(str(family_file(folder, "predictor")), NAMES["predictor"])
        self.video_model = patch.apply_adapter(self.model, predictor.patcher, predictor.name)
        x4_temporal = adapters.load_temporal_adapter(str(family_file(folder, "x4-temporal")), NAMES["x4-temporal"])
        self.x4_video_model = patch.apply_adapter(self.x4_model, x4_temporal.patcher, x4_temporal.name)
        temporal_vae = self.m("host.temporal_decoder")
        addon = temporal_vae.read_addon_file(str(family_file(folder, "decoder")), NAMES["decoder"])
        self.temporal_vae = temporal_vae.load_temporal_vae(load_torch_file(str(family_file(folder, "base"))), NAMES["base"], addon)
        self.decode_video = temporal_vae.decode_video

    def prompt(self, text: str):
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))


def held_out(seed: int, count: int, fps: float, scale: int = 1):
    from devtools.synthetic_data import scene_seed
    from videoldm_core.moving_shapes import moving_shapes_clip

    return [moving_shapes_clip(scene_seed(EVAL_SEED + seed, i), FRAMES, SIDE, SIDE, fps, scale=scale) for i in range(count)]


def as_video(images: torch.Tensor) -> torch.Tensor:
    """IMAGE (T, H, W, 3) in [0, 1] -> (T, 3, H, W) in [-1, 1]."""
    return images.movedim(-1, 1).float() * 2 - 1


def images_of(frames: torch.Tensor) -> torch.Tensor:
    return ((frames.movedim(1, -1) + 1) / 2).clamp(0, 1)


def ablation_temporal_alignment(family: Family, seed: int, count: int, steps: int, cfg: float):
    import comfy.sample

    from devtools.video_metrics import shape_centroids, trajectory_jerk

    out = {"baseline": [], "ours": []}
    negative = family.prompt("")
    for i, clip in enumerate(held_out(seed, count, KEYFRAME_FPS)):
        positive = family.prompt(clip.caption)
        latent = torch.zeros(FRAMES, 4, SIDE // 4, SIDE // 4)
        noise = comfy.sample.prepare_noise(latent, seed * 1000 + i)
        for key, model in (("baseline", family.model), ("ours", family.video_model)):
            samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                                          disable_pbar=True, seed=seed * 1000 + i)
            video = as_video(family.vae.decode(samples))
            try:
                out[key].append(trajectory_jerk(shape_centroids(video)[0]))
            except ValueError:   # no shapes drawn in three consecutive frames: the worst case
                out[key].append(float("inf"))
    return out


def ablation_decoder(family: Family, seed: int, count: int):
    from devtools.video_metrics import temporal_difference_error

    out = {"baseline": [], "ours": []}
    for clip in held_out(seed, count, FPS):
        z = family.vae.encode(images_of(clip.frames))
        out["baseline"].append(temporal_difference_error(as_video(family.vae.decode(z)), clip.frames))
        out["ours"].append(temporal_difference_error(as_video(family.decode_video(family.temporal_vae, z, 17, 1)), clip.frames))
    return out


def ablation_upscaler(family: Family, seed: int, count: int, steps: int, cfg: float):
    from devtools.video_metrics import temporal_difference_error

    upscale = family.m("nodes.video_upscale").VideoUpscale
    out = {"baseline": [], "ours": []}
    negative = family.prompt("")
    low = held_out(seed, count, FPS)
    high = held_out(seed, count, FPS, scale=4)
    for i, (small, large) in enumerate(zip(low, high)):
        positive = family.prompt(small.caption)
        for key, model in (("baseline", family.x4_model), ("ours", family.x4_video_model)):
            latent = upscale.execute(model, positive, negative, 0.1, seed * 1000 + i, steps, cfg, "euler", "normal",
                                     SIDE, 16, FRAMES, 2, images=images_of(small.frames)).result[0]["samples"]
            video = as_video(family.x4_vae.decode(latent))
            out[key].append(temporal_difference_error(video, large.frames))
    return out


def ablation_context_guidance(family: Family, seed: int, count: int, steps: int, cfg: float, scale: float):
    from videoldm_core.rollout import plan_rollout
    from devtools.video_metrics import boundary_jump

    extend = family.m("nodes.rollout").ExtendVideo
    out = {"baseline": [], "ours": []}
    negative = family.prompt("")
    segments, length, context = 3, FRAMES, 2
    plan = plan_rollout(1, length, context, segments)
    boundaries, end = [], 1
    for segment in plan:
        boundaries.append(end)
        end += segment.new_frames
    for i, clip in enumerate(held_out(seed, count, KEYFRAME_FPS)):
        positive = family.prompt(clip.caption)
        first = family.vae.encode(images_of(clip.frames[:1]))
        for key, s in (("baseline", 1.0), ("ours", scale)):
            samples = extend.execute(family.video_model, positive, negative, {"samples": first}, segments, length,
                                     context, seed * 1000 + i, steps, cfg, s, "euler", "normal").result[0]["samples"]
            out[key].append(boundary_jump(as_video(family.vae.decode(samples)), boundaries[1:]))
    return out


ABLATIONS = {
    "1 image frames vs temporal layers (jerk, px/frame^2)": "temporal_alignment",
    "2 image decoder vs temporal decoder (temporal-difference error)": "decoder",
    "3 per-frame vs temporal x4 upscaler (temporal-difference error)": "upscaler",
    "4 rollout without vs with context guidance (boundary jump)": "context_guidance",
}


def verdict(baseline: list[float], ours: list[float]) -> str:
    """Side by side over seeds, and the paired margin (baseline - ours per seed: both sides of a
    seed see the same clips and noise) against its own seed-to-seed spread."""
    from devtools.video_metrics import mean_and_spread

    (b, b_sd), (o, o_sd) = mean_and_spread(baseline), mean_and_spread(ours)
    margin, margin_sd = mean_and_spread([x - y for x, y in zip(baseline, ours)])
    if margin > 0 and margin > margin_sd and margin > max(b_sd, o_sd):
        word = "paper's direction, margin > every spread"
    elif margin > 0 and margin > margin_sd:
        word = "paper's direction, paired margin > its spread, within the unpaired spread"
    elif margin > 0:
        word = "paper's direction, within spread"
    else:
        word = "NOT the paper's direction"
    return (f"baseline {b:.4f} ± {b_sd:.4f}   ours {o:.4f} ± {o_sd:.4f}   paired margin {margin:.4f} ± {margin_sd:.4f}"
            f"   ({word})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default=str(paths.REPO_ROOT / "toy"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--videos", type=int, default=4, help="held-out clips per seed")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--context-scale", type=float, default=1.5)
    parser.add_argument("--upscale-steps", type=int, default=6, help="ablation 3 (as the cascade workflow runs it)")
    parser.add_argument("--upscale-cfg", type=float, default=1.0)
    parser.add_argument("--only", type=int, nargs="+", choices=(1, 2, 3, 4), help="run these ablations only")
    parser.add_argument("--out", help="write the per-seed numbers as JSON here")
    args = parser.parse_args(argv)
    family = Family(Path(args.family))
    results = {}
    with torch.inference_mode():
        for number, (title, name) in enumerate(ABLATIONS.items(), 1):
            if args.only and number not in args.only:
                continue
            per_seed = {"baseline": [], "ours": []}
            for seed in range(args.seeds):
                if name == "decoder":
                    run = ablation_decoder(family, seed, args.videos)
                elif name == "temporal_alignment":
                    run = ablation_temporal_alignment(family, seed, args.videos, args.steps, args.cfg)
                elif name == "upscaler":
                    run = ablation_upscaler(family, seed, args.videos, args.upscale_steps, args.upscale_cfg)
                else:
                    run = ablation_context_guidance(family, seed, args.videos, args.steps, args.cfg, args.context_scale)
                for key in per_seed:   # one number per seed: the mean over its clips
                    per_seed[key].append(sum(run[key]) / len(run[key]))
            results[title] = per_seed
            print(f"[eval] {title}: {per_seed}", file=sys.stderr, flush=True)
    print(f"\nToy family ablations ({args.seeds} seeds x {args.videos} held-out clips, {args.steps} steps, cfg {args.cfg}; "
          f"upscaler {args.upscale_steps} steps, cfg {args.upscale_cfg}); lower is better; mean ± std over seeds")
    for title, per_seed in results.items():
        print(f"  {title}: {verdict(per_seed['baseline'], per_seed['ours'])}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training on streamed WebDataset shards (the run config's data.shards): clips decoded in DataLoader
workers (videoldm_core.training.shards), encoded on the training device as each batch arrives, with
the frozen VAE and text encoder, no-grad: no rank ever holds the dataset, encoded or not."""

from __future__ import annotations

import torch

from ..videoldm_core.interpolation import regime_fps
from ..videoldm_core.training.batches import stack_items
from ..videoldm_core.training.modes import mode_named
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.shards import ShardClips, shard_urls
from ..videoldm_core.training.streamed_batches import StreamedBatches
from .training_data import clip_spec, training_items


def streamed_encoder(model, vae, mode, encode_text=None, regime: int | None = None):
    """items (decoded clips: frames (T, 3, H, W) in [-1, 1], caption) -> the batch the phases read,
    as the in-memory path builds it: latents in the model's latent space, the x4 upscaler's low-res
    frames, each clip's caption encoding when captions are on, the interpolation regime label."""
    mode = mode_named(mode)

    def encode(items: list[dict]) -> dict:
        clips = []
        for item in items:
            frames = item["frames"]
            [clip] = training_items(model, vae, (frames.movedim(1, -1) + 1) / 2, frames.shape[0], mode,
                                    stride=frames.shape[0])
            if regime is not None:
                clip["regime"] = torch.tensor(regime)
            clips.append(clip)
        if encode_text is not None:
            for clip, text in zip(clips, encode_text([item["caption"] or "" for item in items])):
                clip["text"] = text.float()
        return stack_items(clips)

    return encode


def streamed_batches(model, vae, data: dict, mode, seed: int, batch_size: int, regimes, encode_text=None,
                     allow_pipe: bool = False) -> StreamedBatches:
    """The config's data.shards as a step's batches (data.shuffle: the sample buffer, data.workers:
    DataLoader workers decoding ahead; data.crop / data.start "random" and data.flip: augmentation
    drawn per clip and pass). Interpolation streams one regime per run: the clips of
    T -> 4T and 4T -> 16T are read at different rates."""
    mode = mode_named(mode)
    regime = None
    if mode.has_regimes:
        if len(regimes) != 1:
            raise TrainingError(f"streamed shards train interpolation in one regime per run (adapter.regimes [0] reads "
                                f"clips at data.fps, [1] at 4 x data.fps), found {list(regimes)}; or pre-encode a "
                                "data folder for both.")
        regime = regimes[0]
    fps = data.get("fps") if not regime else regime_fps(data["fps"], regime)   # data.fps is there: the config's check
    clips = ShardClips(shard_urls(data["shards"], allow_pipe=allow_pipe), clip_spec(data, fps), seed=seed,
                       shuffle=data.get("shuffle", 256), flip=data.get("flip", False))
    return StreamedBatches(clips, batch_size, streamed_encoder(model, vae, mode, encode_text, regime), seed=seed,
                           workers=data.get("workers", 2))

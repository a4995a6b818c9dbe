"""Encode once, train many times: clip latents (and caption embeddings) in safetensors shards.

The frozen autoencoder and text encoder see each clip once; training then reads `latents`
(N, T, C, h, w), `text` (N, L, D) and whatever else the encoder gave per clip (the x4 upscaler's
`low_res` frames) from shard_00000.safetensors, ..., one item at a time (`CachedClips`). A cache
is trusted only through index.json, which carries a key over the files, the clip spec and the
encoder identity, and is written last. Every file is written to a temporary name and renamed, so an
interrupted build leaves only whole shards; each shard records its key and clip names, and a
rebuild with the same key keeps the shards already finished. Which clips each step and rank read is
batches.py's business.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from torch import Tensor

from ..limits import all_finite
from ..weights_file import save_safetensors, write_atomically
from .objective import TrainingError

CACHE_VERSION = 2   # 2: clips start at every start whose last frame the source holds (training.data.frame_indices)
INDEX_FILE = "index.json"


def cache_key(entries: Sequence, spec, encoder_id: str, captions: bool = False, **settings) -> str:
    """A hash of what the cached tensors depend on: each entry's name, size and mtime (and caption,
    when captions are encoded), the clip spec, the encoder identity (name every model that turns
    data into tensors, e.g. "vae:sd15-ema|text:clip-l") and further `settings` (seed, source fps)."""
    files = [[e.name, e.size, e.mtime_ns] + ([getattr(e, "caption", None)] if captions else []) for e in entries]
    description = {"version": CACHE_VERSION, "files": files, "spec": asdict(spec), "encoder": encoder_id,
                   "captions": captions, "settings": settings}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _shard_name(s: int) -> str:
    return f"shard_{s:05d}.safetensors"


def _read_index(cache_dir: Path) -> dict | None:
    """The cache's index, or None when there is none usable: anything but what `build_latent_cache`
    writes (its own shard names, counts that agree) is no cache, as the temp folder can be written
    through ComfyUI's upload API."""
    try:
        index = json.loads((cache_dir / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(index, dict):
        return None
    shards, names, count, size = (index.get(k) for k in ("shards", "names", "count", "shard_size"))
    usable = (isinstance(shards, list) and shards == [_shard_name(s) for s in range(len(shards))]
              and isinstance(index.get("key"), str) and isinstance(count, int) and isinstance(size, int) and size >= 1
              and isinstance(names, list) and len(names) == count and all(isinstance(n, str) for n in names)
              and len(shards) == -(-count // size))
    return index if usable else None


CACHED_TENSORS = ("latents", "low_res", "text")   # what build_latent_cache writes per clip


def _finished_shard(path: Path, key: str, names: list[str], shapes: dict | None = None) -> dict | None:
    """The per-clip shapes of a shard left by an earlier (maybe interrupted) build with this key and
    these clips, else None. It must hold only the tensors a build writes, in a float type, one row
    per clip (of `shapes` per row, when given): the temp folder takes uploads, and the index's key
    can be read back through ComfyUI's /view, so a shard is checked by what it holds, not by the
    name it states."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return _shard_rows(f, key, names, shapes)
    except Exception:
        return None


def _shard_rows(f, key: str, names: list[str], shapes: dict | None = None) -> dict | None:
    """`_finished_shard` on an open shard `f`."""
    meta = f.metadata() or {}
    held = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    rows = {k: shape[1:] for k, (shape, _) in held.items()}
    sound = (meta.get("key") == key and meta.get("names") == json.dumps(names) and "latents" in held
             and set(held) <= set(CACHED_TENSORS) and all(dtype in ("F16", "BF16", "F32") for _, dtype in held.values())
             and all(shape[:1] == [len(names)] for shape, _ in held.values())
             and (shapes is None or rows == shapes))
    return rows if sound else None


def build_latent_cache(dataset, encode: Callable[[Tensor], Tensor | dict[str, Tensor]], cache_dir, encoder_id: str,
                       shard_size: int = 64, encode_text: Callable[[list[str]], Tensor] | None = None,
                       progress=None, built_by: tuple[str, str] | None = None) -> "LatentShards":
    """Encode every clip of `dataset` (a VideoFolder: items dict(frames, name, caption), with
    `entries`, `spec` and `settings`) into `cache_dir`, or reuse the cache there if its key matches.
    `encode`: (T, 3, H, W) in [-1, 1] -> (T, C, h, w) latents, or a dict of per-clip tensors with
    "latents" among them; `encode_text`: captions -> (N, L, D), missing captions given as "".
    `progress(done, total)` (in clips) is called after each shard. `built_by`: (who, key) of the
    process that built the cache (training's rank 0) for one that only reads it: its key, not one of
    this process's own copy of the files (another node's copy states other times), and no cache there
    is refused, not encoded again (every rank of a node at once, into a folder that was not shared)."""
    if shard_size < 1:
        raise TrainingError(f"expected shard_size >= 1, found {shard_size}.")
    cache_dir = Path(cache_dir)
    key = built_by[1] if built_by else cache_key(dataset.entries, dataset.spec, encoder_id,
                                                 captions=encode_text is not None, **getattr(dataset, "settings", {}))
    count = len(dataset)
    names = [e.name for e in dataset.entries]
    index = _read_index(cache_dir)
    if index and index.get("key") == key:
        if index["names"] == names and index.get("shapes") == _encoded_shapes(dataset, encode, encode_text) and all(
                _finished_shard(cache_dir / n, key, names[s * index["shard_size"]:(s + 1) * index["shard_size"]],
                                index["shapes"]) is not None for s, n in enumerate(index["shards"])):
            return LatentShards(cache_dir)
    if built_by:
        raise TrainingError(f"'{cache_dir}' holds no latent cache of this rank's clips as {built_by[0]} built it: "
                            "the cache folder (data.cache) must be one folder every rank sees alike (a shared "
                            "filesystem), where one rank encodes the clips once for all, and every rank's data folder "
                            "must hold the same clips.")
    if index and index.get("key") == key:
        for old in cache_dir.glob("shard_*.safetensors"):   # a finished cache changed since: none of it is kept
            old.unlink()
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / INDEX_FILE).unlink(missing_ok=True)  # from here on, nothing in the folder is trusted
    shards, shapes = [], {}
    for s, first in enumerate(range(0, count, shard_size)):
        items = range(first, min(first + shard_size, count))
        path = cache_dir / _shard_name(s)
        shards.append(path.name)
        finished = _finished_shard(path, key, names[first:items.stop], shapes or None)
        if finished is not None:
            shapes = finished
        else:
            tensors = _encode_shard(dataset, items, encode, encode_text)
            shapes = _check_shapes(shapes, tensors, names[first])
            meta = {"key": key, "names": json.dumps(names[first:items.stop])}
            save_safetensors(path, tensors, meta)
        if progress is not None:
            progress(items.stop, count)
    for old in cache_dir.glob("shard_*.safetensors"):
        if old.name not in shards:
            old.unlink()
    index = {"version": CACHE_VERSION, "key": key, "encoder": encoder_id, "count": count, "shard_size": shard_size,
             "names": names, "shapes": shapes, "shards": shards}
    write_atomically(cache_dir / INDEX_FILE, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
    return LatentShards(cache_dir)


def _encode_shard(dataset, items: range, encode, encode_text) -> dict[str, Tensor]:
    rows, captions = [], []
    with torch.no_grad():
        for i in items:
            item = dataset[i]
            encoded = encode(item["frames"])
            encoded = encoded if isinstance(encoded, dict) else {"latents": encoded}
            z = encoded["latents"]
            frames = item["frames"].shape[0]
            if z.ndim != 4 or z.shape[0] != frames:
                raise TrainingError(f"encode should map (T, 3, H, W) frames to (T, C, h, w) latents; for "
                                    f"'{item['name']}' it mapped {tuple(item['frames'].shape)} to {tuple(z.shape)}.")
            rows.append({k: v.detach().cpu() for k, v in encoded.items()})
            captions.append(item.get("caption") or "")
        tensors = {k: torch.stack([row[k] for row in rows]).contiguous() for k in rows[0]}
        if encode_text is not None:
            text = encode_text(captions).detach().cpu()
            if text.ndim != 3 or text.shape[0] != len(captions):
                raise TrainingError(f"encode_text should map {len(captions)} captions to (N, L, D), found {tuple(text.shape)}.")
            tensors["text"] = text.contiguous()
    return tensors


def _encoded_shapes(dataset, encode, encode_text) -> dict | None:
    """The per-clip shapes the encoder makes, from the first clip: what a reused cache must hold. The
    index and shards state their own shapes and the key can be read back, so only the encoder can
    say how large a clip's latents are (forged ones could be any size, past the node's bounds)."""
    if len(dataset) == 0:
        return None
    return {k: list(v.shape[1:]) for k, v in _encode_shard(dataset, range(1), encode, encode_text).items()}


def _check_shapes(shapes: dict, tensors: dict[str, Tensor], first_name: str) -> dict:
    found = {k: list(v.shape[1:]) for k, v in tensors.items()}
    if shapes and found != shapes:
        raise TrainingError(f"every clip must encode to the same shape; earlier shards hold {shapes}, the shard "
                            f"starting at '{first_name}' holds {found}. Check the clip spec and the encoder.")
    return found


class LatentShards:
    """The cached items, read lazily: item i is dict(latents (T, C, h, w), text (L, D) or None, name,
    and any further cached tensor such as low_res), read from its shard's memory map (only that item's bytes), so memory stays flat in the dataset's
    size. At most `keep` shards are held open."""

    def __init__(self, cache_dir, keep: int = 2):
        self.cache_dir = Path(cache_dir)
        index = _read_index(self.cache_dir)
        if index is None:
            raise TrainingError(f"no latent cache in '{self.cache_dir}' (no readable {INDEX_FILE}); "
                                "build it with build_latent_cache first.")
        self.index, self.keep = index, max(1, keep)
        self._open: OrderedDict[int, object] = OrderedDict()

    @property
    def key(self) -> str:
        return self.index["key"]

    @property
    def names(self) -> list[str]:
        return self.index["names"]

    def __len__(self) -> int:
        return self.index["count"]

    def _shard(self, s: int):
        if s in self._open:
            self._open.move_to_end(s)
            return self._open[s]
        path = self.cache_dir / self.index["shards"][s]
        if not path.is_file():
            raise TrainingError(f"latent cache '{self.cache_dir}' lists {path.name} but it is missing; "
                                "delete the folder's index.json and build the cache again.")
        # opened when first read, perhaps hours after the cache was built: another run given the same
        # folder (another VAE, seed or clip spec) may have rewritten it since, or anyone who can write
        # the temp folder, with rows of any size
        size = self.index["shard_size"]
        shard = safe_open(str(path), framework="pt")
        if _shard_rows(shard, self.key, self.names[s * size:(s + 1) * size], self.index.get("shapes")) is None:
            raise TrainingError(f"latent cache '{self.cache_dir}': {path.name} no longer holds this run's clips as the "
                                f"index states them (cache key {self.key}); another run has rebuilt the folder. Give "
                                "each run its own data.cache folder.")
        self._open[s] = shard
        while len(self._open) > self.keep:
            self._open.popitem(last=False)
        return self._open[s]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        s, j = divmod(i, self.index["shard_size"])
        shard = self._shard(s)
        row = lambda name: shard.get_slice(name)[j:j + 1][0]
        others = {k: row(k) for k in shard.keys() if k not in ("latents", "text")}
        return {"latents": row("latents"), "text": row("text") if "text" in shard.keys() else None,
                "name": self.names[i], **others}


class CachedClips(SequenceABC):
    """Training items read from a latent cache when asked for, never all at once (no rank holds the
    dataset): item i is the cache's row i in float32, its latents passed through `latent_in` (into
    the model's latent space), its caption embedding as "text" when cached, other cached tensors
    (low_res) as they are, plus the constant entries of `extra` (e.g. an interpolation regime)."""

    def __init__(self, shards: LatentShards, latent_in: Callable[[Tensor], Tensor] = lambda z: z,
                 extra: dict | None = None):
        self.shards, self.latent_in, self.extra = shards, latent_in, dict(extra or {})

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict:
        row = self.shards[i]
        for name, value in row.items():   # a shard replaced after it was checked holds NaN no longer silently
            if isinstance(value, Tensor) and not all_finite(value):
                raise TrainingError(f"latent cache '{self.shards.cache_dir.name}': clip '{row['name']}' holds NaN or "
                                    f"infinity in its cached {name}; delete the cache folder to encode the clips "
                                    "again.")
        item = {"latents": self.latent_in(row["latents"].float())}
        item.update({k: v.float() for k, v in row.items() if k not in ("latents", "name") and v is not None})
        return {**item, **self.extra}

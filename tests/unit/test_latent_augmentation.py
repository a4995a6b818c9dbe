"""Pre-encoded clips: read from the latent cache one at a time (never all held), and cropped and
flipped in latent space per step, the same way for every frame of a clip, from (seed, step) alone."""

from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import ConcatDataset

from videoldm_core.training.batches import StepBatches, clip_seed
from videoldm_core.training.crops import LatentAugmentation, latent_augmentation
from videoldm_core.training.data import ClipSpec
from videoldm_core.training.latent_cache import CachedClips, LatentShards, build_latent_cache
from videoldm_core.training.objective import TrainingError

pytestmark = pytest.mark.usefixtures("one_thread")

T, C, H, W = 3, 2, 6, 8       # a cached clip's latents
WINDOW = (4, 5)               # the training window, in latent pixels


def cached_clip(k: int) -> dict:
    """Latents whose every value tells where it came from: 10000·clip + 1000·channel + 100·frame +
    8·row + column; low_res on the same grid, the negative of channel 0."""
    grid = torch.arange(H * W, dtype=torch.float32).reshape(H, W)
    latents = grid + 100 * torch.arange(T).reshape(T, 1, 1, 1) + 1000 * torch.arange(C).reshape(1, C, 1, 1) + 10000 * k
    return {"latents": latents, "low_res": -latents[:, :1].clone()}


DATA = [cached_clip(k) for k in range(3)]


def window_of(clip: torch.Tensor, k: int) -> tuple[int, int, bool]:
    """(top, left, flipped) of an augmented clip of cached_clip(k), asserting that every frame, channel
    and the low-res frames were cut the same way."""
    first = clip["latents"][0, 0] - 10000 * k
    top, left = divmod(int(first.min()), W)
    flipped = bool(first[0, 0] > first[0, 1])
    cut = cached_clip(k)["latents"][..., top:top + WINDOW[0], left:left + WINDOW[1]]
    cut = cut.flip(-1) if flipped else cut
    assert torch.equal(clip["latents"], cut)
    assert torch.equal(clip["low_res"], -cut[:, :1])
    return top, left, flipped


def test_each_step_gives_a_clip_a_new_window_and_flip_the_same_in_every_frame():
    batches = StepBatches(DATA, 3, seed=0, augment=LatentAugmentation(*WINDOW, flip=True))
    seen = {k: set() for k in range(3)}
    for step in range(12):
        batch = batches(step)
        assert batch["latents"].shape == (3, T, C, *WINDOW) and batch["low_res"].shape == (3, T, 1, *WINDOW)
        for clip, low in zip(batch["latents"], batch["low_res"]):
            k = int(clip[0, 0, 0, 0]) // 10000
            seen[k].add(window_of({"latents": clip, "low_res": low}, k))
    for k, windows in seen.items():
        assert len(windows) >= 5, f"clip {k} got only {windows} in 12 steps"
        assert {flipped for *_, flipped in windows} == {False, True}
        assert {(top, left) for top, left, _ in windows} <= {(t, l) for t in range(3) for l in range(4)}


def test_every_window_position_is_drawn_the_last_one_too():
    """A clip's window starts anywhere in 0..h − height and 0..w − width, both ends included: never
    drawing the last position would never train on the bottom row or right column of the cache."""
    augment = LatentAugmentation(*WINDOW)
    seen = {window_of(augment(cached_clip(0), torch.Generator().manual_seed(s)), 0)[:2] for s in range(300)}
    assert seen == {(top, left) for top in range(H - WINDOW[0] + 1) for left in range(W - WINDOW[1] + 1)}
    whole = LatentAugmentation(H, W)(cached_clip(0), torch.Generator().manual_seed(0))   # no margin: one window
    assert torch.equal(whole["latents"], cached_clip(0)["latents"])


def test_a_steps_crops_come_from_seed_and_step_alone():
    augment = LatentAugmentation(*WINDOW, flip=True)
    walked = StepBatches(DATA, 2, seed=4, augment=augment)
    for step in range(7):
        walked(step)
    resumed = StepBatches(DATA, 2, seed=4, augment=augment)(7)   # a resumed run's first step
    assert torch.equal(walked(7)["latents"], resumed["latents"])
    # a global batch split over two ranks cuts what one process cuts
    halves = [StepBatches(DATA, 1, seed=4, augment=augment)(7, r, 2) for r in range(2)]
    assert torch.equal(torch.cat([h["latents"] for h in halves]), resumed["latents"])
    other = StepBatches(DATA, 2, seed=5, augment=augment)
    assert any(not torch.equal(other(s)["latents"], walked(s)["latents"]) for s in range(4))


def test_augmentation_changes_the_crops_only_not_the_clips_or_their_seeds():
    plain = StepBatches(DATA, 2, seed=1)
    augmented = StepBatches(DATA, 2, seed=1, augment=LatentAugmentation(*WINDOW, flip=True))
    for step in range(4):
        a, b = plain(step), augmented(step)
        assert torch.equal(a["sample_seeds"], b["sample_seeds"])
        assert a["sample_seeds"].tolist() == [clip_seed(1, p) for p in plain.positions(step)]
        for whole, cut in zip(a["latents"], b["latents"]):
            k = int(whole[0, 0, 0, 0]) // 10000
            assert torch.equal(whole, cached_clip(k)["latents"])   # off: the cached clip as it is
            window_of({"latents": cut, "low_res": -cut[:, :1]}, k)


def test_without_a_margin_or_flip_there_is_no_augmentation():
    assert latent_augmentation((320, 512), (320, 512), (40, 64), flip=False) is None
    assert latent_augmentation((320, 512), (320, 512), (40, 64), flip=True) == LatentAugmentation(40, 64, flip=True)
    assert latent_augmentation((384, 576), (320, 512), (48, 72), flip=False) == LatentAugmentation(40, 64)
    assert latent_augmentation((96, 96), (64, 64), (24, 24), flip=False) == LatentAugmentation(16, 16)   # 4 px each


def test_cache_sizes_off_the_latent_grid_are_refused_with_the_key_named():
    with pytest.raises(TrainingError, match=r"data.cache_width \(500 px\) is smaller than data.width \(512 px\)"):
        latent_augmentation((320, 500), (320, 512), (40, 62), flip=False)
    with pytest.raises(TrainingError, match=r"data.cache_height .* found 4 px; use sizes that are multiples of the "
                                            r"autoencoder's 8 px"):
        latent_augmentation((328, 512), (324, 512), (41, 64), flip=False)
    with pytest.raises(TrainingError, match="smaller than the 8x8 training window"):
        LatentAugmentation(8, 8)(DATA[0], torch.Generator().manual_seed(0))
    with pytest.raises(TrainingError, match="'low_res' is \\(3, 4\\), off its latents' 6x8 grid"):
        LatentAugmentation(*WINDOW)({**DATA[0], "low_res": torch.zeros(T, 3, 3, 4)}, torch.Generator().manual_seed(0))


# -- reading the cache lazily ---------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    name: str
    size: int = 1
    mtime_ns: int = 0
    caption: str | None = None


class FrameSource:
    """Stand-in for a VideoFolder: clip i is frames filled with i."""

    spec = ClipSpec(frames=2, fps=None, height=16, width=16)

    def __init__(self, count: int):
        self.entries = [Entry(f"clip_{i}", caption=f"caption {i}") for i in range(count)]

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        return {"frames": torch.full((2, 3, 16, 16), float(i)), "name": self.entries[i].name,
                "caption": self.entries[i].caption}


def encode(frames):
    """Latents (T, 4, 2, 2) and low-res frames on their grid, both telling which clip they are."""
    return {"latents": frames[:, :1, :2, :2].expand(-1, 4, -1, -1) + 0.5, "low_res": frames[:, :, :2, :2] - 0.5}


class CountingShards(LatentShards):
    reads = 0

    def __getitem__(self, i):
        CountingShards.reads += 1
        return super().__getitem__(i)


@pytest.fixture
def cache(tmp_path):
    encode_text = lambda captions: torch.stack([torch.full((3, 5), float(c.split()[-1])) for c in captions])
    build_latent_cache(FrameSource(5), encode, tmp_path, "stub", shard_size=2, encode_text=encode_text)
    CountingShards.reads = 0
    return tmp_path


def test_cached_clips_read_each_clip_when_asked_and_hold_none(cache):
    shards = CountingShards(cache, keep=1)
    clips = CachedClips(shards, latent_in=lambda z: 2 * z, extra={"regime": torch.tensor(1)})
    assert len(clips) == 5 and CountingShards.reads == 0 and len(shards._open) == 0
    item = clips[3]
    assert CountingShards.reads == 1 and list(shards._open) == [1]   # one clip read, from its shard's memory map
    assert sorted(item) == ["latents", "low_res", "regime", "text"]
    assert torch.equal(item["latents"], 2 * (torch.full((2, 4, 2, 2), 3.0) + 0.5))   # into the model's latent space
    assert torch.equal(item["low_res"], torch.full((2, 3, 2, 2), 2.5)) and torch.equal(item["text"], torch.full((3, 5), 3.0))
    assert item["regime"] == 1 and item["latents"].dtype == torch.float32
    with pytest.raises(IndexError):
        clips[5]


def test_a_step_reads_only_its_own_clips(cache):
    both = ConcatDataset([CachedClips(CountingShards(cache), extra={"regime": torch.tensor(r)}) for r in (0, 1)])
    batches = StepBatches(both, 2, seed=0, augment=LatentAugmentation(1, 1, flip=True))
    assert len(both) == 10 and CountingShards.reads == 0
    for step in range(3):
        batch = batches(step)
        assert CountingShards.reads == 2 * (step + 1)
        assert batch["latents"].shape == (2, 2, 4, 1, 1) and batch["low_res"].shape == (2, 2, 3, 1, 1)
        clip = batch["latents"][:, 0, 0, 0, 0] - 0.5   # which clip; low_res cut from the same one
        assert torch.equal(batch["low_res"][:, 0, 0, 0, 0] + 0.5, clip)
    assert both[7]["regime"] == 1 and both[7]["latents"][0, 0, 0, 0] == 2.5

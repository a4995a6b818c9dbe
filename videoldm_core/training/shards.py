"""Training clips streamed from WebDataset shards, the layout the field feeds video models with
(`video2dataset` writes it, sgm reads it): tar files whose members sharing a key form one sample,
a video (`mp4`, `webm`, ...) with an optional caption (`txt`, or `json` with a "caption").

The shards are read with the webdataset library: each pass shuffles the shard order (the same
order on every rank), splits it by node (rank) and by DataLoader worker, reads samples through a
shuffle buffer, and passes repeat, so a run counts steps, not epochs. A clip is sampled as from a
folder (videoldm_core.training.data: T frames at the spec's fps from a seeded start, resized to
cover H x W and cropped); a sample that cannot be decoded, has no video or is too short is
skipped and counted, never fatal. `pipe:` URLs run shell commands: only the operator's own
training config may use them (`allow_pipe`), never a node or an API prompt.

`write_shards` turns a folder of clips (+ captions) into such shards, so users with their own
footage train on the same path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from dataclasses import asdict
from pathlib import Path

from torch.utils.data import IterableDataset

from .data import VIDEO_EXTENSIONS, ClipSpec, Entry, clip_memory_problem, discover, fit, frame_indices, probe, read_frames
from .objective import TrainingError

VIDEO_KEYS = tuple(e.lstrip(".") for e in VIDEO_EXTENSIONS)
MAX_MEMBER_BYTES = 1 << 30   # no training clip is larger; a .tar.gz can declare gigabytes in a few bytes
# files of one sample (a video, its caption, a json...): a shard laid out one frame per member would
# otherwise gather thousands into one sample, all held at once
MAX_SAMPLE_MEMBERS = 16
# how a stream's passes are dealt, stated in checkpoints: 2 = every reader as many shards per pass
# (checkpoints of version 1 state no identity; they resume where the dealing did not change)
STREAM_VERSION = 2

log = logging.getLogger(__name__)


WINDOWS = os.name == "nt"
DRIVE_PATH = re.compile(r"[A-Za-z]:[\\/]")


def shard_urls(given: str | list[str], allow_pipe: bool = False) -> list[str]:
    """Local paths or URLs, brace-expanded (`shards/clips-{000000..000099}.tar`). On Windows a
    backslash is the path's separator, not an escape, and a path from a drive (`C:\\shards\\...`)
    becomes a file: URL (webdataset read its drive letter as a URL scheme)."""
    from braceexpand import braceexpand

    patterns = [given] if isinstance(given, str) else list(given)
    urls = [url for pattern in patterns for url in braceexpand(pattern, escape=not WINDOWS)]
    if WINDOWS:
        import nturl2path   # what urllib's pathname2url is on Windows

        urls = ["file:" + nturl2path.pathname2url(url.replace("/", "\\")) if DRIVE_PATH.match(url) else url for url in urls]
    if not urls:
        raise TrainingError("data.shards names no shard; expected paths or URLs such as 'shards/clips-{000000..000009}.tar'.")
    piped = [url for url in urls if url.startswith("pipe:")]
    if piped and not allow_pipe:
        raise TrainingError(f"shard URL {piped[0]!r} runs a shell command ('pipe:'); only train.py's own config may "
                            "use pipe: URLs, not a node or an API prompt.")
    return urls


def caption_of(sample: dict) -> str | None:
    if "txt" in sample:
        return sample["txt"].decode("utf-8").strip()
    if "json" in sample:
        caption = json.loads(sample["json"]).get("caption")
        return caption if isinstance(caption, str) else None
    return None


class ShardClips(IterableDataset):
    """Clips of `spec` from the shards at `urls`, forever (or for `passes` passes). Each item:
    {"frames": (T, 3, H, W) in [-1, 1], "caption": str | None, "key": the sample's key,
    "skipped": samples this worker has skipped so far}. `shuffle`: the sample buffer (0: none).
    Augmentation keeps a clip consistent and changes from pass to pass: the start frame (spec.start
    "random"), the crop window (spec.crop "random") and, with `flip`, a horizontal flip are drawn
    once per clip, for all its frames, from (seed, rank, worker, pass, sample), so
    a stream resumed at a position (`start`) goes on exactly as it would have. Each item also holds
    its "position" (worker, pass, sample index in that pass)."""

    def __init__(self, urls: list[str], spec: ClipSpec, seed: int = 0, shuffle: int = 256, source_fps: float = 30.0,
                 passes: int | None = None, flip: bool = False, max_member_bytes: int = MAX_MEMBER_BYTES):
        self.urls, self.spec, self.seed, self.shuffle = list(urls), spec, seed, shuffle
        self.max_member_bytes = max_member_bytes
        self.source_fps, self.passes, self.flip = source_fps, passes, flip
        self.skipped, self.last_skipped, self.pass_urls = 0, None, []
        self.start: dict[int, tuple[int, int]] = {}   # worker -> (pass, first sample to read): where a resumed run goes on

    @property
    def identity(self) -> dict:
        """What decides which clip sits at a stream position: how passes are dealt (STREAM_VERSION), the
        shards in order (hashed), the seed, the shuffle buffer, the clip spec, the flip and the source
        rate. A checkpoint's position means nothing in a stream that differs in any of them."""
        shards = hashlib.sha256(json.dumps(self.urls).encode()).hexdigest()[:16]
        return {"version": STREAM_VERSION, "shards": shards, "seed": self.seed, "shuffle": self.shuffle,
                "spec": asdict(self.spec), "flip": self.flip, "source_fps": self.source_fps}

    def skip(self, what: str, reason) -> None:
        self.skipped += 1
        self.last_skipped = f"{what}: {reason}"
        log.warning("skipped %s: %s", what, reason)

    def skip_shard_error(self, error: Exception) -> bool:
        """webdataset's handler for a shard it cannot read on: count, go on with the next."""
        self.skip("a shard's remaining samples", error)
        return True

    def samples(self, pass_index: int):
        """This rank's and worker's raw samples of one pass, through the shuffle buffer (seeded)."""
        import webdataset as wds

        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if len(self.urls) < world * workers:
            raise TrainingError(f"{len(self.urls)} shard(s) for {world} rank(s) x {workers} data worker(s): every "
                                "reader needs at least one shard; write more, smaller shards or use fewer workers.")
        order = list(self.urls)
        random.Random(f"{self.seed}-shards-{pass_index}").shuffle(order)   # the same order on every rank
        # every reader deals the same number of shards per pass, so none runs ahead into the next pass
        # while others still read this one (which read some clips twice and others not at all in an
        # epoch's steps); the rest of the shuffled order sits this pass out, other shards each pass
        left_out = len(order) % (world * workers)
        if left_out and pass_index == 0 and rank == 0 and worker == 0:
            log.warning("data.shards: %d shard(s) for %d reader(s) (ranks x data workers): each pass leaves %d "
                        "shard(s) out, other ones each pass, so that every reader reads as many; a multiple of %d "
                        "shards reads them all.", len(order), world * workers, left_out, world * workers)
        order = order[:len(order) - left_out]
        shards = list(wds.split_by_worker(wds.split_by_node({"url": url} for url in order)))
        self.pass_urls = [shard["url"] for shard in shards]   # this reader's shards in this pass
        opened = wds.tariterators.url_opener(iter(shards), handler=self.skip_shard_error)
        samples = wds.tariterators.group_by_keys(self.members(opened), handler=self.skip_shard_error)
        if self.shuffle > 1:
            rng = random.Random(f"{self.seed}-buffer-{rank}-{worker}-{pass_index}")
            samples = wds.shuffle(self.shuffle, initial=min(self.shuffle, 64), rng=rng)(samples)
        return samples

    def members(self, opened):
        """The regular files of each opened shard, as webdataset's tar_file_expander gives them,
        except that a member whose header declares more than `max_member_bytes` is skipped unread
        (counted), where webdataset would read it whole, and so is a sample's member past its
        MAX_SAMPLE_MEMBERS-th or past `max_member_bytes` in all (the sample is counted once)."""
        import tarfile

        from webdataset.tariterators import base_plus_ext

        for source in opened:
            url = source["url"]
            try:
                stream = tarfile.open(fileobj=source["stream"], mode="r|*")
                key, members, size, cut = None, 0, 0, False
                for info in stream:
                    stream.members = []   # a stream of millions: keep no list of what was read, skipped or not
                    if not info.isreg() or info.name.startswith("__"):
                        continue
                    if info.size > self.max_member_bytes:
                        self.skip(f"member {info.name!r} of {url}", f"it declares {info.size} bytes, more than "
                                                                   f"the {self.max_member_bytes} a clip may have")
                        continue
                    name_key = base_plus_ext(info.name)[0]
                    same = name_key == key
                    key, members, size = name_key, (members + 1 if same else 1), (size if same else 0) + info.size
                    cut = cut and same
                    if members > MAX_SAMPLE_MEMBERS or size > self.max_member_bytes:
                        if not cut:   # counted once per sample
                            cut = True
                            self.skip(f"sample {key!r} of {url}", f"its files number more than {MAX_SAMPLE_MEMBERS} or "
                                      f"hold more than {self.max_member_bytes} bytes; the rest are not read (a clip is "
                                      "one video file and its caption)")
                        continue
                    yield {"fname": info.name, "data": stream.extractfile(info).read(), "__url__": url}
            except Exception as e:
                if not self.skip_shard_error(e):
                    break

    def clip(self, sample: dict, rng: random.Random) -> dict | None:
        key = sample.get("__key__", "?")
        video = next((sample[k] for k in VIDEO_KEYS if k in sample), None)
        if video is None:
            self.skip(f"sample {key!r}", f"no video member (expected one of {', '.join(VIDEO_KEYS)})")
            return None
        try:
            entry = Entry(key, video, "video", len(video), 0, caption_of(sample))
            source = probe(entry, self.source_fps)
            indices = frame_indices(self.spec, source, rng)
            if indices is None:
                self.skip(f"sample {key!r}", f"too short: {source.num_frames} frames at {source.fps:g} fps")
                return None
            if (problem := clip_memory_problem(self.spec, source)) is not None:
                self.skip(f"sample {key!r}", problem)
                return None
            frames = fit(read_frames(entry, indices, source), self.spec.height, self.spec.width, self.spec.crop, rng)
            if self.flip and rng.random() < 0.5:
                frames = frames.flip(-1)
        except Exception as e:   # a broken clip in a stream of millions: counted, not fatal
            self.skip(f"sample {key!r}", e)
            return None
        return {"frames": frames, "caption": entry.caption, "key": key, "skipped": self.skipped}

    def __iter__(self):
        import webdataset as wds

        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        pass_index, first = self.start.get(worker, (0, 0))
        fruitless, skipped = set(), self.skipped   # shards this reader read since its last clip, in whole passes
        while self.passes is None or pass_index < self.passes:
            clips = 0
            for index, sample in enumerate(self.samples(pass_index)):
                if index < first:
                    continue   # read before the resume point: passed over undecoded
                item = self.clip(sample, random.Random(f"{self.seed}-clip-{rank}-{worker}-{pass_index}-{index}"))
                if item is not None:
                    clips += 1
                    fruitless, skipped = set(), self.skipped
                    yield {**item, "position": (worker, pass_index, index)}
            if clips == 0 and first == 0:
                fruitless.update(self.pass_urls)
                # every shard read without a clip (each pass deals this reader other shards): every later
                # pass would read the same nothing, forever; one bad shard among good ones is skipped
                if fruitless >= set(self.urls):
                    raise TrainingError(
                        f"data.shards: every one of the {len(self.urls)} shard(s) was read by this reader (rank {rank}, "
                        f"worker {worker}) without a clip it could use; {self.skipped - skipped} sample(s) or shard(s) "
                        f"skipped, the last: {self.last_skipped or 'none (the shards hold no samples)'}. Check the "
                        f"shard paths and that the clips hold {self.spec.frames} frames at the fps asked for.")
            pass_index, first = pass_index + 1, 0


def write_shards(folder, pattern: str, clips_per_shard: int = 100) -> dict:
    """The videos of `folder` (with their captions: captions.json or sidecar .txt files) as shards
    `pattern % i` (e.g. 'shards/clips-%06d.tar'), `clips_per_shard` samples each: key = the clip's
    number, the video under its extension, `txt` = its caption, `json` = {"name", "caption"}.
    Folders of images are left out (listed in the result)."""
    import webdataset as wds

    if clips_per_shard < 1:
        raise TrainingError(f"expected at least 1 clip per shard, found {clips_per_shard}.")
    entries = discover(folder)
    Path(pattern % 0).parent.mkdir(parents=True, exist_ok=True)
    written, left_out = 0, []
    # the files are opened here, not by webdataset, which reads a Windows drive letter as a URL scheme
    opened = {}
    compress = next((kind for kind in ("gz", "bz2", "xz") if pattern.endswith(kind)), False)
    try:
        with wds.ShardWriter(pattern, maxcount=clips_per_shard, verbose=0, compress=compress,
                             opener=lambda name: opened.setdefault(name, open(name, "wb")),
                             post=lambda name: opened.pop(name).close()) as sink:
            for entry in entries:
                if entry.kind != "video":
                    left_out.append(entry.name)
                    continue
                sample = {"__key__": f"{written:09d}", entry.path.suffix.lower().lstrip("."): entry.path.read_bytes(),
                          "json": json.dumps({"name": entry.name, "caption": entry.caption}).encode()}
                if entry.caption is not None:
                    sample["txt"] = entry.caption.encode("utf-8")
                sink.write(sample)
                written += 1
            shards = sink.shard
    finally:
        for handle in opened.values():   # a shard whose writing failed: its file is closed all the same
            handle.close()
    return {"clips": written, "shards": shards, "left_out": left_out}

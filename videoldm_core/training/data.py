"""Training clips from a folder: videos (decoded with PyAV) and subfolders of images.

Every entry is probed when the dataset is built (can it be opened, how many frames, at what
rate), so an unreadable or too-short clip is reported before training starts, not at step 5000.
A clip is T frames sampled by timestamp at a target fps (frame k at t0 + k / fps, nearest source
frame), resized so its shorter side covers (H, W), cropped, and scaled to [-1, 1].
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..confined_paths import within
from ..limits import LIMIT_VARIABLE, describe_bytes, output_limit_bytes, tensor_bytes
from .objective import TrainingError

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CAPTIONS_FILE = "captions.json"
MAX_FRAME_PIXELS = 8192 * 8192   # a larger source frame is not training data (8K UHD is 7680 x 4320)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    """What one training clip is: `frames` frames at `fps` (None: the source's own rate), H x W.
    `crop` places the spatial window, `start` the first frame ("first" or seeded "random")."""

    frames: int
    fps: float | None
    height: int
    width: int
    crop: str = "center"
    start: str = "first"

    def __post_init__(self):
        if self.frames < 1 or self.height < 1 or self.width < 1 or (
                self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0)):
            raise TrainingError(f"expected a clip of frames >= 1 at fps > 0 (or None) and size >= 1, found "
                                f"frames={self.frames}, fps={self.fps}, {self.height}x{self.width}.")
        if self.crop not in ("center", "random") or self.start not in ("first", "random"):
            raise TrainingError(f"expected crop 'center' or 'random' and start 'first' or 'random', "
                                f"found crop={self.crop!r}, start={self.start!r}.")


@dataclass(frozen=True)
class Entry:
    """One clip on disk: a video file, or a folder of images (`images`, sorted by name)."""

    name: str
    path: Path
    kind: str  # "video" | "frames"
    size: int  # bytes (summed over a folder's images)
    mtime_ns: int  # newest modification
    caption: str | None = None
    images: tuple[Path, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Probe:
    num_frames: int
    fps: float
    height: int = 0   # a frame's size as the file states it before anything is decoded (0: not stated)
    width: int = 0

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


def _expected() -> str:
    return f"videos ({' '.join(VIDEO_EXTENSIONS)}) or subfolders of images ({' '.join(IMAGE_EXTENSIONS)})"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _captions(folder: Path, shown: str, allowed) -> dict[str, str]:
    path = folder / CAPTIONS_FILE
    if not path.exists() or not allowed(path):
        return {}
    shown = f"{shown}/{CAPTIONS_FILE}"
    try:
        captions = json.loads(path.read_text(encoding="utf-8-sig"))   # -sig: Notepad's byte-order mark
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = getattr(e, "strerror", None) or (e if not isinstance(e, RecursionError) else "nested too deeply")
        raise TrainingError(f"'{shown}' could not be read as JSON ({reason}); expected {{\"clip name\": \"caption\"}}. "
                            "Fix or remove the file.") from None
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise TrainingError(f"'{shown}' should map clip names to caption strings, found {type(captions).__name__} "
                            "with other values. Fix or remove the file.")
    return captions


def _caption_for(path: Path, captions: dict[str, str], allowed) -> str | None:
    """captions.json by full name or stem, else a sidecar 'a.txt' next to 'a.mp4' (or folder 'a')."""
    stem = path.stem if path.is_file() else path.name
    if path.name in captions or stem in captions:
        return captions.get(path.name, captions.get(stem))
    sidecar = path.with_name(stem + ".txt")
    if not (sidecar.is_file() and allowed(sidecar)):
        return None
    try:
        return sidecar.read_text(encoding="utf-8-sig").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        raise TrainingError(f"caption file '{sidecar.name}' could not be read as UTF-8 text ({reason}). Fix or "
                            "remove it.") from None


def failure_reason(e: Exception, entry: Entry) -> str:
    """What a library said about a clip it could not read, without the server's path: an OSError's
    own text, else its message with the clip's path given as the clip's name (PIL's and PyAV's
    messages repeat the absolute path)."""
    return getattr(e, "strerror", None) or str(e).replace(str(entry.path), entry.name)


def discover(folder, roots=None, label: str | None = None) -> list[Entry]:
    """The clips in `folder`, sorted by name; cheap (no file is opened but captions). With `roots`,
    anything whose real path leaves them (a symlink out) is ignored, unopened; `label` is how
    messages name the folder (default: its path)."""
    folder = Path(folder)
    shown = str(folder) if label is None else label
    allowed = (lambda p: True) if roots is None else (lambda p: within(p, roots))
    if not folder.is_dir() or not allowed(folder):
        missing = "is not a folder it can read" if roots is not None else \
            "is not a folder" if folder.exists() else "does not exist"   # confined: nothing said of what exists
        raise TrainingError(f"training folder '{shown}' {missing}; expected a folder of {_expected()}.")
    captions = _captions(folder, shown, allowed)
    entries, ignored = [], []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):   # by name: Windows paths sort ignoring case
        if path.name.startswith("."):
            continue
        if not allowed(path):
            ignored.append(path.name)
        elif path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            stat = path.stat()
            entries.append(Entry(path.name, path, "video", stat.st_size, stat.st_mtime_ns,
                                 _caption_for(path, captions, allowed)))
        elif path.is_dir() and (images := tuple(sorted((p for p in path.iterdir() if _is_image(p) and allowed(p)),
                                                       key=lambda p: p.name))):
            stats = [p.stat() for p in images]
            entries.append(Entry(path.name, path, "frames", sum(s.st_size for s in stats),
                                 max(s.st_mtime_ns for s in stats), _caption_for(path, captions, allowed), images))
        elif path.name != CAPTIONS_FILE and path.suffix.lower() != ".txt":
            ignored.append(path.name)
    if not entries:
        found = f"found nothing usable (ignored: {', '.join(ignored[:5])}{' ...' if len(ignored) > 5 else ''})" \
            if ignored else "found it empty"
        raise TrainingError(f"training folder '{shown}' has no clips: expected {_expected()}, {found}. "
                            "Add clips or point to the right folder.")
    return entries


def _open_video(path: Path | bytes):
    """A video file, or a video's bytes (a sample streamed from a shard)."""
    import io

    import av

    container = av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path))
    if not container.streams.video:
        container.close()
        raise TrainingError("it has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def probe(entry: Entry, source_fps: float) -> Probe:
    """Frame count and rate; decodes one frame (or reads every image header) to prove it is readable.
    Frame folders and videos that state no rate use `source_fps`."""
    if entry.kind == "frames":
        from PIL import Image

        sizes = set()
        for path in entry.images:
            with Image.open(path) as image:  # reads the header; raises on a file that is not an image
                _check_frame_pixels(*image.size, f"'{path.name}' is")
                sizes.add(image.size)
        if len(sizes) > 1:   # refused before anything is encoded, not when the clip is first read
            raise TrainingError(f"its images differ in size ({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); "
                                "expected one size per clip")
        (width, height), = sizes
        return Probe(len(entry.images), float(source_fps), height, width)
    container, stream = _open_video(entry.path)
    with container:
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else float(source_fps)
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_frame_pixels(width, height, "its frames are")   # before the first frame is decoded
        first = next(container.decode(stream), None)   # a file that opens but cannot be decoded fails here
        if first is None:
            raise TrainingError("it holds no frames")
        if not (width and height):   # a stream that states no size: the first frame's
            width, height = first.width, first.height
            _check_frame_pixels(width, height, "its frames are")
        num_frames = stream.frames
        if num_frames <= 0:  # webm, mkv and gif often state no count: count packets, no decoding
            container.seek(0)
            num_frames = sum(1 for p in container.demux(stream) if p.size > 0)
    if num_frames <= 0:
        raise TrainingError("it holds no frames")
    return Probe(num_frames, fps, height, width)


def clip_memory_problem(spec: ClipSpec, source: Probe) -> str | None:
    """Why reading one clip of `spec` from `source` would cost more than the pack's memory limit
    (its frames decoded at the source's size, as 8-bit and as float32, and the resized clip), or
    None. Known from the probe, before any frame of the clip is decoded."""
    decoded = spec.frames * source.height * source.width * 3 * (1 + 4)
    resized = 2 * tensor_bytes((spec.frames, 3, *resized_size(source.height, source.width, spec.height, spec.width)))
    need, limit = decoded + resized, output_limit_bytes()
    if need <= limit:
        return None
    return (f"reading a clip of {spec.frames} frames of {source.width}x{source.height} (cropped to "
            f"{spec.width}x{spec.height}) needs {describe_bytes(need)}, above the Video LDM pack's limit of "
            f"{describe_bytes(limit)} ({LIMIT_VARIABLE})")


def _fmt(x: float) -> str:
    return f"{x:g}"


def frame_indices(spec: ClipSpec, source: Probe, rng: random.Random | None = None) -> list[int] | None:
    """The source frames of one clip: frame k is the source frame nearest t0 + k / fps, every start
    whose last frame the source holds drawn alike. None when the source is shorter than that. (A
    source slower than `fps` repeats frames: VideoFolder warns of it.)"""
    offsets = _clip_offsets(spec, source)
    last_start = source.num_frames - 1 - offsets[-1]
    if last_start < 0:
        return None
    start = rng.randint(0, last_start) if (spec.start == "random" and rng is not None) else 0
    return [start + offset for offset in offsets]


def _clip_offsets(spec: ClipSpec, source: Probe) -> list[int]:
    step = source.fps / (spec.fps or source.fps)
    return [math.floor(k * step + 0.5) for k in range(spec.frames)]


def _too_short(spec: ClipSpec, entry: Entry, source: Probe) -> str:
    fps = source.fps if spec.fps is None else spec.fps
    return (f"too short: {spec.frames} frames at {_fmt(fps)} fps need {_clip_offsets(spec, source)[-1] + 1} of its "
            f"frames at {_fmt(source.fps)} fps, '{entry.name}' has {source.num_frames} ({source.seconds:.2f} s)")


def read_frames(entry: Entry, indices: list[int], source: Probe) -> Tensor:
    """The frames at `indices` (may repeat) as (T, H, W, 3) uint8."""
    if entry.kind == "frames":
        from PIL import Image

        loaded = {}
        for i in sorted(set(indices)):
            with Image.open(entry.images[i]) as image:
                _check_frame_size(entry, image.size, source)
                loaded[i] = np.asarray(image.convert("RGB"))
        sizes = {a.shape for a in loaded.values()}
        if len(sizes) > 1:
            raise TrainingError(f"the images of '{entry.name}' differ in size ({sorted(sizes)}); expected one size per clip.")
        return torch.from_numpy(np.stack([loaded[i] for i in indices]))
    return torch.from_numpy(np.stack(_decode(entry, indices, source)))


def _decode(entry: Entry, indices: list[int], source: Probe) -> list[np.ndarray]:
    """Decode from the keyframe before the first wanted frame; a frame's index comes from its
    timestamp. A wanted index that the timestamps skip gets the next frame; past the end, the last."""
    wanted = sorted(set(indices))
    got: dict[int, np.ndarray] = {}
    container, stream = _open_video(entry.path)
    with container:
        base = stream.start_time or 0
        seconds = wanted[0] / source.fps
        if seconds > 1.0 and stream.time_base:
            container.seek(base + int(seconds / stream.time_base), stream=stream, backward=True)
        last, pending, counter = None, 0, 0
        for frame in container.decode(stream):
            index = counter if frame.pts is None else round((frame.pts - base) * stream.time_base * source.fps)
            counter += 1
            if index < wanted[pending]:
                continue
            _check_frame_size(entry, (frame.width, frame.height), source)
            last = frame.to_ndarray(format="rgb24")
            while pending < len(wanted) and wanted[pending] <= index:
                got[wanted[pending]] = last
                pending += 1
            if pending == len(wanted):
                break
    if last is None:
        raise TrainingError(f"'{entry.name}' decoded no frames at or after frame {wanted[0]}; the file may be truncated.")
    return [got.get(i, last) for i in indices]


def _check_frame_pixels(width: int, height: int, what: str):
    if width * height > MAX_FRAME_PIXELS:
        raise TrainingError(f"{what} {width}x{height}, more than the {MAX_FRAME_PIXELS} pixels a training frame may "
                            "have")


def _check_frame_size(entry: Entry, size: tuple[int, int], source: Probe):
    """A frame larger than the probe said (a stream that changes size, an image replaced since) is
    refused before it is converted: the memory check was made for the probe's size."""
    width, height = size
    if source.width and width * height > source.width * source.height:
        raise TrainingError(f"'{entry.name}' has a frame of {width}x{height}, larger than the {source.width}x"
                            f"{source.height} it stated when it was probed; re-encode it at one size.")


def resized_size(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """The size `fit` resizes an h x w frame to: the smallest that covers height x width, aspect kept."""
    if (h, w) == (height, width):
        return h, w
    scale = max(height / h, width / w)
    return max(height, round(h * scale)), max(width, round(w * scale))


def fit(video: Tensor, height: int, width: int, crop: str, rng: random.Random | None = None) -> Tensor:
    """(T, h, w, 3) uint8 -> (T, 3, height, width) float32 in [-1, 1]: resize so the frame covers
    (height, width), keeping its aspect, then crop the centre or a seeded random window."""
    # in place on a copy of its own: the 8-bit clip and one float clip (not the caller's tensor, whatever its type)
    x = video.permute(0, 3, 1, 2).to(torch.float32, copy=True).div_(127.5).sub_(1)
    h, w = x.shape[-2:]
    if (h, w) != (height, width):
        size = resized_size(h, w, height, width)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
    h, w = x.shape[-2:]
    if crop == "random" and rng is not None:
        top, left = rng.randint(0, h - height), rng.randint(0, w - width)
    else:
        top, left = (h - height) // 2, (w - width) // 2
    return x[:, :, top:top + height, left:left + width].contiguous()


class VideoFolder:
    """Clips of `spec` from `folder`. Built up front: every entry is probed, and unreadable or too
    short ones either stop with one error naming all of them (on_bad="stop") or are left out with
    a warning (on_bad="skip"). Item i is seeded by (seed, i): the same crop every time."""

    def __init__(self, folder, spec: ClipSpec, on_bad: str = "stop", seed: int = 0, source_fps: float = 30.0,
                 roots=None, label: str | None = None):
        if on_bad not in ("stop", "skip"):
            raise TrainingError(f"expected on_bad 'stop' or 'skip', found {on_bad!r}.")
        self.folder, self.spec, self.seed, self.source_fps = Path(folder), spec, seed, float(source_fps)
        shown = str(self.folder) if label is None else label
        found = discover(self.folder, roots, label)
        self.entries: list[Entry] = []
        self.probes: list[Probe] = []
        bad = []
        for entry in found:
            try:
                source = probe(entry, self.source_fps)
            except Exception as e:
                bad.append(f"'{entry.name}': unreadable ({type(e).__name__}: {failure_reason(e, entry)})")
                continue
            if frame_indices(spec, source) is None:
                bad.append(f"'{entry.name}': {_too_short(spec, entry, source)}")
                continue
            if (problem := clip_memory_problem(spec, source)) is not None:
                bad.append(f"'{entry.name}': {problem}")
                continue
            self.entries.append(entry)
            self.probes.append(source)
        if bad and (on_bad == "stop" or not self.entries):
            listing = "\n  ".join(bad)
            advice = "Fix or remove them, or pass on_bad='skip' to train on the rest." if self.entries else \
                "No clip is usable: fix or replace them, or ask for fewer frames or a lower fps if they are too short."
            raise TrainingError(f"{len(bad)} of {len(found)} clips in '{shown}' cannot be used:\n  {listing}\n{advice}")
        if bad:
            log.warning("skipping %d of %d clips in '%s':\n  %s", len(bad), len(found), self.folder, "\n  ".join(bad))
        slower = [(e, p) for e, p in zip(self.entries, self.probes) if len(set(_clip_offsets(spec, p))) < spec.frames]
        if slower:
            entry, source = slower[0]
            assumed = " (frame folders are taken at the source_fps given)" if entry.kind == "frames" else ""
            log.warning("%d of %d clips in '%s' run slower than the %s fps read from them, so their clips repeat "
                        "frames (a stutter the model learns), e.g. '%s' at %s fps%s. Read them at their own rate or "
                        "lower.", len(slower), len(self.entries), self.folder, _fmt(spec.fps), entry.name,
                        _fmt(source.fps), assumed)

    @property
    def settings(self) -> dict:
        """What besides the files and the spec decides the clips (for a cache key)."""
        return {"seed": self.seed, "source_fps": self.source_fps}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} of {len(self)}")
        entry, source = self.entries[i], self.probes[i]
        rng = random.Random(f"{self.seed}:{i}")
        indices = frame_indices(self.spec, source, rng)
        try:
            video = read_frames(entry, indices, source)
        except TrainingError:
            raise
        except Exception as e:
            raise TrainingError(f"'{entry.name}' failed to decode ({type(e).__name__}: {failure_reason(e, entry)}) "
                                "although it probed fine; "
                                "the file may be damaged. Re-encode or remove it.") from e
        frames = fit(video, self.spec.height, self.spec.width, self.spec.crop, rng)
        return {"frames": frames, "name": entry.name, "caption": entry.caption}

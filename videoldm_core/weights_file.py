"""Weight files read in two steps, so that no file costs more memory than it holds.

1. `WeightsFile(path, name, error)` reads what the file says about itself: tensor names, shapes
   and dtypes, and the safetensors metadata (the specs). A safetensors file costs its header; a
   pickle (.ckpt/.pt/.pth/.bin) is read weights-only (code in it is refused), which costs its size
   on disk plus the objects its record builds, measured and capped first (`_check_pickle_record`).
   The loaders check their spec against these shapes, and build the modules the spec describes
   on the meta device (`build_on_meta`) to compare them, before anything is allocated.
2. `WeightsFile.tensors()` reads the tensors and refuses any that hold NaN or infinity; the host
   checks them against the range of the dtype it keeps them in (`check_range`) before it loads them.

Every problem is raised as the loader's own error type (a `WeightsFileError`), naming the file as
it is listed in its models folder, never by its path on the server.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import zipfile
from typing import Callable, NamedTuple, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from .errors import VideoLDMError
from .limits import all_finite, count_non_finite, value_bounds

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
MAX_HEADER_BYTES = 100_000_000   # the safetensors library's own limit
# a pickle's record of its objects (torch's data.pkl: names, shapes, storage references), read before
# torch.load builds them, at up to about 20x its size in memory (a small record can name one tensor
# millions of times). Real checkpoints' records are well under 1 MiB (an SD checkpoint with EMA: ~2,000
# tensors, ~300 KiB), so this bounds the cost without refusing a real file.
MAX_PICKLE_RECORD_BYTES = 8 * 2**20
# a zip's directory becomes one object per entry when it is read (about 550 bytes for some 70 on disk):
# a real checkpoint has one entry per stored tensor (~2,000 for SD with EMA, ~130 KiB)
MAX_ZIP_DIRECTORY_BYTES = 2**20
# the legacy format's record is walked opcode by opcode in Python (1 to 2 s per MiB): a smaller cap,
# as files of that format (torch < 1.6, before 2020) are small and rare
MAX_LEGACY_RECORD_BYTES = 2 * 2**20
# what a meta build may call per tensor the file holds (parameters, their initialisation, and the
# few tables made in __init__), plus a floor for small files: measured need is under 6
META_CALLS_PER_TENSOR, META_CALLS_FLOOR = 50, 20_000


class WeightsFileError(VideoLDMError):
    """A weights file this pack cannot read or will not load: the base of every loader's error."""


class TensorShape(NamedTuple):
    """What the header says about one tensor (its `.shape` reads like a tensor's)."""

    shape: tuple
    dtype: str


class WeightsFile:
    """A weights file by its header: `shapes` (name -> TensorShape), `metadata` (safetensors
    metadata, {} for pickles), `source` ("'name'" for messages); `tensors()` reads the weights."""

    def __init__(self, path: str | os.PathLike, name: str, error: type[WeightsFileError] = WeightsFileError):
        self.path, self.name, self.error = str(path), name, error
        self.source = f"'{name}'"
        self._loaded: Optional[dict] = None
        if self.path.lower().endswith(SAFETENSORS_SUFFIXES):
            self.shapes, self.metadata = self._read_safetensors_header()
        else:
            self._loaded = self._read_pickle()
            self.shapes = {k: TensorShape(tuple(v.shape), str(v.dtype)) for k, v in self._loaded.items()}
            self.metadata = {}

    def refuse(self, problem: str, advice: str = "") -> WeightsFileError:
        """The loader's error about this file: "'name': <problem>. <advice>"."""
        return self.error(f"{self.source}: {problem}." + (f" {advice}" if advice else ""))

    def _read_safetensors_header(self) -> tuple[dict, dict]:
        self._check_header_length()
        try:
            with safe_open(self.path, framework="pt") as f:
                metadata = f.metadata() or {}
                shapes = {}
                for key in f.keys():
                    part = f.get_slice(key)
                    shapes[key] = TensorShape(tuple(part.get_shape()), str(part.get_dtype()))
        except OSError as e:
            raise self.refuse(f"cannot be read ({e.strerror or type(e).__name__})") from None
        except Exception as e:  # the library's SafetensorError and friends: a broken header
            raise self.refuse(f"not a readable weights file (safetensors: {_library_message(e)})",
                              "The file is corrupt or truncated; download or copy it again.") from None
        if not all(isinstance(v, str) for v in metadata.values()):
            raise self.refuse("expected text values in the safetensors metadata, found others")
        return shapes, metadata

    def _check_header_length(self):
        """The header's declared length, checked against the file before the library reads it."""
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise self.refuse(f"cannot be read ({e.strerror or type(e).__name__})") from None
        if len(head) < 8:
            raise self.refuse(f"not a readable weights file (safetensors: {size} bytes, less than its 8-byte header "
                              f"length)",
                              "The file is truncated; download or copy it again.")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise self.refuse(f"not a readable weights file (safetensors: its header declares {length} bytes, the file "
                              f"holds {size - 8} after the length)", "The file is truncated or not safetensors.")

    def _read_pickle(self) -> dict:
        try:
            mmap = zipfile.is_zipfile(self.path)   # torch's zip format maps the tensors from disk
        except OSError as e:
            raise self.refuse(f"cannot be read ({e.strerror or type(e).__name__})") from None
        self._check_pickle_record(mmap)
        try:
            loaded = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:   # torch's weights-only reader met code, an object or damage
            raise self.refuse("refused to load: the pickle holds more than plain weights, or is damaged (only tensors "
                              "are read, never code)", "Convert it to .safetensors from a trusted source.") from None
        except Exception as e:  # EOFError, RuntimeError, KeyError, OSError ... from a damaged archive
            raise self.refuse(f"not a readable weights file ({type(e).__name__})",
                              "The file is corrupt or truncated; download or copy it again.") from None
        if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
            loaded = loaded["state_dict"]   # Lightning and original SD checkpoints
        elif isinstance(loaded, dict) and len(loaded) == 1 and isinstance(next(iter(loaded.values())), dict):
            loaded = next(iter(loaded.values()))   # one wrapping key, as ComfyUI's own reader accepts
        if not isinstance(loaded, dict):
            raise self.refuse(f"expected a dictionary of weights, found {type(loaded).__name__}")
        tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        self._check_pickle_sizes(tensors)
        return tensors

    def _check_pickle_record(self, is_zip: bool):
        """The record torch.load unpickles, measured before it builds anything: in torch's zip format
        the size its data.pkl states; in the legacy format (a few pickles in a row, then the data)
        its opcodes are walked, stopping at the cap."""
        advice = "Refused before loading it; convert it to .safetensors from a trusted source."
        try:
            if is_zip:
                with open(self.path, "rb") as f:
                    end = zipfile._EndRecData(f)   # the end record alone: each entry is an object once read
                directory = end[zipfile._ECD_SIZE] if end else 0
                if directory <= MAX_ZIP_DIRECTORY_BYTES:
                    with zipfile.ZipFile(self.path) as archive:
                        record = max((i.file_size for i in archive.infolist() if i.filename.endswith("data.pkl")),
                                     default=0)
            else:
                directory, record = 0, _legacy_record_bytes(self.path, MAX_LEGACY_RECORD_BYTES)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, struct.error):
            return   # damaged: torch.load says so, in the usual words
        if directory > MAX_ZIP_DIRECTORY_BYTES:
            raise self.refuse(f"its zip directory is {directory} bytes, more than the {MAX_ZIP_DIRECTORY_BYTES} a "
                              "weights file's entries take (each entry becomes an object when it is read)", advice)
        cap = MAX_PICKLE_RECORD_BYTES if is_zip else MAX_LEGACY_RECORD_BYTES
        if record > cap:
            raise self.refuse(f"its pickle record is larger than the {cap} bytes a weights "
                              "file's names and shapes take (a small file can make torch.load build millions of "
                              "objects)", advice)

    def _check_pickle_sizes(self, tensors: dict):
        """A pickle's tensor is a view of a storage: its shape may repeat a few stored bytes many
        times (a stride of 0, overlapping strides), which every later copy or check pays in full.
        Each tensor must fit in the bytes stored for it, and all of them together in twice the file
        (tensors may share a storage, as tied weights do)."""
        declared = 0
        for key, value in tensors.items():
            if value.layout != torch.strided:
                raise self.refuse(f"tensor '{key}' is {str(value.layout).removeprefix('torch.')}; expected dense "
                                  "weights", "Save the weights again as dense tensors.")
            size = value.numel() * value.element_size()
            stored = value.untyped_storage().nbytes() - value.storage_offset() * value.element_size()
            if size > stored:
                raise self.refuse(f"tensor '{key}' of shape {tuple(value.shape)} declares {size} bytes but the file "
                                  f"stores {max(stored, 0)} for it (a view that repeats its data)",
                                  "Refused before reading it; save the weights again from a trusted source.")
            declared += size
        on_disk = os.path.getsize(self.path)
        if declared > 2 * on_disk + (1 << 20):
            raise self.refuse(f"its tensors declare {declared} bytes, more than twice the {on_disk} bytes of the file "
                              f"(views sharing a few stored tensors)",
                              "Refused before reading them; save the weights again from a trusted source.")

    def tensors(self, keys=None) -> dict[str, torch.Tensor]:
        """The tensors (all, or `keys`), each checked to be finite."""
        keys = list(self.shapes) if keys is None else list(keys)
        if self._loaded is not None:
            out = {k: self._loaded[k] for k in keys}
        else:
            try:
                with safe_open(self.path, framework="pt") as f:
                    out = {k: f.get_tensor(k) for k in keys}
            except Exception as e:
                raise self.refuse(f"its tensors cannot be read ({_library_message(e)})",
                                  "The file is corrupt or changed while loading.") from None
        check_finite(out, self.source, self.error)
        return out


LEGACY_PICKLES = 5   # torch's legacy format: magic number, protocol, system info, the object, storage keys


class _PastCap(Exception):
    pass


class _CappedReader:
    """A file that refuses to read past `cap` bytes: an opcode stating a 2**50-byte argument ends the
    walk instead of asking for the memory."""

    def __init__(self, f, cap: int):
        self.f, self.cap = f, cap

    def read(self, n: int = -1) -> bytes:
        if n < 0 or self.f.tell() + n > self.cap:
            raise _PastCap
        return self.f.read(n)

    def readline(self) -> bytes:
        line = self.f.readline(self.cap + 1 - self.f.tell())
        if self.f.tell() > self.cap:
            raise _PastCap
        return line

    def tell(self) -> int:
        return self.f.tell()


def _legacy_record_bytes(path: str, cap: int) -> int:
    """The bytes of the pickles a legacy-format torch file starts with, walked opcode by opcode (no
    object is built; 1 to 2 s per MiB); more than `cap` as soon as they pass it."""
    import pickletools

    with open(path, "rb") as f:
        reader = _CappedReader(f, cap)
        try:
            for _ in range(LEGACY_PICKLES):
                for _ in pickletools.genops(reader):
                    pass
        except _PastCap:
            return cap + 1
        return f.tell()


def _library_message(error: Exception) -> str:
    """A library error in one short line, without any path."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text if "/" not in text else type(error).__name__


def check_finite(tensors: dict, source: str, error: type[Exception] = WeightsFileError):
    """Refuses the first floating-point tensor that holds NaN or infinity (sampling with it gives
    black frames and no word), and complex tensors (a weight is real; a cast would keep the real
    part of whatever they hold without a look)."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_complex():
            raise error(f"{source}: tensor '{key}' is {str(value.dtype).removeprefix('torch.')}; expected real weights "
                        f"(a floating-point or integer type). The file is damaged or not a weights file.")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.device.type == "meta":
            continue
        for start, chunk in _chunks(value):
            if all_finite(chunk):   # the common case costs one read of the chunk; a bad one is counted
                continue
            bad = count_non_finite(chunk)
            if bad:
                raise error(f"{source}: tensor '{key}' holds {bad} non-finite values (NaN or infinity) in its first "
                            f"{start + chunk.numel()} of {value.numel()}. The file is damaged or was saved from a "
                            f"diverged run; use another copy.")


def check_range(tensors: dict, dtype: torch.dtype, source: str, error: type[Exception] = WeightsFileError):
    """Refuses the first tensor with values beyond what `dtype` holds (finite in the file, infinity
    once cast to the dtype the host keeps the weights in: 1e5 in float16, as a float or as an integer
    that a weight slot takes). Only tensors of a wider type than `dtype` are read; floating values
    are known to be finite (check_finite)."""
    if not dtype.is_floating_point:
        return
    largest = torch.finfo(dtype).max
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor) or value.dtype == torch.bool or value.device.type == "meta":
            continue
        widest = torch.finfo(value.dtype).max if value.is_floating_point() else torch.iinfo(value.dtype).max
        if widest <= largest:
            continue
        for start, chunk in _chunks(value):
            low, high = value_bounds(chunk)
            if -largest <= low and high <= largest:
                continue
            over = int(((chunk > largest) | (chunk < -largest)).sum())
            if over:
                raise error(f"{source}: tensor '{key}' holds {over} values beyond the range of "
                            f"{str(dtype).removeprefix('torch.')} (largest {largest:g}), the type the weights are "
                            f"kept in on this device: they would not stay finite. The file is damaged or was saved "
                            f"from a diverged run; use another copy.")


def _chunks(value: torch.Tensor):
    """(start, chunk) over a tensor's values flattened, in chunks of 16M: a bad chunk's count (or
    range test, for which float8 chunks are read as float32) is a bounded temporary."""
    flat = value.detach().reshape(-1)
    for start in range(0, flat.numel(), 1 << 24):
        chunk = flat[start:start + (1 << 24)]
        narrow = chunk.is_floating_point() and chunk.dtype.itemsize == 1
        yield start, chunk.float() if narrow else chunk


class _OverBudget(BaseException):
    """Raised inside a meta build that does far more than a file of its size can fill; a
    BaseException so that no `except Exception` in a module's __init__ swallows it."""


class _CallBudget(TorchFunctionMode):
    """Counts torch calls while modules are built and stops the build past `limit`."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.calls = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        if self.calls > self.limit:
            raise _OverBudget
        return func(*args, **(kwargs or {}))


def build_on_meta(build: Callable[[], torch.nn.Module], file: WeightsFile, what: str) -> torch.nn.Module:
    """`build()` on the meta device: the module a spec describes, with shapes and no memory for its
    weights, to compare with the file's shapes before anything real is built. A spec that describes
    far more layers than the file holds tensors is stopped while it builds; a spec that does not
    build at all (a negative size, a string where a number goes ...) is `file`'s error."""
    budget = _CallBudget(max(META_CALLS_FLOOR, META_CALLS_PER_TENSOR * len(file.shapes)))
    try:
        with torch.device("meta"), budget:
            return build()
    except _OverBudget:
        raise file.refuse(f"its {what} spec describes far more layers than the file's {len(file.shapes)} tensors hold",
                          "Refused before building it; the spec or the file is damaged.") from None
    except WeightsFileError:
        raise
    except Exception as e:
        raise file.refuse(f"its {what} spec does not describe layers this pack can build ({type(e).__name__}: "
                          f"{_library_message(e)})") from None


def write_atomically(path, write: Callable[[str], None]):
    """`write(tmp)` to a hidden file beside `path`, then renamed onto it: a reader, or a file already
    at `path`, never sees a half-written file (a crash leaves the old file or none). The hidden name is
    no longer than `path`'s own can be (a name the filesystem just takes, lengthened, failed the save)."""
    path = os.fspath(path)
    name = os.path.basename(path).encode("utf-8", "surrogateescape")
    tmp = os.path.join(os.path.dirname(path), f".{hashlib.sha256(name).hexdigest()[:16]}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_safetensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    """A safetensors file written atomically (write_atomically). A failed write (a full disk, no
    permission) is an OSError, as Python's own writes fail."""
    def write(tmp):
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as e:
            raise OSError(f"safetensors could not write the file ({e})") from None
    write_atomically(path, write)

"""Streamed training data: memory flat in the dataset's size, and the data pipeline's throughput.

Writes WebDataset shards of 1,000 and 100,000 clips (one short moving-shapes mp4 repeated under
distinct keys, 100 per shard), then reads the same number of clips from each through
ShardClips in DataLoader workers, each run in a fresh process: peak RSS of the training process
and of its largest worker, side by side. Throughput in clips/s is measured for 1 and 2 workers on
its own (nothing else runs; these machines have 2 cores, so more workers than cores only
contend).

Usage: .venv/bin/python -m bench.bench_streamed_data [--clips 1500]   (~0.5 GB of scratch shards)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import print_table

SHARD_SIZE = 100


def write_shards(folder: Path, count: int, video: bytes) -> str:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(folder / "clips-%06d.tar"), maxcount=SHARD_SIZE, verbose=0) as sink:
        for i in range(count):
            sink.write({"__key__": f"{i:09d}", "mp4": video, "txt": b"moving shapes"})
    return str(folder / f"clips-{{000000..{(count - 1) // SHARD_SIZE:06d}}}.tar")


def one_clip() -> bytes:
    from devtools.synthetic_data import write_mp4
    from videoldm_core.moving_shapes import moving_shapes_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        write_mp4(path, moving_shapes_clip(0, 16, 64, 64, 8.0).frames, 8.0)
        return path.read_bytes()


def child(urls: str, workers: int, clips: int) -> dict:
    """Read `clips` clips as training would; peak RSS of this process and of its largest worker."""
    import resource

    from torch.utils.data import DataLoader

    from videoldm_core.training.data import ClipSpec
    from videoldm_core.training.shards import ShardClips, shard_urls

    dataset = ShardClips(shard_urls(urls), ClipSpec(frames=8, fps=8.0, height=64, width=64, crop="random"), shuffle=256)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None)
    started, read = time.perf_counter(), 0
    for _ in loader:
        read += 1
        if read == clips:
            break
    seconds = time.perf_counter() - started
    del loader
    return {"clips_per_s": read / seconds, "main_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "worker_gib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}


def run_child(urls: str, workers: int, clips: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.bench_streamed_data", "--child", urls, str(workers), str(clips)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=1500, help="clips read per measurement")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    video = one_clip()
    with tempfile.TemporaryDirectory() as tmp:
        small = write_shards(Path(tmp) / "1k", 1_000, video)
        large = write_shards(Path(tmp) / "100k", 100_000, video)
        rows = []
        for name, urls in (("1k clips", small), ("100k clips", large)):
            r = run_child(urls, 2, args.clips)
            rows.append([name, f"{r['main_gib']:.3f}", f"{r['worker_gib']:.3f}", f"{r['clips_per_s']:.1f}"])
        ratio = float(rows[1][1]) / float(rows[0][1]), float(rows[1][2]) / float(rows[0][2])
        print_table(f"{len(video)} B per clip, {args.clips} clips read per run, 2 workers", rows,
                    ("dataset", "training process peak GiB", "largest worker peak GiB", "clips/s"))
        print(f"100k vs 1k: training process {ratio[0]:.3f}x, worker {ratio[1]:.3f}x")
        speed = [[str(w), f"{run_child(small, w, args.clips)['clips_per_s']:.1f}"] for w in (1, 2)]
        print_table("data pipeline alone", speed, ("workers", "clips/s (decode + crop, 8 frames of 64 px)"))


if __name__ == "__main__":
    main()

"""Long soak of hostile files through a real ComfyUI server: does the server's memory stay flat over
hundreds of refusals? (issue 20's soak; the default test run sends each memory bomb once.)

A server whose model folders hold the three memory bombs of issue 20 and a stream of fuzzed
adapter files (devtools.hostile_files' mutations of a valid small adapter, a new file per prompt);
prompts alternate between them and a valid adapter. Prints the server's RSS after the warm-up
(valid prompts only), every --every prompts, and at the end, with the growth over the warm-up
level, and how the prompts ended.

Usage: .venv/bin/python -m bench.soak_hostile_files [--prompts 300]   (after devtools/setup.sh)
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from pathlib import Path

from devtools import hostile_files as hf
from devtools.comfy_server import ComfyServer
from tests.conftest import make_base_dir


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    rng = random.Random(0)
    spec, weights = hf.small_adapter()
    spec_json = hf.spec_dict(spec)
    with tempfile.TemporaryDirectory() as tmp:
        base = make_base_dir(Path(tmp) / "base")
        adapters = base / "models" / "temporal_adapters"
        adapters.mkdir(parents=True)
        for name, write in hf.MEMORY_BOMBS.items():
            if name != "decoder_bomb.safetensors":
                write(adapters / name)
        hf.write_adapter(adapters / "small_ok.safetensors", spec_json, weights)
        with ComfyServer(base_dir=base) as server:
            pid = server.process.pid
            for _ in range(3):
                assert server.run_prompt(hf.adapter_prompt("small_ok.safetensors")).status == "success"
            idle = hf.rss_bytes(pid)
            print(f"after warm-up: {idle / 2**20:.0f} MiB")
            outcomes = Counter()
            for i in range(1, args.prompts + 1):
                kind = i % 4
                if kind == 0:
                    name = "small_ok.safetensors"
                elif kind == 1:
                    name = rng.choice(["channel_bomb.safetensors", "table_bomb.safetensors"])
                else:   # a fresh fuzzed file: spec values, or weights
                    name = f"fuzz_{i:05d}.safetensors"
                    if kind == 2:
                        mutated, _ = hf.mutate_spec(rng, spec_json)
                        hf.write_adapter(adapters / name, mutated, weights)
                    else:
                        mutated, _ = hf.mutate_weights(rng, weights)
                        hf.write_adapter(adapters / name, spec_json, mutated)
                run = server.run_prompt(hf.adapter_prompt(name), timeout=120)
                outcomes[(name.split("_")[0], run.status)] += 1
                if i % args.every == 0 or i == args.prompts:
                    now = hf.rss_bytes(pid)
                    print(f"after {i} prompts: {now / 2**20:.0f} MiB ({now / idle:.3f}x the warm-up level)", flush=True)
            print("outcomes:", dict(sorted(outcomes.items())))


if __name__ == "__main__":
    main()

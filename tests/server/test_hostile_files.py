"""The memory bombs of issue 20 through the real server's POST /prompt: a 30 kB adapter declaring
24,000 channels, a motion module declaring a 30,000,000-entry positional table and a temporal-decoder
add-on declaring 30,000 output channels (loaded the old way, the first filled 7.5 GiB and the other
two got the server killed). Each is refused with the file named, and the server's peak RSS while
refusing (the kernel's high-water mark) stays below 1.1x its idle level."""

import pytest

from devtools import hostile_files as hf
from devtools.comfy_server import ComfyServer

IDLE_FACTOR = 1.1


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory):
    """A server whose model folders hold the three bombs and a valid small adapter (the toy family
    brings a valid add-on)."""
    from tests.conftest import make_base_dir

    base = make_base_dir(tmp_path_factory.mktemp("hostile-files-base"))
    adapters, decoders = base / "models" / "temporal_adapters", base / "models" / "temporal_decoders"
    adapters.mkdir(parents=True)
    decoders.mkdir(parents=True)
    for name, write in hf.MEMORY_BOMBS.items():
        write((decoders if name == "decoder_bomb.safetensors" else adapters) / name)
    spec, weights = hf.small_adapter()
    hf.write_adapter(adapters / "small_ok.safetensors", hf.spec_dict(spec), weights)
    with ComfyServer(base_dir=base) as running:
        yield running


def decoder_prompt(name: str) -> dict:
    """The toy family's VAE (shipped with the pack) with the add-on `name`, decoding one frame."""
    return {"1": {"class_type": "VideoLDMLoadTemporalVAE",
                  "inputs": {"vae_name": "videoldm_bundles/videoldm_toy.safetensors", "temporal_decoder": name}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "VideoLDMTemporalVAEDecode",
                  "inputs": {"vae": ["1", 0], "samples": ["2", 0], "window": 17, "overlap": 1, "tile_size": 0}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def test_the_three_memory_bombs_are_refused_below_1_1x_idle_rss(bomb_server):
    pid = bomb_server.process.pid
    for prompt in (hf.adapter_prompt("small_ok.safetensors"), decoder_prompt("videoldm_toy_temporal_decoder.safetensors")):   # warm-up:
        run = bomb_server.run_prompt(prompt)   # the same nodes, meta builds and execution paths, on valid files
        assert run.status == "success", run.error_message() or bomb_server.log_tail()
    idle = hf.rss_bytes(pid)
    figures = {}
    for name, prompt, expected in (
            ("channel_bomb.safetensors", hf.adapter_prompt("channel_bomb.safetensors"),
             "'channel_bomb.safetensors': the weights do not match the adapter spec"),
            ("table_bomb.safetensors", hf.adapter_prompt("table_bomb.safetensors"),
             "'table_bomb.safetensors': slot 'input_blocks.1': max_len: expected an integer from 1 to 4096, found 30000000"),
            ("decoder_bomb.safetensors", decoder_prompt("decoder_bomb.safetensors"),
             "'decoder_bomb.safetensors': temporal decoder weights do not match its spec")):
        hf.reset_peak_rss(pid)
        run = bomb_server.run_prompt(prompt)
        peak = hf.peak_rss_bytes(pid)
        figures[name] = peak / idle
        assert run.status == "error" and expected in run.error_message(), run.error_message()
        assert str(bomb_server.base_dir) not in run.error_message()   # the file by its name, never its path
        assert peak < IDLE_FACTOR * idle, f"{name}: peak RSS {peak / 2**20:.0f} MiB, idle {idle / 2**20:.0f} MiB"
    print("peak RSS / idle RSS while refusing:", {k: round(v, 3) for k, v in figures.items()},
          f"(idle {idle / 2**20:.0f} MiB)")

"""Issue 22 on the real server: a render whose frames, held as an IMAGE, would not fit the memory the
server is allowed, succeeds when Temporal VAE Decode to Video streams it into the file, while the
in-memory path (Temporal VAE Decode → CreateVideo → Save Video) on the same latents is refused.

The limit is RLIMIT_AS, set on the running server with prlimit(2): a process may set it on its own
child without privileges on any Linux (a memory cgroup needs root or a delegated hierarchy, which CI
machines need not give), and an allocation beyond it fails with an error in that process instead
of the kernel's OOM killer picking a victim. It bounds address space, not resident memory, so it is
set from the server's own peak address space after a warm-up of both paths on a short video, plus
a small headroom the long IMAGE exceeds 2.8 times. Two settings of glibc's allocator make address
space follow live memory, so the limit is about what the render holds and not about how the heap
happened to grow: one arena (the encoder's threads do not each reserve 64 MiB) and a fixed mmap
threshold (blocks of 1 MiB and more are mapped and unmapped on free, instead of the heap keeping
them after the threshold rises; without it a long render's peak address space crept 32 MiB, two
decoder activations of 16 MiB, past a 24-frame warm-up's). The warm-up is longer than the
encoder's lookahead, so the long render meets no buffer the warm-up did not.
"""

import resource

import pytest

from devtools.comfy_server import ComfyServer
from devtools.frame_strip import read_frames
from devtools.process_memory import status_bytes

SIDE = 128           # output pixels (the demo bundle's tiny VAE decodes 8x, as SD's)
FRAMES = 480
WARM_UP = 64
HEADROOM = 32 * 2**20
VAE = "demo_tiny_vae.safetensors"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, server_base_dir):
    """A server of its own (the limit must not touch the shared one) with the demo bundle's VAE."""
    from safetensors.torch import load_file, save_file

    from devtools.make_demo_bundle import DEMO_BUNDLE_NAME
    from tests.conftest import make_base_dir

    base = make_base_dir(tmp_path_factory.mktemp("streamed-render-base"))
    (base / "models" / "vae").mkdir(parents=True)
    bundle = load_file(server_base_dir / "models" / "checkpoints" / DEMO_BUNDLE_NAME)
    save_file({k: v for k, v in bundle.items() if k.startswith("first_stage_model.")}, base / "models" / "vae" / VAE)
    # see the module's docstring; set whatever devtools/allocator.env set: glibc's default trim, no huge pages
    allocator = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(2**20), "MALLOC_TRIM_THRESHOLD_": str(2**17),
                 "THP_MEM_ALLOC_ENABLE": "0"}
    with ComfyServer(base_dir=base, env=allocator) as running:
        yield running


def render(frames: int, streamed: bool, prefix: str) -> dict:
    prompt = {"1": {"class_type": "VideoLDMLoadTemporalVAE", "inputs": {"vae_name": f"vae/{VAE}", "temporal_decoder": "none"}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"width": SIDE, "height": SIDE, "batch_size": frames}}}
    decode = {"vae": ["1", 0], "samples": ["2", 0], "window": 8, "overlap": 1, "tile_size": 0}
    if streamed:
        prompt["3"] = {"class_type": "VideoLDMTemporalVAEDecodeToVideo", "inputs": {**decode, "fps": 24.0}}
    else:
        prompt["3"] = {"class_type": "VideoLDMTemporalVAEDecode", "inputs": decode}
        prompt["4"] = {"class_type": "CreateVideo", "inputs": {"images": ["3", 0], "fps": 24.0, "bit_depth": 8}}
    prompt["5"] = {"class_type": "SaveVideo", "inputs": {"video": ["4" if "4" in prompt else "3", 0], "filename_prefix": prefix,
                                                          "format": "mp4", "codec": "h264", "codec.encoding": "auto"}}
    return prompt


def test_a_render_larger_than_the_servers_memory_limit_streams_to_the_file(limited_server):
    pid = limited_server.process.pid
    for streamed in (True, False):   # both paths once on a short video, under no limit
        run = limited_server.run_prompt(render(WARM_UP, streamed, f"warm/{streamed}"))
        assert run.status == "success", run.error_message() or limited_server.log_tail()
    warm_peak = status_bytes(pid, "VmPeak")
    limit = warm_peak + HEADROOM
    image_bytes = FRAMES * SIDE * SIDE * 3 * 4
    assert image_bytes > 2.8 * HEADROOM
    resource.prlimit(pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))   # the soft limit binds
    try:
        run = limited_server.run_prompt(render(FRAMES, True, "streamed/long"), timeout=900)
        assert run.status == "success", run.error_message() or limited_server.log_tail()
        (video,) = limited_server.output_files(run)
        frames, fps = read_frames(video)
        assert len(frames) == FRAMES and fps == 24
        streamed_growth = status_bytes(pid, "VmPeak") - warm_peak
        refused = limited_server.run_prompt(render(FRAMES, False, "in_memory/long"), timeout=900)
        assert refused.status == "error" and "memory" in refused.error_message().lower(), refused.error_message()
        assert limited_server.get_json("/system_stats")["system"]   # refused, not killed: still serving
    finally:
        resource.prlimit(pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    print(f"address-space limit: the server's peak after warm-up + {HEADROOM / 2**20:.0f} MiB; the streamed render's "
          f"IMAGE would be {image_bytes / 2**20:.0f} MiB ({FRAMES} frames of {SIDE}x{SIDE}); the streamed render "
          f"raised the peak by {streamed_growth / 2**20:.1f} MiB")


def test_a_cached_video_whose_file_is_gone_is_rendered_again(limited_server):
    """The VIDEO is backed by its file in temp/; ComfyUI caches the node's output. Once the file is
    gone (temp emptied by hand, or by a second ComfyUI on the same folders), Save Video under a new
    prefix failed with FileNotFoundError on the cached VIDEO; now the node renders again."""
    def rendered_file(run):
        """The decode's preview of the file it wrote, None where the node was not run (cached)."""
        previews = [m["data"]["output"]["images"] for m in run.messages
                    if m.get("type") == "executed" and m["data"].get("node") == "3"]
        return limited_server.base_dir / "temp" / previews[0][0]["subfolder"] / previews[0][0]["filename"] if previews else None

    first = limited_server.run_prompt(render(16, True, "cache/first"))
    assert first.status == "success", first.error_message() or limited_server.log_tail()
    path = rendered_file(first)
    assert path.is_file()
    cached = limited_server.run_prompt(render(16, True, "cache/cached"))
    assert cached.status == "success" and rendered_file(cached) is None   # the decode was cached
    path.unlink()
    again = limited_server.run_prompt(render(16, True, "cache/again"))
    assert again.status == "success", again.error_message() or limited_server.log_tail()
    assert rendered_file(again) not in (None, path) and rendered_file(again).is_file()
    (video,) = limited_server.output_files(again)
    frames, fps = read_frames(video)
    assert len(frames) == 16 and fps == 24

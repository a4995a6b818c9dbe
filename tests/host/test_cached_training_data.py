"""A data folder's clips in a real ComfyUI: encoded once into the latent cache and read back one
clip at a time, as the in-memory path encodes them; the CLI's latent-space crop and flip per step."""

import pytest
import torch

FRAMES = 4


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from devtools.synthetic_data import write_dataset

    folder = tmp_path_factory.mktemp("clips")
    write_dataset(folder, 2, seed=3, frames=8, height=64, width=64, fps=30.0)
    return folder


def folder(pack_module, clips, size: int):
    data = pack_module("videoldm_core.training.data")
    return data.VideoFolder(clips, data.ClipSpec(FRAMES, 15.0, size, size))


def as_images(frames):
    return (frames.movedim(1, -1) + 1) / 2


@pytest.mark.parametrize("mode", ["temporal", "upscaler"])
def test_cached_clips_are_read_on_access_and_equal_the_in_memory_encoding(pack_module, clips, tiny_sd1, tiny_x4_bundle,
                                                                          tmp_path, mode):
    host = pack_module("host.training_data")
    model, _, vae = tiny_x4_bundle if mode == "upscaler" else tiny_sd1
    dataset = folder(pack_module, clips, 64)
    items = host.folder_items(model, vae, dataset, mode, tmp_path)
    assert type(items).__name__ == "CachedClips" and len(items) == 2
    assert len(items.shards._open) == 0   # nothing read yet
    # the latent format's method, not the model's: a dataset kept alive must not keep a UNet (a training copy)
    assert getattr(items.latent_in, "__self__", None) is model.model.latent_format
    for i in range(2):
        [expected] = host.training_items(model, vae, as_images(dataset[i]["frames"]), FRAMES, mode, stride=FRAMES)
        item = items[i]
        assert sorted(item) == sorted(expected)   # the x4 upscaler's low-res frames cached with its latents
        for key in expected:
            assert torch.equal(item[key], expected[key]), key


def test_the_cli_crops_and_flips_cached_latents_per_step(pack_module, clips, tiny_sd1, tmp_path):
    training_data = pack_module("host.training_data")
    crops = pack_module("videoldm_core.training.crops")
    world = pack_module("videoldm_core.training.distributed").World()
    model, _, vae = tiny_sd1
    data = {"folder": str(clips), "frames": FRAMES, "fps": 15, "width": 48, "height": 48, "cache": str(tmp_path)}
    items = training_data.dataset_items(model, vae, data, "temporal", 0, world, (0,))
    plain = training_data.cached_batches(items, data, 2, 0, world)
    assert plain.augment is None   # no margin, no flip: the run is the one without augmentation

    data.update(cache_width=64, cache_height=64, flip=True)
    items = training_data.dataset_items(model, vae, data, "temporal", 0, world, (0,))
    batches = training_data.cached_batches(items, data, 2, 0, world)
    assert batches.augment == crops.LatentAugmentation(6, 6, flip=True)   # 48 px of 64 px cached as 8 latent pixels
    cached = [items[i]["latents"] for i in range(2)]
    assert cached[0].shape[-2:] == (8, 8)
    windows = set()
    for step in range(6):
        for clip in batches(step)["latents"]:
            found = [(k, top, left, flip) for k in range(2) for top in range(3) for left in range(3) for flip in (0, 1)
                     if torch.equal(clip, (lambda x: x.flip(-1) if flip else x)(cached[k][..., top:top + 6, left:left + 6]))]
            assert len(found) == 1, "every frame cut from one window of one cached clip"
            windows.add(found[0])
    assert len(windows) >= 6 and {w[-1] for w in windows} == {0, 1}


def test_cached_captions_are_encoded_again_for_another_text_encoder(pack_module, clips, tiny_sd1, tmp_path):
    """The cache's key names the text encoder's weights when captions are cached: a fine-tune with the
    same VAE and another text encoder does not reuse the embeddings of the first."""
    host = pack_module("host.training_data")
    model, clip, vae = tiny_sd1
    dataset = folder(pack_module, clips, 64)
    first = host.folder_items(model, vae, dataset, "temporal", tmp_path, encode_text=host.caption_encoder(clip, model))
    text = first[0]["text"].clone()
    weight = max(clip.cond_stage_model.state_dict().values(), key=lambda w: w.numel())
    with torch.inference_mode(False), torch.no_grad():
        try:
            weight.mul_(2.0)
            again = host.folder_items(model, vae, dataset, "temporal", tmp_path,
                                      encode_text=host.caption_encoder(clip, model))
            changed = again[0]["text"].clone()
        finally:
            weight.div_(2.0)
    assert not torch.equal(changed, text)   # encoded by the changed encoder, not read from the first cache
    same = host.folder_items(model, vae, dataset, "temporal", tmp_path, encode_text=host.caption_encoder(clip, model))
    assert torch.equal(same[0]["text"], text)

"""Training temporal layers on a frozen image model in a real ComfyUI: the tiny SD1.x and SD x4
architectures (random spatial weights), synthetic moving-shapes clips, every mode."""

import json
import os
import re

import pytest
import torch

FRAMES, SIZE = 6, 64


@pytest.fixture(scope="module")
def tr(pack_module, tiny_sd1):
    model, clip, vae = tiny_sd1
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("shapes moving"))
    return dict(model=model, vae=vae, positive=positive, text=positive[0][0].clone(),
                host=pack_module("host.training_model"), run=pack_module("host.training"),
                data=pack_module("host.training_data"),
                patch=pack_module("host.temporal_adapter"),
                objective=pack_module("videoldm_core.training.diffusion_objective"),
                trainer=pack_module("videoldm_core.training.trainer"),
                batches=pack_module("videoldm_core.training.batches"),
                core=pack_module("videoldm_core.training.objective"),
                synthetic=pack_module("videoldm_core.moving_shapes"),
                node=pack_module("nodes.training").TrainTemporalAdapter)


def shapes_video(tr, frames=24, seed=0, size=SIZE):
    """(N, H, W, 3) in [0, 1]: one moving-shapes video, ComfyUI's IMAGE layout."""
    clip = tr["synthetic"].moving_shapes_clip(seed, frames, size, size, fps=15.0)
    return ((clip.frames + 1) / 2).movedim(1, -1).contiguous()



def node_args(tr, steps: int) -> dict:
    """Train Temporal Adapter's required inputs for a short temporal run."""
    return dict(model=tr["model"], vae=tr["vae"], positive=tr["positive"], mode="temporal", clip_frames=4, steps=steps,
                learning_rate=1e-3, batch_size=1, seed=0, gradient_checkpointing=False)

def setup_training(tr, mode, model=None, frames=FRAMES, steps=20, lr=2e-3, batch=2, seed=0, output_dir=None, items=None,
                   checkpointing=False, **options):
    host, model = tr["host"], model or tr["model"]
    torch.manual_seed(seed)
    base = host.trainable_base(model)
    context = (0, 1, 2) if mode in ("prediction", "interpolation") else ()
    spec, adapter = tr["patch"].fresh_adapter_for_model(base, context_frames=context, context_width=16,
                                                        interpolation=mode == "interpolation")
    if items is None:
        video = torch.cat([shapes_video(tr, seed=s) for s in range(2)])
        items = tr["data"].training_items(base, tr["vae"], video, frames, mode, stride=3)
    text = tr["text"] if model is tr["model"] else torch.zeros(1, 77, 64)
    denoiser = host.UNetDenoiser(base, adapter, text, gradient_checkpointing=checkpointing).load()
    augment, level = host.augmentation_schedule(base)
    phase = tr["objective"].DiffusionPhase(adapter, denoiser, host.noise_schedule(base), mode, augment_schedule=augment,
                                           max_noise_level=level, **options)
    config = tr["trainer"].TrainConfig(steps=steps, lr=lr, seed=seed)
    trainer = tr["trainer"].Trainer([phase], config, tr["batches"].StepBatches(items, batch, seed=seed),
                                    output_dir=output_dir, identity={"spec": json.loads(spec.to_json()), "mode": mode})
    return dict(base=base, spec=spec, adapter=adapter, phase=phase, trainer=trainer, items=items)


def eval_loss(run, count=4):
    """The loss on the first clips with fixed seeds (timesteps, noise, masks): a deterministic yardstick."""
    batch = tr_batch(run["items"][:count])
    with torch.no_grad():
        return run["phase"](batch, torch.Generator().manual_seed(0))[0].item()


def tr_batch(items):
    from collections import defaultdict
    out = defaultdict(list)
    for item in items:
        for k, v in item.items():
            out[k].append(v)
    batch = {k: torch.stack(v) for k, v in out.items()}
    batch["sample_seeds"] = torch.arange(len(items)) + 1000
    return batch


def test_training_changes_only_the_adapter_and_the_users_model_stays_untouched(tr):
    unet = tr["model"].model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    run = setup_training(tr, "temporal", steps=3)
    base_unet = run["base"].model.diffusion_model
    base_before = {k: v.clone() for k, v in base_unet.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in run["adapter"].state_dict().items()}
    run["trainer"].run()
    assert all(torch.equal(v, base_before[k]) for k, v in base_unet.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in base_unet.parameters())
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items()), "the user's MODEL changed"
    changed = [k for k, v in run["adapter"].state_dict().items() if not torch.equal(v, adapter_before[k])]
    assert len(changed) > 10
    optimised = {id(p) for group in run["trainer"].optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in run["adapter"].parameters()}
    assert not optimised & {id(p) for p in base_unet.parameters()}


@pytest.mark.parametrize("mode,frames", [("temporal", FRAMES), ("prediction", FRAMES), ("interpolation", 9)])
def test_a_short_run_lowers_the_loss_in_each_mode(tr, mode, frames):
    run = setup_training(tr, mode, frames=frames, steps=25)
    before = eval_loss(run)
    run["trainer"].run()
    after = eval_loss(run)
    assert after < 0.9 * before, f"{mode}: loss {before:.4f} -> {after:.4f}"


def test_the_upscaler_mode_trains_on_patches_of_the_x4_model(tr, tiny_x4):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        low = torch.rand(1, 3, 16, 16, generator=g).expand(FRAMES, -1, -1, -1) * 2 - 1
        items.append({"latents": 0.5 * low[:, :1].expand(-1, 4, -1, -1) + 0.1 * torch.randn(FRAMES, 4, 16, 16, generator=g),
                      "low_res": low.clone()})
    run = setup_training(tr, "upscaler", model=tiny_x4, items=items, steps=25, patch=8)
    before = eval_loss(run)
    run["trainer"].run()
    assert eval_loss(run) < 0.9 * before
    assert run["trainer"].history[0]["adapter/noise_level"] <= 350


def test_the_runs_precision_is_what_the_unet_and_adapter_compute_in(tr):
    """train.precision decides the forward's dtype (autocast over the frozen weights); fp32 over a
    16-bit UNet (ComfyUI's GPU default) computes in the weights' dtype, so that the trainer's grad
    scaler is on for fp16."""
    from types import SimpleNamespace

    host = tr["host"]
    base = host.trainable_base(tr["model"])
    spec, adapter = tr["patch"].fresh_adapter_for_model(base)
    seen = []
    linear = next(m for m in adapter.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            denoiser = host.UNetDenoiser(base, adapter, tr["text"], precision=precision).load()
            with torch.no_grad(), torch.inference_mode(False):
                denoiser(torch.randn(4, 4, 8, 8), torch.full((4,), 500.0), 1, {})
            assert seen and set(seen) == {dtype}, precision
            seen.clear()
    finally:
        hook.remove()
    weights = lambda dtype: SimpleNamespace(model=SimpleNamespace(get_dtype=lambda: dtype))
    assert host.training_precision("fp32", weights(torch.float32)) == "fp32"
    assert host.training_precision("fp32", weights(torch.float16)) == "fp16"
    assert host.training_precision("fp32", weights(torch.bfloat16)) == "bf16"
    assert host.training_precision("bf16", weights(torch.float16)) == "bf16"
    with pytest.raises(tr["core"].TrainingError, match="which training cannot compute in"):
        host.training_precision("fp32", weights(torch.float8_e4m3fn))


def test_the_cli_loads_a_bundles_unet_in_the_runs_precision_and_pretraining_copies_are_fp32(tr, pack_module):
    from devtools import tiny_bundles

    host, spec = tr["host"], tiny_bundles.tiny_sd1_spec()
    bf16 = pack_module("host.bundle").build_components(spec, tiny_bundles.random_bundle_state_dict(spec, seed=5),
                                                       unet_dtype=torch.bfloat16)[0]
    assert bf16.model.get_dtype() == torch.bfloat16 and host.training_precision("fp32", bf16, quiet=True) == "bf16"
    copy = host.pretrainable_unet(bf16)   # image pretraining trains the whole UNet in fp32
    assert copy.model.get_dtype() == torch.float32 and host.training_precision("fp32", copy) == "fp32"
    assert bf16.model.get_dtype() == torch.bfloat16   # the loaded MODEL is not changed


def test_gradient_checkpointing_gives_the_same_gradients(tr, monkeypatch):
    """Layers are recomputed in the backward (torch's checkpoint runs, once per adapted layer) only
    with the flag, and the gradients are those of the plain backward."""
    checkpoint, calls = torch.utils.checkpoint.checkpoint, []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: (calls.append(1), checkpoint(*a, **k))[1])
    grads, counted = [], []
    for checkpointing in (False, True):
        calls.clear()
        run = setup_training(tr, "prediction", steps=1, checkpointing=checkpointing)
        for p in run["adapter"].parameters():
            torch.nn.init.normal_(p, std=0.02) if p.ndim > 1 else None
        loss, _ = run["phase"](tr_batch(run["items"][:2]), torch.Generator().manual_seed(0))
        loss.backward()
        counted.append(len(calls))
        grads.append(torch.cat([p.grad.flatten() for p in run["adapter"].parameters() if p.grad is not None]))
    assert counted[0] == 0 and counted[1] > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tr, tmp_path):
    straight = setup_training(tr, "prediction", steps=6, output_dir=tmp_path / "straight")
    straight["trainer"].run()
    first = setup_training(tr, "prediction", steps=3, output_dir=tmp_path / "resumed")
    first["trainer"].run()
    second = setup_training(tr, "prediction", steps=6, output_dir=tmp_path / "resumed")
    second["trainer"].load_checkpoint(tr["trainer"].latest_checkpoint(tmp_path / "resumed"))
    assert second["trainer"].step == 3
    second["trainer"].run()
    losses = lambda path: [r["adapter/loss"] for r in tr["trainer"].read_log(path / "loss.csv")]
    assert len(losses(tmp_path / "resumed")) == 6
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")
    for k, v in straight["adapter"].state_dict().items():
        assert torch.equal(v, second["adapter"].state_dict()[k]), k


def test_resume_from_a_checkpoint_of_another_spec_is_refused(tr, tmp_path):
    run = setup_training(tr, "temporal", steps=1, output_dir=tmp_path)
    run["trainer"].run()
    other = setup_training(tr, "prediction", steps=2, output_dir=tmp_path)
    with pytest.raises(tr["core"].TrainingError, match=r"another training setup.*'mode'|another training setup.*'spec'"):
        other["trainer"].load_checkpoint(tr["trainer"].latest_checkpoint(tmp_path))


def test_a_mode_the_adapter_cannot_learn_is_refused_before_training(tr):
    spec, adapter = tr["patch"].fresh_adapter_for_model(tr["model"])
    with pytest.raises(tr["core"].TrainingError, match="needs an adapter with a context encoder"):
        tr["objective"].DiffusionPhase(adapter, None, None, "prediction")
    with pytest.raises(tr["core"].TrainingError, match="expected an SD-x4-upscaler adapter"):
        tr["objective"].check_mode(spec, "upscaler")


def test_the_latent_cache_key_sees_every_weight_of_the_encoder(tr):
    """Two encoders that differ only past a tensor's first values made the same key (only 4096 bytes of
    each were hashed), so a cache of the other encoder's latents was reused."""
    encoder = tr["vae"].first_stage_model.encoder
    name, weight = max(encoder.state_dict().items(), key=lambda item: item[1].numel())
    before = tr["data"].encoder_fingerprint(tr["vae"])
    last = weight.view(-1)[-1].item()
    with torch.inference_mode(False), torch.no_grad():
        try:
            weight.view(-1)[-1] = last + 1.0
            changed = tr["data"].encoder_fingerprint(tr["vae"])
        finally:
            weight.view(-1)[-1] = last
    assert weight.numel() * 4 > 4096 and changed != before
    assert tr["data"].encoder_fingerprint(tr["vae"]) == before


def test_keyframes_are_augmented_only_for_an_adapter_told_the_level(tr):
    """Interpolation in regime 0 alone needs no label embedding; without one the adapter cannot be told
    the augmentation level and its spec records none, so its keyframes are not augmented either."""
    plain = tr["patch"].fresh_adapter_for_model(tr["model"], context_frames=(0, 1, 2))[1]
    told = tr["patch"].fresh_adapter_for_model(tr["model"], context_frames=(0, 1, 2), interpolation=True)[1]
    assert plain.spec.augmentation_range == (0.0, 0.0)
    assert tr["objective"].DiffusionPhase(plain, None, None, "interpolation", regimes=(0,)).max_augmentation == 0.0
    assert tr["objective"].DiffusionPhase(told, None, None, "interpolation", regimes=(0,)).max_augmentation > 0.0


def test_a_base_model_that_cannot_be_frozen_is_refused(tr):
    layer = torch.nn.Linear(2, 2)
    layer.weight = torch.nn.Parameter(torch.ones(2, 2))
    module = torch.nn.Sequential(layer)
    module[0]._parameters["weight"] = module[0].weight * 2   # a non-leaf "parameter"
    with pytest.raises(tr["core"].TrainingError, match="could not be frozen"):
        tr["core"].frozen(module)


def test_the_node_trains_saves_and_the_file_loads_with_load_temporal_adapter(tr, pack_module, tmp_path):
    import folder_paths

    images = shapes_video(tr, frames=10)
    with torch.inference_mode():
        out = tr["node"].execute(**node_args(tr, steps=4), images=images, save_name="test_trained/tiny").result
    adapter, curve = out
    assert curve.shape == (1, 256, 512, 3) and curve.min() < 0.5
    assert adapter.spec.placement == "videoldm"
    names = folder_paths.get_filename_list("temporal_adapters")
    assert "test_trained/tiny.safetensors" in [n.replace("\\", "/") for n in names]
    loaded = pack_module("host.temporal_adapter").load_temporal_adapter(
        folder_paths.get_full_path_or_raise("temporal_adapters", "test_trained/tiny.safetensors"), "tiny")
    for k, v in adapter.patcher.model.state_dict().items():
        torch.testing.assert_close(loaded.patcher.model.state_dict()[k].float(), v.float())
    patched = tr["patch"].apply_adapter(tr["model"], loaded.patcher, "tiny")
    assert tr["patch"].applied_adapters(patched)


def test_the_node_never_replaces_a_file_of_the_same_name(tr):
    import hashlib

    import folder_paths

    root = folder_paths.get_folder_paths("temporal_adapters")[0]
    os.makedirs(os.path.join(root, "test_kept"), exist_ok=True)
    theirs = os.path.join(root, "test_kept", "someones_module.safetensors")
    with open(theirs, "wb") as f:
        f.write(b"a motion module the user downloaded")
    digest = hashlib.sha256(open(theirs, "rb").read()).hexdigest()
    images = shapes_video(tr, frames=10)
    for _ in range(2):
        with torch.inference_mode():
            tr["node"].execute(**node_args(tr, steps=1), images=images, save_name="test_kept/someones_module")
    assert hashlib.sha256(open(theirs, "rb").read()).hexdigest() == digest
    assert sorted(os.listdir(os.path.join(root, "test_kept"))) == [
        "someones_module.safetensors", "someones_module_00001_.safetensors", "someones_module_00002_.safetensors"]


def test_captions_are_refused_for_a_unet_with_a_pooled_text_input(tr, tiny_sd1):
    """SDXL conditions on the pooled text too; the caches hold per-caption cross-attention only."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    from devtools import unet_configs

    model_config = sm.SDXL(unet_configs.tiny(unet_configs.SDXL))
    model_config.set_inference_dtype(torch.float32, None)
    sdxl = comfy.model_patcher.ModelPatcher(model_config.get_model({}, device="meta"), "cpu", "cpu")
    with pytest.raises(tr["core"].TrainingError, match="data.captions: SDXL also conditions on the pooled text vector"):
        tr["data"].caption_encoder(tiny_sd1[1], sdxl)
    assert tr["data"].caption_encoder(tiny_sd1[1], tr["model"])(["a square"]).ndim == 3   # SD1.x: captions as before


def test_the_node_trains_interpolation_in_the_regime_of_its_clips(tr, pack_module, monkeypatch):
    """The node's clips come at one rate (T-to-4T): every label the embedding sees says regime 0 (they
    were drawn at random, so the label the sampler gives later meant nothing)."""
    InterpolationEmbedding = pack_module("videoldm_core.interpolation").InterpolationEmbedding
    seen, forward = [], InterpolationEmbedding.forward
    monkeypatch.setattr(InterpolationEmbedding, "forward",
                        lambda self, labels: (seen.extend(labels[:, 0].tolist()), forward(self, labels))[1])
    args = node_args(tr, steps=3) | dict(mode="interpolation", clip_frames=9, batch_size=2)
    with torch.inference_mode():
        adapter = tr["node"].execute(**args, images=shapes_video(tr, frames=20)).result[0]
    assert adapter.spec.has_interpolation_embedding and len(seen) >= 3 * 2 * 9
    assert set(seen) == {0.0}


def test_the_node_continues_an_interpolation_adapter_without_regime_labels(tr):
    """The node trains regime T-to-4T alone, which needs no regime-label embedding: an interpolation
    adapter made without one (train.py with adapter.regimes [0]) trains on."""
    torch.manual_seed(0)
    spec, module = tr["patch"].fresh_adapter_for_model(tr["model"], context_frames=(0, 1, 2), context_width=16)
    assert not spec.has_interpolation_embedding
    given = tr["patch"].LoadedAdapter("no_labels", spec, tr["patch"].build_adapter_patcher(spec, module.state_dict(), "no_labels"))
    args = node_args(tr, steps=1) | dict(mode="interpolation", clip_frames=9)
    with torch.inference_mode():
        trained = tr["node"].execute(**args, images=shapes_video(tr, frames=10), temporal_adapter=given).result[0]
    assert trained.spec.context_frames == [0, 1, 2] and not trained.spec.has_interpolation_embedding


def test_the_clis_init_file_is_checked_against_its_spec_before_a_weight_is_read(tr, pack_module, tmp_path, monkeypatch):
    """adapter.init whose spec states layers the file does not hold (a context encoder here) is
    refused by name from its header; its adapter is never built for real."""
    core = pack_module("videoldm_core.temporal_adapter")
    torch.manual_seed(0)
    small_spec, small = tr["patch"].fresh_adapter_for_model(tr["model"])
    big_spec, _ = tr["patch"].fresh_adapter_for_model(tr["model"], context_frames=(0, 1, 2), context_width=16)
    path = tmp_path / "init.safetensors"
    core.save_adapter(path, small.state_dict(), big_spec)   # the weights of one, the spec of the other
    read = []
    weights_file = pack_module("videoldm_core.weights_file").WeightsFile
    monkeypatch.setattr(weights_file, "tensors", lambda *a, **k: read.append(1))
    monkeypatch.setattr(pack_module("host.training_cli"), "starting_adapter", lambda *a, **k: read.append(2))
    with pytest.raises(core.AdapterFormatError, match=r"'init.safetensors': the weights do not match the adapter spec"):
        pack_module("host.training_cli").starting_adapter_from_config(tr["model"], {"init": str(path)}, "temporal")
    assert not read


def test_a_run_configuration_that_cannot_be_read_is_named(tr, pack_module, tmp_path):
    read = pack_module("host.training_cli").read_run_config
    with pytest.raises(tr["core"].TrainingError, match=r"missing.json': the run configuration cannot be read "
                                                       r"\(No such file or directory\)"):
        read(str(tmp_path / "missing.json"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(tr["core"].TrainingError, match=r"deep.json' is not a run configuration: its JSON is nested too "
                                                       r"deeply"):
        read(str(tmp_path / "deep.json"))
    # UTF-8 whatever the locale (cp1252 on Windows made 'José' 'JosÃ©'), with or without a byte-order mark
    config = {"checkpoint": "José.safetensors", "output": "runs/été", "prompt": "a café at dusk ☕",
              "data": {"folder": "clips"}}
    (tmp_path / "run.json").write_text("\ufeff" + json.dumps(config, ensure_ascii=False), encoding="utf-8")
    assert {k: read(str(tmp_path / "run.json"))[k] for k in ("checkpoint", "output", "prompt")} == \
        {k: config[k] for k in ("checkpoint", "output", "prompt")}


@pytest.mark.parametrize("inputs, message", [
    (dict(mode="upscaler"), r"mode 'upscaler' trains the SD x4 upscaler, found a SD1.x MODEL"),
    (dict(images_count=3), r"images: clips of 4 frames need at least 4 frames, found 3"),
    (dict(images_count=0), r"images: clips of 4 frames need at least 4 frames, found 0"),
])
def test_the_node_refuses_what_model_and_frames_decide_before_building_anything(tr, monkeypatch, inputs, message):
    built = []
    monkeypatch.setattr(tr["run"], "starting_adapter", lambda *a, **k: built.append("adapter"))
    monkeypatch.setattr(tr["run"], "trainable_base", lambda *a, **k: built.append("UNet copy"))
    count = inputs.pop("images_count", 8)
    with pytest.raises(tr["core"].TrainingError, match=message), torch.inference_mode():
        tr["node"].execute(**node_args(tr, steps=1) | inputs, images=shapes_video(tr, frames=8)[:count])
    assert not built


def test_a_caption_longer_than_clips_77_tokens_is_cut_to_them_as_sd_training_cuts(tr, tiny_sd1, caplog):
    """ComfyUI encodes a long text as several 77-token chunks; a batch of captions once failed to stack
    (and a streamed run died at the step that met one). Each caption is its first chunk."""
    encode = tr["data"].caption_encoder(tiny_sd1[1], tr["model"])
    long = "a red square moving left across a grey field, " * 12
    with caplog.at_level("INFO", logger="videoldm"):
        both = encode(["a red square", long])
    assert both.shape[:2] == (2, 77) and "a caption longer than CLIP's 77 tokens is cut" in caplog.text
    whole = tiny_sd1[1].encode_from_tokens(tiny_sd1[1].tokenize(long)).float()
    assert whole.shape[1] > 77 and torch.equal(both[1:], whole[:, :77].cpu())


def test_the_node_needs_exactly_one_source_and_an_existing_folder(tr):
    args = node_args(tr, steps=2)
    with pytest.raises(tr["core"].TrainingError, match="exactly one source.*neither"):
        tr["node"].execute(**args)
    with pytest.raises(tr["core"].TrainingError, match="no such folder named 'no_such_clips'"):
        tr["node"].execute(**args, folder="no_such_clips")


def test_the_real_vae_decoders_temporal_layers_learn_with_the_patch_discriminator(tr, pack_module):
    """ComfyUI's own KL decoder (tiny, random) frozen; fresh temporal layers fitted to the output of
    other (random) temporal layers, with the 3D-conv discriminator on."""
    core = pack_module("videoldm_core.temporal_decoder")
    objective = pack_module("videoldm_core.training.decoder_objective")
    disc = pack_module("videoldm_core.training.discriminator")
    own = tr["vae"].first_stage_model.decoder
    own_state = ({p.dtype for p in own.parameters()}, {p.requires_grad for p in own.parameters()}, own.training)
    decoder = tr["host"].trainable_decoder(tr["vae"])
    assert decoder is not own and (   # the user's VAE keeps its decoder as it was
        {p.dtype for p in own.parameters()}, {p.requires_grad for p in own.parameters()}, own.training) == own_state
    frozen_before = {k: v.clone() for k, v in decoder.state_dict().items()}
    spec = core.spec_for_decoder(decoder)
    torch.manual_seed(0)
    teacher = core.TemporalDecoder(spec)
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.05)
    z = torch.randn(FRAMES, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = teacher.decode(decoder, z, FRAMES).clamp(-1, 1)
    items = [{"latents": z, "frames": target}] * 2
    student = core.TemporalDecoder(spec)
    phases = objective.decoder_phases(decoder, student, disc.PatchDiscriminator3D(3, width=8, layers=2), disc_start=5,
                                      adversarial_weight=0.05)
    trainer = tr["trainer"].Trainer(phases, tr["trainer"].TrainConfig(steps=15, lr=3e-3), tr["batches"].StepBatches(items, 1))
    trainer.run()
    rec = [r["decoder/rec"] for r in trainer.history]
    assert rec[-1] < 0.7 * rec[0], rec
    assert trainer.history[-1]["discriminator/d_loss"] > 0
    assert all(torch.equal(v, frozen_before[k]) for k, v in decoder.state_dict().items())


@pytest.mark.parametrize("where", ["between steps", "inside a step"])
def test_interrupting_the_node_keeps_what_was_learned(tr, pack_module, where):
    """Cancel after the second step: the adapter learned so far is saved, then the prompt stops. On a
    server the Cancel lands inside a step: the progress hook (main.py's) and core's layers raise it
    there, out of the trainer, which once lost the whole run."""
    import comfy.model_management as mm
    import comfy.utils
    import folder_paths

    steps_seen = []

    def hook(value, total, preview, node_id=None):
        mm.throw_exception_if_processing_interrupted()   # as the server's progress hook does
        steps_seen.append(value)
        if value == 2 and where == "between steps":
            mm.interrupt_current_processing(True)

    def cancel_in_the_third_forward(module, args):
        if len(steps_seen) == 2:
            mm.interrupt_current_processing(True)
            mm.throw_exception_if_processing_interrupted()   # as comfy.ops' run_every_op does

    comfy.utils.set_progress_bar_global_hook(hook)
    hooked = tr["model"].model.diffusion_model.register_forward_pre_hook(cancel_in_the_third_forward) \
        if where == "inside a step" else None
    name = f"test_trained/interrupted_{where.replace(' ', '_')}"
    try:
        with torch.inference_mode(), pytest.raises(mm.InterruptProcessingException):
            tr["node"].execute(**node_args(tr, steps=50), images=shapes_video(tr, frames=8), save_name=name)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
        if hooked is not None:
            hooked.remove()
    assert max(steps_seen) == 2, "training went on after the interrupt"
    path = folder_paths.get_full_path_or_raise("temporal_adapters", f"{name}.safetensors")
    saved = pack_module("host.temporal_adapter").load_temporal_adapter(path, "interrupted")
    fresh = tr["patch"].fresh_adapter_for_model(tr["model"])[1].state_dict()
    assert any(not torch.equal(v.float(), fresh[k]) for k, v in saved.patcher.model.state_dict().items() if "out_layers.3" in k)


@pytest.mark.parametrize("schedule", ["model", "ANIMATEDIFF_SCHEDULE", "ANIMATELCM_SCHEDULE"])
def test_temporal_adapters_applied_to_the_model_are_ignored_by_the_node(tr, pack_module, schedule):
    """The `model` input's documented contract: an adapter applied to it (its layers, its wrappers
    and the noise schedule it chose) plays no part; the run equals one on the bare MODEL."""
    schedules = pack_module("videoldm_core.noise_schedule")
    label = schedule if schedule == "model" else getattr(schedules, schedule).label
    spec, module = tr["patch"].fresh_adapter_for_model(tr["model"])
    torch.manual_seed(3)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.2)   # an adapter that changes the output a lot
    patcher = tr["patch"].build_adapter_patcher(spec, module.state_dict(), source="applied")
    applied = tr["patch"].apply_adapter(tr["model"], patcher, "applied", noise_schedule=label)
    sampling_before = applied.get_model_object("model_sampling")
    images = shapes_video(tr, frames=8)
    runs = []
    for model in (tr["model"], applied):
        with torch.inference_mode():
            adapter, curve = tr["node"].execute(**dict(node_args(tr, steps=3), model=model), images=images).result
        runs.append((adapter.spec, adapter.patcher.model.state_dict(), curve))
    (spec_bare, bare, curve_bare), (spec_applied, trained, curve_applied) = runs
    assert spec_applied.noise_schedule == spec_bare.noise_schedule
    assert torch.equal(curve_applied, curve_bare), "the applied adapter changed the losses"
    assert all(torch.equal(v, bare[k]) for k, v in trained.items())
    assert [a.name for a in tr["patch"].applied_adapters(applied)] == ["applied"], "the user's MODEL changed"
    assert applied.get_model_object("model_sampling") is sampling_before


def test_a_folder_with_a_bad_clip_is_refused_before_the_unet_is_copied(tr, monkeypatch):
    import folder_paths

    folder = os.path.join(folder_paths.get_input_directory(), "training_bad_clip")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "fake.mp4"), "w") as f:
        f.write("not a video")
    monkeypatch.setattr(tr["run"], "trainable_base", lambda model: pytest.fail("the UNet was copied first"))
    with pytest.raises(tr["core"].TrainingError, match=r"'fake.mp4': unreadable"):
        tr["node"].execute(**node_args(tr, steps=2), folder="training_bad_clip")


@pytest.mark.parametrize("mode, frames, expected", [
    ("interpolation", 8, "clip_frames must be 5, 9, 13, ..., found 8; use 5 or 9"),
    ("prediction", 2, "prediction from up to 2 context frames needs clips longer than that: clip_frames must be at "
                      "least 3, found 2")])
def test_clips_the_mode_cannot_learn_from_are_refused_before_anything_is_encoded(tr, monkeypatch, mode, frames,
                                                                                 expected):
    """A step found them only after every frame was encoded and the UNet copied; validation knows the
    mode's own needs, the node the context frames of the adapter it continues (a linked input)."""
    node = tr["node"]
    if mode == "interpolation":
        assert expected in node.validate_inputs(learning_rate=1e-3, mode=mode, clip_frames=frames)
    else:   # the context frames depend on the adapter: known when the node runs
        assert node.validate_inputs(learning_rate=1e-3, mode=mode, clip_frames=frames) is True
    assert node.validate_inputs(learning_rate=1e-3, mode=mode, clip_frames=9) is True
    assert node.validate_inputs(learning_rate=1e-3, mode=mode, clip_frames=None) is True   # linked
    monkeypatch.setattr(tr["run"], "trainable_base", lambda model: pytest.fail("the UNet was copied first"))
    monkeypatch.setattr(tr["run"], "training_items", lambda *a, **k: pytest.fail("frames were encoded first"))
    with pytest.raises(tr["core"].TrainingError, match=re.escape(expected)):
        node.execute(**node_args(tr, steps=2) | dict(mode=mode, clip_frames=frames), images=shapes_video(tr, 12))


def test_a_finished_run_keeps_neither_its_clips_nor_its_unet_copy_alive(tr):
    """A server trains many times: the UNet copy a run trains beside and the clips it read go with the
    run (a cache on the batches' method held them, and so the copy, for the life of the process)."""
    import gc

    import comfy.model_base
    import folder_paths
    from devtools.synthetic_data import write_dataset

    def alive(cls):
        gc.collect()
        return sum(isinstance(o, cls) for o in gc.get_objects())

    write_dataset(os.path.join(folder_paths.get_input_directory(), "training_lifetime"), 2, seed=3, frames=8,
                  height=SIZE, width=SIZE, fps=30.0)
    models, batches = alive(comfy.model_base.BaseModel), alive(tr["batches"].StepBatches)
    with torch.inference_mode():
        out = tr["node"].execute(**node_args(tr, steps=2), folder="training_lifetime", width=SIZE, height=SIZE)
    assert len(out.result[0].spec.slots) > 0
    del out
    assert alive(tr["batches"].StepBatches) == batches
    assert alive(comfy.model_base.BaseModel) == models


def test_a_folder_whose_clips_changed_trains_again(tr):
    """ComfyUI reuses a node's output for the same inputs: the folder's clips are part of them."""
    import folder_paths
    from devtools.synthetic_data import write_mp4

    folder = os.path.join(folder_paths.get_input_directory(), "training_fingerprint")
    os.makedirs(folder, exist_ok=True)
    clip = tr["synthetic"].moving_shapes_clip(0, 4, 16, 16).frames
    write_mp4(os.path.join(folder, "a.mp4"), clip, 8.0)
    fingerprint = tr["node"].fingerprint_inputs
    first = fingerprint(folder="training_fingerprint")
    assert fingerprint(folder="training_fingerprint") == first   # nothing changed: ComfyUI keeps its result
    write_mp4(os.path.join(folder, "b.mp4"), clip, 8.0)
    second = fingerprint(folder="training_fingerprint")
    assert second != first
    with open(os.path.join(folder, "b.txt"), "w") as f:
        f.write("a square")   # a caption of its own
    assert fingerprint(folder="training_fingerprint") != second
    assert fingerprint(folder="/etc").startswith("refused: ") and fingerprint(folder="") == ""


def test_the_prediction_loss_of_a_batch_is_the_mean_of_its_clips_losses(tr):
    """Clips predict T − S frames for their own S: each clip's loss is its mean over those frames,
    and the batch's the mean over clips, so two ranks holding one clip each average to what one
    process computes for both (a mean over all the batch's frames weighted clips by T − S)."""
    run = setup_training(tr, "prediction", steps=1)
    phase, items = run["phase"], run["items"][:2]

    def loss(clips, seeds):
        batch = tr_batch(clips)
        batch["sample_seeds"] = torch.tensor(seeds)
        with torch.no_grad():
            return phase(batch, torch.Generator().manual_seed(0))

    alone = {seed: loss([items[0]], [seed]) for seed in range(1000, 1012)}
    drawn = {seed: logs["context_frames"] for seed, (_, logs) in alone.items()}
    first = next(iter(drawn))
    second = next(seed for seed in drawn if drawn[seed] != drawn[first])   # clips with different S
    pair, logs = loss([items[0], items[0]], [first, second])
    assert logs["context_frames"] == (drawn[first] + drawn[second]) / 2
    torch.testing.assert_close(pair, (alone[first][0] + alone[second][0]) / 2, atol=1e-5, rtol=1e-5)


def test_pretraining_runs_load_a_bundles_unet_and_vae_from_their_exact_weights(pack_module, tmp_path, monkeypatch):
    """Image pretraining trains the UNet in fp32 and vae mode the VAE, both written back into the
    bundle: loaded in a GPU's default dtypes (fp16 UNet, bf16 VAE) they started from rounded weights."""
    import comfy.model_management as mm
    from devtools import tiny_bundles

    cli, save_bundle = pack_module("host.training_cli"), pack_module("videoldm_core.bundle").save_bundle
    spec = tiny_bundles.tiny_sd1_spec()
    weights = tiny_bundles.random_bundle_state_dict(spec, seed=5)
    save_bundle(tmp_path / "b.safetensors", spec, weights)
    monkeypatch.setattr(mm, "unet_dtype", lambda *a, **k: torch.float16)   # as on a GPU
    monkeypatch.setattr(mm, "vae_dtype", lambda *a, **k: torch.bfloat16)
    model, _, vae = cli.load_checkpoint(str(tmp_path / "b.safetensors"))
    assert model.model.get_dtype() == torch.float16 and vae.vae_dtype == torch.bfloat16   # what the patch makes
    model, _, _ = cli.load_checkpoint(str(tmp_path / "b.safetensors"), "fp32")   # run_image's load
    _, _, vae = cli.load_checkpoint(str(tmp_path / "b.safetensors"), vae_dtype=torch.float32)   # run_vae's load
    unet, autoencoder = model.model.diffusion_model.state_dict(), vae.first_stage_model.state_dict()
    for key, value in weights.items():
        if key.startswith("model.diffusion_model."):
            assert torch.equal(unet[key.removeprefix("model.diffusion_model.")], value), key
        elif key.startswith("first_stage_model.") and key.removeprefix("first_stage_model.") in autoencoder:
            assert torch.equal(autoencoder[key.removeprefix("first_stage_model.")], value), key

    asked = {}

    def load_as_asked(path, precision=None, vae_dtype=None):   # what each run asks for, then stop it
        asked[len(asked)] = (precision, vae_dtype)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_checkpoint", load_as_asked)
    config = {"checkpoint": str(tmp_path / "b.safetensors"), "output": str(tmp_path / "out"), "data": {}}
    for run in (cli.run_image, cli.run_vae):
        with pytest.raises(KeyboardInterrupt):
            run(config, None, None, 1, tmp_path / "out")
    assert asked == {0: ("fp32", None), 1: (None, torch.float32)}


def test_clips_marked_for_caption_dropout_are_conditioned_on_the_empty_prompt(tr, tiny_sd1):
    """Classifier-free guidance's unconditional branch is trained: the rows a phase marks
    ("text_dropped", the CLI's train.text_dropout) get the empty prompt's text, the others keep the
    prompt; a denoiser without the empty prompt refuses the mark."""
    clip = tiny_sd1[1]
    with torch.inference_mode(False), torch.no_grad():
        empty = clip.encode_from_tokens(clip.tokenize("")).float()
        base = tr["host"].trainable_base(tr["model"])
        denoiser = tr["host"].UNetDenoiser(base, None, tr["text"], empty_prompt=(empty, None)).load()
        x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500, 500])
        marked = denoiser(x, t, 2, {"text_dropped": torch.tensor([True, False])})
        given = denoiser(x, t, 2, {"text": torch.cat([empty, tr["text"]]).to(denoiser.device)})
        prompt = denoiser(x, t, 2, {})
        torch.testing.assert_close(marked, given, atol=1e-6, rtol=1e-6)
        assert torch.equal(marked[1], prompt[1]) and not torch.allclose(marked[0], prompt[0], atol=1e-4)
        long = torch.cat([tr["text"], tr["text"]], dim=1).to(denoiser.device)   # two CLIP chunks: the empty one twice
        marked = denoiser(x, t, 2, {"text": long.expand(2, -1, -1), "text_dropped": torch.tensor([True, False])})
        given = denoiser(x, t, 2, {"text": torch.cat([empty.repeat(1, 2, 1).to(long), long])})
        torch.testing.assert_close(marked, given, atol=1e-6, rtol=1e-6)
        without = tr["host"].UNetDenoiser(base, None, tr["text"]).load()
        with pytest.raises(tr["core"].TrainingError, match="caption dropout .* needs the empty prompt's encoding"):
            without(x, t, 2, {"text_dropped": torch.tensor([True, False])})


def test_the_node_drops_captions_to_its_empty_prompt_input(tr, tiny_sd1):
    """Train Temporal Adapter with `empty_prompt` connected trains `text_dropout` of its clips on it:
    at 1.0 the run is the run whose prompt is the empty one (every other draw alike), at 0 the run
    without it; not connected, the prompt alone, whatever text_dropout says."""
    clip = tiny_sd1[1]
    with torch.inference_mode():
        empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    images = shapes_video(tr, frames=8)

    def trained(**inputs):
        args = node_args(tr, steps=2) | dict(batch_size=2) | inputs
        with torch.inference_mode():
            adapter = tr["node"].execute(**args, images=images).result[0]
        return adapter.patcher.model.state_dict()

    def same(a, b):
        return all(torch.allclose(v, b[k], atol=1e-6, rtol=1e-5) for k, v in a.items())

    plain = trained()
    all_dropped = trained(empty_prompt=empty, text_dropout=1.0)
    assert same(all_dropped, trained(positive=empty))
    assert not same(all_dropped, plain)
    assert same(trained(empty_prompt=empty, text_dropout=0.0), plain)
    assert same(trained(text_dropout=1.0), plain)


def test_an_empty_prompt_unlike_the_prompt_is_refused_before_anything_is_built(tr, tiny_sd1, monkeypatch):
    """Another text encoder's empty prompt (other features per token or chunk length) fails the run
    before the adapter is built, the UNet copied or the VAE encodes anything, naming the node's
    inputs; so does one without the pooled vector SDXL reads."""
    built = []
    for name in ("starting_adapter", "trainable_base", "training_items"):
        monkeypatch.setattr(tr["run"], name, lambda *a, name=name, **k: built.append(name))
    images = shapes_video(tr, frames=8)
    for empty, message in (
            ([[torch.zeros(1, 77, 1280), {"pooled_output": torch.zeros(1, 1280)}]],
             r"expected empty_prompt encoded like positive \(64 features per token\), found shape \(1, 77, 1280\)"),
            ([[torch.zeros(1, 154, 64), {}]], r"positive is 77 tokens long, not a multiple of empty_prompt's 154")):
        with pytest.raises(tr["core"].TrainingError, match=message), torch.inference_mode():
            tr["node"].execute(**node_args(tr, steps=1), images=images, empty_prompt=empty)
    assert not built
    sdxl_text = [[torch.zeros(1, 77, 32), {"pooled_output": torch.zeros(1, 32)}]]
    with pytest.raises(tr["core"].TrainingError, match=r"this UNet reads a pooled text vector, and empty_prompt has none"):
        tr["host"].check_empty_prompt(sdxl_model(), tr["run"].prompt_parts(sdxl_text), (torch.zeros(1, 77, 32), None),
                                      tr["run"].NODE_PROMPTS)


def test_the_node_refuses_a_model_that_is_not_an_sd_unet_by_name(tr):
    import comfy.model_patcher
    import comfy.supported_models as sm

    config = sm.Flux(dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=32,
                          context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=1,
                          axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, guidance_embed=False, txt_ids_dims=[]))
    config.set_inference_dtype(torch.float32, None)
    flux = comfy.model_patcher.ModelPatcher(config.get_model({}, device="meta"), "cpu", "cpu")
    with pytest.raises(tr["core"].TrainingError, match=r"expected an SD-family MODEL \(SD1.x, SD2.x, SDXL, "
                                                       r"SD-x4-upscaler\), found Flux"):
        tr["run"].check_model_for_mode(flux, "temporal")


def sdxl_model():
    """A tiny SDXL MODEL on the meta device: its family and pooled-vector input, no weights."""
    import comfy.model_patcher
    import comfy.supported_models as sm
    from devtools import unet_configs

    model_config = sm.SDXL(unet_configs.tiny(unet_configs.SDXL))
    model_config.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(model_config.get_model({}, device="meta"), "cpu", "cpu")


def test_caption_dropout_marks_whole_clips_and_leaves_every_other_draw_as_it_was(tr):
    """Dropout is drawn per clip after the mode's own draws: the noise, timesteps and context frames
    of a clip are those of a run without it, and all frames of a clip are marked alike."""
    torch.manual_seed(0)
    spec, adapter = tr["patch"].fresh_adapter_for_model(tr["model"], context_frames=(0, 1, 2), context_width=16)
    seen = []

    def denoiser(x_t, t, num_videos, conditioning):
        seen.append(dict(conditioning, x_t=x_t, t=t))
        return torch.zeros_like(x_t)

    batch = {"latents": torch.randn(8, FRAMES, 4, 8, 8), "sample_seeds": torch.arange(8) + 50}
    schedule = tr["host"].noise_schedule(tr["model"])
    for rate in (0.0, 0.5):
        tr["objective"].DiffusionPhase(adapter, denoiser, schedule, "prediction", text_dropout=rate)(batch, None)
    without, marked = seen
    assert "text_dropped" not in without
    for key in ("x_t", "t", "c_s"):
        assert torch.equal(without[key], marked[key])
    per_clip = marked["text_dropped"].reshape(8, FRAMES)
    assert (per_clip == per_clip[:, :1]).all() and 0 < per_clip[:, 0].sum() < 8
    with pytest.raises(tr["core"].TrainingError, match=r"text_dropout in \[0, 1\], found 1.5"):
        tr["objective"].DiffusionPhase(adapter, denoiser, schedule, "prediction", text_dropout=1.5)


@pytest.mark.parametrize("node, sampling, settings, problem", [
    ("ModelSamplingDiscrete", "x0", (False,), "the model predicts X0, not ε or v"),
    ("ModelSamplingContinuousEDM", "v_prediction", (120.0, 0.002), "the model samples with ModelSamplingContinuousEDM"),
    ("ModelSamplingDiscrete", "lcm", (False,), "a distilled table of 50 of its timesteps (LCM), not the schedule"),
])
def test_a_model_that_samples_other_than_discrete_eps_or_v_is_not_trained_as_one(tr, node, sampling, settings, problem):
    """Training decides ε or v as sampling does (the most derived parameterisation: X0 is an EPS, EDM a
    V_PREDICTION): x0 was trained as ε, a continuous-EDM model on a motion module's discrete table and
    an LCM-patched one on its 50-entry table as if it were timesteps 0-49; all are refused. A
    discrete v model trains on v."""
    import comfy_extras.nodes_model_advanced as advanced

    users = getattr(advanced, node)().patch(tr["model"], sampling, *settings)[0]
    spec, _ = tr["patch"].fresh_adapter_for_model(tr["model"])
    for given in (None, spec):
        with pytest.raises(tr["core"].TrainingError, match=f"discrete \\(DDPM\\) noise schedule with ε or v prediction; "
                                                            f".*{re.escape(problem)}"):
            tr["host"].noise_schedule(users, given)
    v_model = advanced.ModelSamplingDiscrete().patch(tr["model"], "v_prediction", False)[0]
    assert tr["host"].noise_schedule(v_model).prediction == "v"

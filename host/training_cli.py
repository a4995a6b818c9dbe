"""The training CLI's host side (train.py starts it): a JSON run configuration → a trained adapter.

An example configuration (a real run's values, not the defaults: those follow it):

    {"checkpoint": "sd15.safetensors",            // ComfyUI checkpoint or Video LDM bundle
     "mode": "temporal",                          // vae | image | temporal | prediction | interpolation | upscaler | decoder
     "output": "runs/sd15-temporal",              // checkpoints, loss.csv, adapter.safetensors
     "prompt": "",                                // text for every clip, unless data.captions
     "adapter": {"init": null, "context_frames": [0, 1, 2], "context_width": 64, "regimes": [0, 1],
                 "patch": null},                  // patch: latent crop side for mode upscaler
     "data": {"folder": "clips", "frames": 8, "fps": 8, "width": 512, "height": 320,
              "crop": "random", "on_bad": "stop", "captions": false, "cache": "runs/cache",
              "cache_width": 576, "cache_height": 384, "flip": true},   // latent-space augmentation
     "train": {"steps": 1000, "lr": 1e-4, "batch_size": 1, "warmup": 100, "grad_clip": 1.0,
               "precision": "bf16", "ema_decay": 0.999, "gradient_checkpointing": true,
               "checkpoint_every": 500, "seed": 0,
               "text_dropout": 0.1,               // share of clips trained on the empty prompt (for CFG)
               "sharding": "ddp"},                // under torchrun: "fsdp" splits weights, grads, AdamW and EMA
                                                  // over the ranks (one phase; fp32/bf16); checkpoints are whole
     "monitor": {"tensorboard": false,            // TensorBoard scalars in output/tensorboard (training extra)
                 "validate_every": 0,             // steps; N > 0: a validation video every N steps (needs tensorboard)
                 "validation": {"frames": null, "steps": 10, "cfg": 5.0, "seed": 0}},
     "decoder": {"init": null, "attention": false, "disc_start": 1000, "adversarial_weight": 0.1,
                 "disc_width": 64}}                // mode decoder; attention: temporal attention layers too;
                                                  // adversarial_weight 0: no discriminator;
                                                  // "temporal_weight": 0 (L1 of frame differences)

Defaults of the keys left out (checkpoint, output and data.folder or data.shards are required):
  mode "temporal", prompt "" (the empty prompt), resume true.
  adapter: init none (a fresh adapter for the mode), context_frames [0, 1, 2] for prediction and
    interpolation, context_width 64, regimes [0, 1], patch none, placement "videoldm" (or
    "animatediff") with the placement's settings: kernel_t 3, positional "absolute", merge_strategy
    "learned_with_images", alpha 0.0, text_context true; animatediff: max_len 32, heads 8,
    middle_block true (videoldm_core/placement.py).
  data: frames 8, fps none (each source's own rate), width 256, height 256, crop "center" (or
    "random"), start "first" (or "random"), on_bad "stop", captions false, cache
    <data.folder>/.videoldm_cache (a folder beside the clips), cache_width/cache_height the width and
    height, flip false; streamed shards: shuffle 256 (samples in the shuffle buffer), workers 2.
  train: steps 100, lr 1e-4, batch_size 1, warmup 0, weight_decay 0.01, betas [0.9, 0.999],
    grad_clip 1.0, precision "fp32", ema_decay none (no EMA), gradient_checkpointing false,
    checkpoint_every 0 (only at the end), keep_checkpoints 2, seed 0, text_dropout 0.1, sharding "ddp".
  decoder: as in the example, and disc_layers 3, temporal_weight 0.
  monitor: as in the example; monitor.validation.prompts: [the run's prompt].

data.captions: each clip's caption (captions.json or a sidecar .txt) is encoded once with the
checkpoint's text encoder and cached with the latents. data.cache_width/cache_height (default:
width/height) encode the frames larger; each step then cuts every clip's own width x height window
from its latents (whole latent pixels: margins in multiples of 8 px for SD VAEs) and, with
data.flip, mirrors it half the time (on latents, an approximation of mirroring the pixels); the
same for all frames of a clip, drawn from its per-step seed, so resume and DDP stay exact.

Mode "decoder" trains the VAE decoder's temporal layers and writes temporal_decoder.safetensors (an
add-on for Load Temporal VAE). Mode "image" is the paper's first stage: it pretrains a bundle's own
UNet on single frames (every frame of a clip is an independent sample; an x4 upscaler bundle learns
from random patches with its low-res frames) and writes bundle.safetensors, the input bundle with
the trained UNet, whose spatial weights every other mode then keeps frozen. Settings under "image":
{"text_dropout": 0.1, "patch": null}. Mode "vae" comes before it: it trains a bundle's KL
autoencoder on single frames (L1 + KL) and writes bundle.safetensors with the trained VAE and the
latent scale factor measured on the data (vae_config.scale_factor). Settings under "vae":
{"kl_weight": 1e-6, "patch": null}.

monitor.validate_every: every N steps rank 0 samples one short clip per validation prompt (default:
the run's prompt) with the current adapter weights (EMA when kept), the seed, steps and cfg of
monitor.validation (euler, the run's precision), decodes it with the frozen VAE and logs the clips
side by side as an animated image to TensorBoard (validation/video); the other ranks wait. frames
(default: the clips' length) is the video's length; prediction is given the first frames of the
data's first clips (as many as the adapter's largest context count), interpolation takes their
every 4th frame as keyframes and samples 4k - 3 frames, the upscaler upscales their low-res
frames. Modes vae, image and decoder log no video (they say so). Training goes on exactly as
without it.

A run with checkpoints in `output` resumes from the latest one (set "resume": false to refuse).
Every section is checked before anything loads (videoldm_core.training.run_config): an unknown key
or a value of the wrong type stops the run with the key named.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

import comfy.model_management
import comfy.sd
import comfy.utils

from ..videoldm_core.errors import shown
from ..videoldm_core.importers import read_adapter_file
from ..videoldm_core.temporal_adapter import read_adapter_spec, save_adapter
from ..videoldm_core.bundle import COMPONENT_PREFIXES, BundleFormatError, holds_bundle, read_bundle_spec, save_bundle
from ..videoldm_core.temporal_decoder import TemporalDecoder, TemporalDecoderSpec, read_addon_file, spec_for_decoder
from ..videoldm_core.training.batches import StepBatches
from ..videoldm_core.training.decoder_objective import decoder_phases
from ..videoldm_core.training.discriminator import PatchDiscriminator3D
from ..videoldm_core.training.diffusion_objective import DiffusionPhase, check_mode
from ..videoldm_core.training.modes import TEMPORAL, UPSCALER
from ..videoldm_core.training.autoencoder_objective import AutoencoderPhase, latent_scale
from ..videoldm_core.training.image_objective import ImagePhase
from ..videoldm_core.training.distributed import barrier, init_world, ranks_that_differ
from ..videoldm_core.training.monitor import TensorBoardLog
from ..videoldm_core.training.objective import TrainingError
from ..videoldm_core.training.run_config import DEFAULT_TEXT_DROPOUT, check_run_config
from ..videoldm_core.training.stop_request import StopRequest
from ..videoldm_core.training.trainer import (PRECISIONS, Trainer, TrainConfig, clip_count, latest_checkpoint,
                                              only_run_in)
from ..videoldm_core.weights_file import save_safetensors
from .bundle import load_bundle_file
from .streamed_training import streamed_batches
from .training_data import cached_batches, caption_encoder, data_folder, dataset_items, decoder_items
from .training_model import (UNetDenoiser, augmentation_schedule, noise_schedule, pretrainable_unet, starting_adapter,
                             trainable_base, trainable_decoder, trained_state, training_precision)
from .training_validation import ValidationVideos, validation_note, validation_settings
from .unet_layout import model_family

def load_checkpoint(path: str, precision: str | None = None, vae_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) from a Video LDM bundle or any checkpoint ComfyUI recognises; with a run's
    `precision`, a checkpoint's UNet held in that dtype (fp32 for fp32), not the device's default;
    with `vae_dtype`, a bundle's VAE in it (a GPU's default, bf16, would round the weights a run
    trains and writes back)."""
    dtype = (PRECISIONS[precision] or torch.float32) if precision else None
    if holds_bundle(path):   # checked as the loader node checks it: shapes first, then finite and in range
        return load_bundle_file(path, Path(path).name, unet_dtype=dtype, vae_dtype=vae_dtype)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                                model_options={"dtype": dtype} if dtype else {})
    return model, clip, vae


def starting_adapter_from_config(model, settings: dict, mode: str):
    """The config's "adapter" settings: continue a native adapter file ("init"), or a fresh one."""
    init = settings.get("init")
    if init:
        spec = read_adapter_spec(init)
        if spec is None:
            raise TrainingError(f"'{init}': expected a native Video LDM adapter (with its spec in the metadata).")
        # the spec checked against the file's shapes on the meta device before a weight is read (a spec
        # that states more than the file holds costs its header), each weight then checked to be finite
        spec, weights = read_adapter_file(init, Path(init).name)
        return starting_adapter(model, mode, spec, weights, source=f"'{init}'")
    options = {k: v for k, v in settings.items() if k not in ("init", "patch")}
    return starting_adapter(model, mode, **options)


def encode_prompt(clip, text: str):
    tokens = clip.tokenize(text)
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond.float(), (None if pooled is None else pooled.float())


def read_run_config(path: str) -> dict:
    """The JSON run configuration at `path`, every section checked (videoldm_core.training.run_config)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8-sig"))   # not the locale's (cp1252 on Windows)
    except OSError as e:
        raise TrainingError(f"'{path}': the run configuration cannot be read ({e.strerror or e}).") from None
    except RecursionError:
        raise TrainingError(f"'{path}' is not a run configuration: its JSON is nested too deeply.") from None
    except ValueError as e:   # JSONDecodeError, or an integer of more digits than Python converts
        raise TrainingError(f"'{path}' is not valid JSON: {e}.") from None
    return check_run_config(config)


WRITTEN = {"vae": ("checkpoint", "bundle.safetensors"), "image": ("checkpoint", "bundle.safetensors"),
           "decoder": ("decoder.init", "temporal_decoder.safetensors")}   # other modes: adapter.init, adapter.safetensors


def check_given_file_kept(config: dict):
    """A run never writes over a file it was given (the checkpoint a bundle mode starts from, the adapter
    or decoder it continues): the result goes beside it, in another output folder."""
    key, name = WRITTEN.get(config.get("mode", "temporal"), ("adapter.init", "adapter.safetensors"))
    section, _, field = key.rpartition(".")
    given = (config.get(section, {}) if section else config).get(field)
    written = Path(config["output"]) / name
    if not given:
        return
    same = Path(given).resolve() == written.resolve() or (
        Path(given).exists() and written.exists() and os.path.samefile(given, written))
    if same:
        raise TrainingError(f"'{key}' is {given}, the file this run writes ({written}); the given file is never "
                            "replaced: give the run another 'output' folder (a run resumes from the checkpoints in its "
                            "own output folder by itself).")


# where a rank finds its files: a node may mount them elsewhere; everything else in the configuration is the run
PATH_KEYS = ("checkpoint", "output", "adapter.init", "decoder.init", "data.folder", "data.cache", "data.shards")


def settings_of(config: dict, prefix: str = "") -> dict:
    """The run configuration as dotted keys ("train.lr"), its file paths left out."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(settings_of(value, name + "."))
        elif name not in PATH_KEYS:
            flat[name] = value
    return flat


def check_ranks_agree(world, facts: dict, what: str, advice: str):
    """Refuses, on every rank, a run whose ranks read `facts` differently (`what` they are)."""
    differ = ranks_that_differ(facts, world)
    if differ is not None:
        key, values = differ
        seen = ", ".join(f"rank {rank}: {shown(value)}" for rank, value in enumerate(values))
        raise TrainingError(f"the ranks of this run read different {what}: {key} is {seen}. {advice}")


def run_config(path: str) -> int:
    config = read_run_config(path)   # before anything loads
    check_given_file_kept(config)
    # before models load: each rank picks its own GPU; a run started with --cpu stays on gloo
    world = init_world(gpus=comfy.model_management.cpu_state == comfy.model_management.CPUState.GPU)
    check_ranks_agree(world, settings_of(config), "run configurations",
                      "Start every rank with the same run configuration (each node reads its own copy).")
    with only_run_in(Path(config["output"]), world):   # one run on a folder at a time, from before anything loads
        return train_from_config(config, world)


def train_from_config(config: dict, world) -> int:
    mode = config.get("mode", "temporal")
    train = dict(config.get("train", {}))
    batch_size = train.pop("batch_size", 1)
    checkpointing = train.pop("gradient_checkpointing", False)
    text_dropout = train.pop("text_dropout", DEFAULT_TEXT_DROPOUT)
    train_config = TrainConfig(**train)
    settings = config.get("adapter", {})
    regimes = settings.get("regimes", [0, 1])

    output = Path(config["output"])
    if mode in PRETRAINING_RUNS:   # the modes that train something other than temporal layers of a UNet
        return PRETRAINING_RUNS[mode](config, world, train_config, batch_size, output)
    model, clip, vae = load_checkpoint(config["checkpoint"], train_config.precision)
    torch.manual_seed(train_config.seed)   # a fresh adapter's initial weights, the same on every rank and run
    spec, adapter = starting_adapter_from_config(model, settings, mode)
    check_mode(spec, mode, regimes)   # before any data is read
    base = trainable_base(model)
    train_config = dataclasses.replace(train_config, precision=training_precision(train_config.precision, base))
    schedule = noise_schedule(base, spec)   # a model sampled other than DDPM ε or v is refused before the data is encoded
    text, pooled = encode_prompt(clip, config.get("prompt", ""))
    captions = caption_encoder(clip, base) if config["data"].get("captions") else None
    if "shards" in config["data"]:
        batches = streamed_batches(base, vae, config["data"], mode, train_config.seed, batch_size, regimes, captions,
                                   allow_pipe=True)   # the operator's own config
    else:
        batches = cached_batches(dataset_items(base, vae, config["data"], mode, train_config.seed, world, regimes,
                                               captions), config["data"], batch_size, train_config.seed, world)
    denoiser = UNetDenoiser(base, adapter, text, pooled, gradient_checkpointing=checkpointing,
                            precision=train_config.precision, empty_prompt=encode_prompt(clip, "")).load()
    augment, max_level = augmentation_schedule(base)
    phase = DiffusionPhase(adapter, denoiser, schedule, mode, regimes=regimes,
                           augment_schedule=augment, max_noise_level=max_level, patch=settings.get("patch"),
                           text_dropout=text_dropout)

    def write(trainer):
        save_adapter(output / "adapter.safetensors", trained_state(adapter, trainer), spec)
        print(f"wrote {output / 'adapter.safetensors'}", flush=True)

    validation = validation_settings(config)
    if validation is not None:
        validation = ValidationVideos(base, clip, vae, adapter, spec, mode, batches, validation, train_config.precision,
                                      restore=denoiser.load, fps=config["data"].get("fps"))
    return train_and_write(config, world, train_config, batches, output, [phase], {"spec": spec, "mode": mode},
                           denoiser.device, "adapter/loss", write, validation)


def train_and_write(config, world, train_config, batches, output: Path, phases, identity: dict, device,
                    loss_key: str, write, validate=None) -> int:
    """What every mode shares: a Trainer over `batches` (StepBatches of cached or in-memory items, or
    StreamedBatches; its checkpoints keyed by `identity` and the global batch), resumed and fitted;
    `write(trainer)` on rank 0; then every rank waits for it. `validate`: the validation video (host/training_validation.py)."""
    identity = {k: json.loads(v.to_json()) if hasattr(v, "to_json") else str(v) for k, v in identity.items()}
    identity["global_batch"] = batches.batch_size * world.size
    check_ranks_agree(world, {"identity": identity, "clips": clip_count(batches)}, "training setups",
                      "Every rank must start from the same adapter and read the same data folder.")
    trainer = Trainer(phases, train_config, batches, output_dir=output, identity=identity, device=device, world=world)
    stop = fit(trainer, config, train_config, world, output, loss_key, validate)
    if stop.ranks:   # the checkpoint of the last step is written; the outputs are a finished run's
        if world.is_main:
            again = "run the same command to resume" if config.get("resume", True) is not False else \
                "set \"resume\": true (or leave it out) and run again to resume"
            print(f"stopped by SIGTERM (rank(s) {', '.join(map(str, stop.ranks))}) after step {trainer.step} of "
                  f"{train_config.steps}: {trainer.checkpoint_dir().name} holds it; {again}.", flush=True)
        return stop.exit_code
    with trainer.gathered():   # train.sharding "fsdp": every rank helps gather the whole weights rank 0 writes
        if world.is_main:
            write(trainer)
    barrier(world)
    return 0


def fit(trainer, config, train_config, world, output: Path, loss_key: str, validate=None) -> StopRequest:
    """Resume from the latest checkpoint in `output` (unless "resume": false), then train with progress lines
    and, every monitor.validate_every steps, `validate`'s video logged by rank 0 while the others wait;
    until a SIGTERM to any rank stops every rank after the same step (the StopRequest returned says
    which ranks were asked). Before training starts, a SIGTERM ends the process as it always did."""
    resume = latest_checkpoint(output) if output.exists() else None
    check_ranks_agree(world, {"latest checkpoint": resume and resume.name}, "output folders",
                      f"'{output}' must be one folder every rank sees alike (a shared filesystem): rank 0 writes the "
                      "checkpoints and every rank resumes from them.")
    if resume is not None:
        if config.get("resume", True) is False:
            raise TrainingError(f"'{output}' already holds checkpoints ({resume.name}) and resume is false; "
                                "choose another output folder.")
        trainer.load_checkpoint(resume)
        print(f"resumed from {resume} (step {trainer.step})", flush=True)
    every = max(1, train_config.steps // 20)

    stop = StopRequest(world)
    stream = trainer.sample_batch if hasattr(trainer.sample_batch, "skipped_total") else None
    board = TensorBoardLog(output / "tensorboard") if config.get("monitor", {}).get("tensorboard") and world.is_main else None
    validate_every = config.get("monitor", {}).get("validate_every", 0) if validate is not None else 0
    if config.get("monitor", {}).get("validate_every") and validate is None and world.is_main:
        print(validation_note(config.get("mode", "temporal")), flush=True)

    def report(row):
        if board is not None:
            board.step(row, trainer.sample_batch.batch_size * world.size, stream.wait_seconds if stream else None)
        if world.is_main and (row["step"] % every == 0 or row["step"] == 1):
            streamed = "" if stream is None else \
                f", data wait {stream.wait_seconds:.1f} s in all, {stream.skipped_total} broken clip(s) skipped"
            print(f"step {row['step']}/{train_config.steps} loss {row[loss_key]:.5f} ({row['seconds']:.2f} s{streamed})",
                  flush=True)
        if validate_every and row["step"] % validate_every == 0 and not stop():   # no video in a stop's grace
            with trainer.gathered():   # FSDP: every rank helps gather the weights rank 0 samples with
                if board is not None:
                    started = time.perf_counter()
                    videos = validate(trainer)
                    board.video("validation/video", videos, row["step"], validate.video_fps)
                    print(f"step {row['step']}: validation video, {videos.shape[0]} clip(s) of {videos.shape[1]} "
                          f"frames ({time.perf_counter() - started:.1f} s)", flush=True)
            barrier(world)

    first_clip = getattr(trainer.sample_batch, "wait_for_first_clip", None)
    if first_clip is not None and trainer.step < train_config.steps:
        first_clip()     # streamed: a resumed stream reads its pass through to its position first, on every rank;
        barrier(world)   # the ranks meet here (waits of hours), so no step's collective (30 min) waits on it
    try:
        with stop:
            trainer.run(should_stop=stop, on_step=report)
    finally:
        if board is not None:
            board.close()
    return stop


def run_decoder(config, world, train_config, batch_size: int, output: Path) -> int:
    """Mode "decoder": the VAE decoder's temporal layers (paper §3.2) with a 3D-conv patch
    discriminator; the encoder and the image decoder stay frozen. Writes temporal_decoder.safetensors,
    an add-on for Load Temporal VAE."""
    import comfy.model_management as mm

    settings = config.get("decoder", {})
    _, _, vae = load_checkpoint(config["checkpoint"])
    device = mm.get_torch_device()
    image_decoder = trainable_decoder(vae).to(device)
    torch.manual_seed(train_config.seed)
    init = settings.get("init")
    if init:
        spec, weights = read_addon_file(init, init)   # the operator's own path: named as given
        temporal = TemporalDecoder(spec).load_weights(weights, f"'{init}'")
    else:
        spec = spec_for_decoder(image_decoder, attention=settings.get("attention", False),
                                description="trained by the Video LDM pack")
        temporal = TemporalDecoder(spec)
    adversarial_weight = settings.get("adversarial_weight", 0.1)
    discriminator = None   # weight 0: reconstruction only, no discriminator to train
    if adversarial_weight > 0:
        discriminator = PatchDiscriminator3D(in_channels=spec.out_channels, width=settings.get("disc_width", 64),
                                             layers=settings.get("disc_layers", 3)).to(device)
    phases = decoder_phases(image_decoder, temporal.to(device), discriminator,
                            disc_start=settings.get("disc_start", 1000), adversarial_weight=adversarial_weight,
                            temporal_weight=settings.get("temporal_weight", 0.0))
    data = config["data"]
    items = decoder_items(vae, data_folder(data, train_config.seed, data.get("fps")))

    def write(trainer):
        state = trained_state(temporal, trainer, phase="decoder", attribute="temporal_decoder")
        save_safetensors(output / "temporal_decoder.safetensors", {k: v.contiguous() for k, v in state.items()},
                         {TemporalDecoderSpec.METADATA_KEY: spec.to_json()})
        print(f"wrote {output / 'temporal_decoder.safetensors'}", flush=True)

    return train_and_write(config, world, train_config, StepBatches(items, batch_size, seed=train_config.seed), output,
                           phases, {"decoder_spec": spec, "mode": "decoder"}, device, "decoder/rec", write)


def bundle_to_train(config, mode: str):
    try:
        return read_bundle_spec(config["checkpoint"])
    except BundleFormatError as e:
        raise TrainingError(f"mode '{mode}' pretrains a Video LDM bundle and writes one back; {e}") from None


def write_bundle(config, output: Path, spec, component: str, trained: dict):
    """The input bundle with one component's weights replaced, as output/bundle.safetensors."""
    state = comfy.utils.load_torch_file(config["checkpoint"], safe_load=True)
    prefix = COMPONENT_PREFIXES[component]
    for key, value in trained.items():
        state[prefix + key] = value.to(state[prefix + key].dtype)
    save_bundle(output / "bundle.safetensors", spec, state)
    print(f"wrote {output / 'bundle.safetensors'}", flush=True)


def run_vae(config, world, train_config, batch_size: int, output: Path) -> int:
    """Mode "vae": train a bundle's KL autoencoder on single frames and write bundle.safetensors with
    the trained (EMA) VAE and its measured latent scale factor."""
    import dataclasses

    import comfy.model_management as mm

    spec = bundle_to_train(config, "vae")
    settings = config.get("vae", {})
    _, _, vae = load_checkpoint(config["checkpoint"], vae_dtype=torch.float32)   # trained and written back exactly
    device = mm.get_torch_device()
    with torch.inference_mode(False):
        autoencoder = copy.deepcopy(vae.first_stage_model).float().requires_grad_(True).to(device)
    data = config["data"]
    dataset = data_folder(data, train_config.seed, data.get("fps"))
    items = [{"frames": dataset[i]["frames"]} for i in range(len(dataset))]
    phase = AutoencoderPhase(autoencoder, kl_weight=settings.get("kl_weight", 1e-6), patch=settings.get("patch"))

    def write(trainer):
        trained = trained_state(autoencoder, trainer, phase="autoencoder", attribute="autoencoder")
        autoencoder.load_state_dict(trained)
        scale = latent_scale(autoencoder, (item["frames"].to(device) for item in items))   # clip by clip
        measured = dataclasses.replace(spec, vae_config={**spec.vae_config, "scale_factor": round(scale, 5)})
        write_bundle(config, output, measured, "vae", trained)
        print(f"latent scale factor {scale:.5f}", flush=True)

    return train_and_write(config, world, train_config, StepBatches(items, batch_size, seed=train_config.seed), output,
                           [phase], {"bundle": spec, "mode": "vae"}, device, "autoencoder/loss", write)


def run_image(config, world, train_config, batch_size: int, output: Path) -> int:
    """Mode "image": pretrain a bundle's UNet on single frames (the paper's first stage) and write
    bundle.safetensors, the same bundle with the trained (EMA) UNet."""
    spec = bundle_to_train(config, "image")
    settings = config.get("image", {})
    model, clip, vae = load_checkpoint(config["checkpoint"], "fp32")   # the UNet is trained in fp32 from its exact weights
    upscaler = model_family(model).concat_image
    model = pretrainable_unet(model)
    schedule = noise_schedule(model)   # refused before the data is encoded
    text, pooled = encode_prompt(clip, config.get("prompt", ""))
    captions = caption_encoder(clip, model) if config["data"].get("captions") else None
    data_mode = UPSCALER if upscaler else TEMPORAL   # how clips are encoded: with low-res frames or not
    items = dataset_items(model, vae, config["data"], data_mode, train_config.seed, world, (0,), captions)
    denoiser = UNetDenoiser(model, None, text, pooled, precision=train_config.precision,   # an fp32 copy
                            empty_prompt=encode_prompt(clip, "")).load()
    augment, max_level = augmentation_schedule(model)
    unet = model.model.diffusion_model
    phase = ImagePhase(unet, denoiser, schedule, text_dropout=settings.get("text_dropout", DEFAULT_TEXT_DROPOUT),
                       augment_schedule=augment, max_noise_level=max_level, patch=settings.get("patch"))

    def write(trainer):
        write_bundle(config, output, spec, "unet", trained_state(unet, trainer, phase="unet", attribute="unet"))

    batches = cached_batches(items, config["data"], batch_size, train_config.seed, world)
    return train_and_write(config, world, train_config, batches, output, [phase], {"bundle": spec, "mode": "image"},
                           denoiser.device, "unet/loss", write)


PRETRAINING_RUNS = {"decoder": run_decoder, "image": run_image, "vae": run_vae}

"""train.py, the training CLI, as a user runs it: one process, and two under torchrun (gloo DDP). The
demo bundle and clips (`setup`) are made once for the session (tests/host/conftest.py)."""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from devtools.paths import REPO_ROOT, comfyui_dir


def config(setup, output, **train):
    return {"checkpoint": str(setup / "base" / "models" / "checkpoints" / "videoldm_demo_tiny.safetensors"),
            "mode": "temporal", "output": str(output), "prompt": "shapes",
            "data": {"folder": str(setup / "clips"), "frames": 4, "fps": 15, "width": 64, "height": 64,
                     "cache": str(setup / "cache")},
            "train": {"steps": 3, "lr": 1e-3, "batch_size": 2, "seed": 1, **train}}


def run_cli(setup, cfg, name, processes=1, **env):
    path = setup / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir()), "OMP_NUM_THREADS": "1", **env}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else [sys.executable]
    return subprocess.run([*launcher, str(REPO_ROOT / "train.py"), "--config", str(path)], env=env, capture_output=True,
                          text=True, timeout=900)


def test_two_gloo_processes_update_the_weights_like_one_process_at_the_same_global_batch(setup):
    one = run_cli(setup, config(setup, setup / "one"), "one")
    assert one.returncode == 0, one.stderr[-3000:]
    cfg = config(setup, setup / "two", batch_size=1)
    two = run_cli(setup, cfg, "two", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(str(setup / "one" / "adapter.safetensors")), load_file(str(setup / "two" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    # the same global batch (2 clips) and per-clip seeds: the runs differ only by float summation order
    # (DDP averages two per-clip gradients, one process takes the mean of a batch of two)
    logs = [(setup / run / "loss.csv").read_text().splitlines()[1:] for run in ("one", "two")]
    for row_one, row_two in zip(*logs):
        step_one, step_two = [dict(zip(("step", "lr", "grad_norm", "loss"), map(float, r.split(",")[:4]))) for r in (row_one, row_two)]
        assert step_one["loss"] == pytest.approx(step_two["loss"], abs=1e-6)
        # the first step's gradients are the same to rounding; after it, Adam has moved the weights whose
        # gradient is ~0 by up to lr in directions set by rounding noise (see below), which the next
        # gradients' norm feels (0.12% at step 3 when the temporal cross-attention's kernel changed shape)
        assert step_one["grad_norm"] == pytest.approx(step_two["grad_norm"], rel=1e-5 if step_one["step"] == 1 else 1e-2)
    # Adam divides by √v, so weights whose gradient is ~0 move by up to lr in a direction set by
    # rounding noise; all others must agree. lr 1e-3 x 3 steps bounds any update by 3e-3. (Measured:
    # 0.8% of the weights differ by more than 1e-5, 1.2% when the temporal cross-attention became one
    # kernel call per video; none by 1e-3.)
    changed = max(a[k].abs().max().item() for k in a if "out_layers.3" in k)
    assert changed > 1e-4, "training changed nothing"
    differ = sum(((a[k] - b[k]).abs() > 1e-5).sum().item() for k in a)
    assert differ < 0.02 * sum(v.numel() for v in a.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3
    assert "step 3/3" in one.stdout and "step 3/3" in two.stdout


def test_a_rerun_resumes_from_the_latest_checkpoint(setup):
    out = setup / "resume"
    first = run_cli(setup, config(setup, out, steps=2, text_dropout=1.0), "first")   # every clip on the empty prompt
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli(setup, config(setup, out, steps=4, text_dropout=1.0), "second")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "(step 2)" in second.stdout
    rows = (out / "loss.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    dropped = rows[0].split(",").index("adapter/text_dropped")   # train.text_dropout reached the phase
    assert [float(r.split(",")[dropped]) for r in rows[1:]] == [1.0] * 4


def test_an_empty_data_folder_stops_before_training_and_names_it(setup, tmp_path):
    cfg = config(setup, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    cfg["data"]["folder"] = str(tmp_path / "empty")
    run = run_cli(setup, cfg, "empty")
    assert run.returncode != 0
    assert "empty" in run.stderr and "TrainingError" in run.stderr
    assert not (tmp_path / "out" / "loss.csv").exists()


def test_a_malformed_config_stops_before_anything_loads_and_names_the_key(setup, tmp_path):
    cfg = config(setup, tmp_path / "out")
    cfg["data"]["fps"] = "15"
    cfg["checkpoint"] = str(tmp_path / "not_read.safetensors")   # would fail later, when models load
    run = run_cli(setup, cfg, "malformed")
    assert run.returncode != 0
    assert "'data.fps' must be a finite number or null, found '15'" in run.stderr
    assert "not_read" not in run.stderr


def test_captions_are_encoded_once_with_the_checkpoints_text_encoder(setup, tmp_path):
    cfg = config(setup, tmp_path / "out", steps=1)
    cfg["data"].update(captions=True, cache=str(tmp_path / "cache"))
    run = run_cli(setup, cfg, "captions")
    assert run.returncode == 0, run.stderr[-3000:]
    [index] = list((tmp_path / "cache").rglob("index.json"))
    shapes = json.loads(index.read_text())["shapes"]
    assert "text" in shapes and shapes["text"][0] == 77   # one CLIP context per clip


def test_decoder_mode_writes_an_add_on_that_load_temporal_vae_reads(setup, tmp_path, pack_module):
    cfg = config(setup, tmp_path / "out", steps=3, batch_size=1)
    cfg.update(mode="decoder", decoder={"disc_start": 1, "disc_width": 16, "disc_layers": 2})
    run = run_cli(setup, cfg, "decoder")
    assert run.returncode == 0, run.stderr[-3000:]
    header = (tmp_path / "out" / "loss.csv").read_text().splitlines()[0]
    assert "decoder/rec" in header and "discriminator/d_loss" in header and "decoder/g_adv" in header
    import comfy.utils
    vae_sd = comfy.utils.load_torch_file(cfg["checkpoint"], safe_load=True)   # load_temporal_vae takes first_stage_model.*
    weights, metadata = comfy.utils.load_torch_file(str(tmp_path / "out" / "temporal_decoder.safetensors"),
                                                    safe_load=True, return_metadata=True)
    temporal_vae = pack_module("host.temporal_decoder")
    core = pack_module("videoldm_core.temporal_decoder")
    spec = core.TemporalDecoderSpec.from_json(metadata[core.TEMPORAL_DECODER_METADATA_KEY])
    fresh = core.TemporalDecoder(spec).state_dict()
    assert any(not torch.equal(weights[k], fresh[k]) for k in fresh), "training changed nothing"
    vae = temporal_vae.load_temporal_vae(vae_sd, "trained", addon=(spec, weights))
    assert getattr(vae, temporal_vae.TEMPORAL_DECODER_ATTR) is not None


@pytest.mark.parametrize("bundle", ["videoldm_demo_tiny.safetensors", "videoldm_demo_x4.safetensors"])
def test_image_mode_pretrains_a_bundles_unet_and_writes_the_bundle_back(setup, bundle):
    """The paper's first stage: the UNet learns single frames (the x4 upscaler on patches with its
    low-res frames); text encoder and VAE are written back untouched."""
    out = setup / f"image-{bundle.split('_')[2].split('.')[0]}"
    cfg = config(setup, out, steps=30, lr=2e-3, batch_size=2)
    cfg.update(mode="image", checkpoint=str(setup / "base" / "models" / "checkpoints" / bundle), image={"patch": 8})
    run = run_cli(setup, cfg, out.name)
    assert run.returncode == 0, run.stderr[-3000:]
    losses = [float(r.split(",")[3]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    print(f"{bundle}: loss {sum(losses[:5]) / 5:.4f} -> {sum(losses[-5:]) / 5:.4f}")
    assert sum(losses[-5:]) < 0.9 * sum(losses[:5])
    before, after = load_file(cfg["checkpoint"]), load_file(str(out / "bundle.safetensors"))
    assert before.keys() == after.keys()
    unet = [k for k in before if k.startswith("model.diffusion_model.")]
    assert sum(not torch.equal(before[k], after[k]) for k in unet) > 0.9 * len(unet)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("model.diffusion_model."))
    from videoldm_core.bundle import read_bundle_spec
    assert read_bundle_spec(out / "bundle.safetensors") == read_bundle_spec(cfg["checkpoint"])


def test_image_mode_refuses_a_checkpoint_that_is_not_a_bundle(setup, tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    cfg = config(setup, tmp_path / "out")
    cfg.update(mode="image", checkpoint=str(plain))
    run = run_cli(setup, cfg, "not-bundle")
    assert run.returncode != 0 and "mode 'image' pretrains a Video LDM bundle" in run.stderr
    given = tmp_path / "out" / "bundle.safetensors"   # the stage before wrote into the same output folder
    given.parent.mkdir(exist_ok=True)   # the run above took the folder's lock before it loaded anything
    given.write_bytes(plain.read_bytes())
    cfg.update(checkpoint=str(tmp_path / "out" / "." / "bundle.safetensors"))
    run = run_cli(setup, cfg, "same-file")
    assert run.returncode != 0 and "the file this run writes" in run.stderr and "never replaced" in run.stderr
    assert given.read_bytes() == plain.read_bytes()
    continued = config(setup, tmp_path / "out")   # an adapter continued into the folder it came from
    continued["adapter"] = {"init": str(tmp_path / "out" / "adapter.safetensors")}
    run = run_cli(setup, continued, "same-adapter")
    assert run.returncode != 0 and "'adapter.init' is" in run.stderr and "the file this run writes" in run.stderr


def test_vae_mode_trains_a_bundles_autoencoder_and_records_its_latent_scale(setup):
    out = setup / "vae"
    cfg = config(setup, out, steps=30, lr=2e-3, batch_size=2)
    cfg.update(mode="vae", vae={"patch": 32})
    run = run_cli(setup, cfg, out.name)
    assert run.returncode == 0, run.stderr[-3000:]
    header, *rows = (out / "loss.csv").read_text().splitlines()
    rec = [float(dict(zip(header.split(","), r.split(",")))["autoencoder/rec"]) for r in rows]
    print(f"rec {sum(rec[:5]) / 5:.4f} -> {sum(rec[-5:]) / 5:.4f}")
    assert sum(rec[-5:]) < 0.8 * sum(rec[:5])
    before, after = load_file(cfg["checkpoint"]), load_file(str(out / "bundle.safetensors"))
    vae = [k for k in before if k.startswith("first_stage_model.")]
    assert sum(not torch.equal(before[k], after[k]) for k in vae) > 0.9 * len(vae)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("first_stage_model."))
    from videoldm_core.bundle import read_bundle_spec
    scale = read_bundle_spec(out / "bundle.safetensors").latent_scale_factor
    assert scale is not None and scale > 0 and f"latent scale factor {scale:.5f}" in run.stdout


def loss_rows(output):
    return [r.split(",")[:4] for r in (output / "loss.csv").read_text().splitlines()[1:]]


def test_streamed_shards_train_as_the_folder_path_does_on_the_same_clip(setup, tmp_path):
    """One clip, no shuffling, centre crops: the streamed path (decoded in a worker, encoded on the
    training device per step) and the pre-encoded folder path see the same latents, seeds and losses.
    The worker is started by 'spawn', as on macOS and Windows: it imports train.py afresh and unpickles
    the pack's clip reader (it failed with "No module named 'videoldm_pack'")."""
    from devtools.synthetic_data import write_dataset
    from videoldm_core.training.shards import write_shards

    write_dataset(tmp_path / "one", 1, seed=7, frames=12, height=64, width=64, fps=30.0)
    write_shards(tmp_path / "one", str(tmp_path / "shards" / "one-%03d.tar"))
    folder = config(setup, tmp_path / "folder", steps=2)
    folder["data"].update(folder=str(tmp_path / "one"), cache=str(tmp_path / "cache"))
    streamed = config(setup, tmp_path / "streamed", steps=2)
    del streamed["data"]["folder"], streamed["data"]["cache"]
    streamed["data"].update(shards=str(tmp_path / "shards" / "one-000.tar"), shuffle=0, workers=1)
    spawn = tmp_path / "spawn"   # every process of the run starts its workers as macOS and Windows do
    spawn.mkdir()
    (spawn / "sitecustomize.py").write_text("import multiprocessing\nmultiprocessing.set_start_method('spawn', force=True)\n")
    for name, cfg, env in (("folder", folder, {}), ("streamed", streamed, {"PYTHONPATH": os.pathsep.join(filter(None, (str(spawn), os.environ.get("PYTHONPATH"))))})):
        run = run_cli(setup, cfg, name, **env)
        assert run.returncode == 0, run.stderr[-3000:]
    assert "0 broken clip(s) skipped" in run.stdout
    a, b = loss_rows(tmp_path / "folder"), loss_rows(tmp_path / "streamed")
    assert len(a) == len(b) == 2
    for row_a, row_b in zip(a, b):
        assert float(row_a[3]) == pytest.approx(float(row_b[3]), rel=1e-6, abs=1e-9)


def test_a_streamed_run_resumes_from_its_checkpoints_stream_position(setup, tmp_path):
    from videoldm_core.training.shards import write_shards

    write_shards(setup / "clips", str(tmp_path / "shards" / "c-%03d.tar"), clips_per_shard=1)
    cfg = config(setup, tmp_path / "out", steps=2, batch_size=1, checkpoint_every=1)
    del cfg["data"]["folder"], cfg["data"]["cache"]
    cfg["data"].update(shards=str(tmp_path / "shards" / "c-{000..003}.tar"), workers=2, crop="random")
    cfg["monitor"] = {"tensorboard": True}
    first = run_cli(setup, cfg, "stream-first")
    assert first.returncode == 0, first.stderr[-3000:]
    assert list((tmp_path / "out" / "tensorboard").glob("events.out.tfevents.*"))
    [checkpoint] = sorted((tmp_path / "out").glob("checkpoint-0000002"))
    [state] = json.loads((checkpoint / "data.json").read_text())
    assert state["step"] == 2 and state["workers"] == 2 and state["ranks"] == 1
    cfg["train"]["steps"] = 3
    again = run_cli(setup, cfg, "stream-again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "(step 2)" in again.stdout
    assert [r[0] for r in loss_rows(tmp_path / "out")] == ["1", "2", "3"]



def started_until_step_one(command, env):
    """`command` started with its output read as it comes, once it has printed its first step's line."""
    import threading

    job = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(job.stdout), daemon=True).start()
    deadline = time.monotonic() + 600
    while not any(re.match(r"step 1/\d+ ", line) for line in lines) and job.poll() is None:
        if time.monotonic() > deadline:
            job.kill()
            raise AssertionError("".join(lines)[-3000:])
        time.sleep(0.2)
    return job, lines


def stopped_step(lines, ranks: str, steps: int) -> int:
    out = "".join(lines)
    stopped = re.search(rf"stopped by SIGTERM \(rank\(s\) {ranks}\) after step (\d+) of {steps}: checkpoint-(\d+) "
                        r"holds it; run the same command to resume\.", out)
    assert stopped, out[-3000:]
    step = int(stopped.group(1))
    assert 1 <= step < steps and int(stopped.group(2)) == step
    return step


def test_a_sigterm_to_every_process_of_the_job_stops_both_ranks_after_one_step_with_a_checkpoint_that_resumes(
        setup, tmp_path):
    """What Slurm does before preempting a job or at its time limit: SIGTERM to every process of it,
    here the torchrun launcher, both ranks and their streamed-data workers; the launcher passes it on
    to each rank's process group. The ranks stop after the same step, write its checkpoint and exit,
    no adapter written; the same command resumes there. (A worker that ended on the signal failed its
    rank at the next read; a rank's second signal is the launcher's.)"""
    import signal

    import psutil

    from videoldm_core.training.shards import write_shards

    write_shards(setup / "clips", str(tmp_path / "shards" / "c-%03d.tar"), clips_per_shard=1)
    cfg = config(setup, tmp_path / "out", steps=400, batch_size=1)
    del cfg["data"]["folder"], cfg["data"]["cache"]
    cfg["data"].update(shards=str(tmp_path / "shards" / "c-{000..003}.tar"), workers=1)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir()), "OMP_NUM_THREADS": "1"}
    job, lines = started_until_step_one([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                         str(REPO_ROOT / "train.py"), "--config", str(path)], env)
    try:
        processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
        assert len(processes) >= 5   # the launcher, two ranks and a data worker each
        for process in processes:
            process.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    finally:
        if job.poll() is None:
            for process in psutil.Process(job.pid).children(recursive=True):
                process.kill()
            job.kill()
    time.sleep(0.5)
    step = stopped_step(lines, "0, 1", 400)
    assert job.returncode != 0   # the launcher's own, for the signal it got
    assert [c.name for c in (tmp_path / "out").glob("checkpoint-*")] == [f"checkpoint-{step:07d}"]
    assert not (tmp_path / "out" / "adapter.safetensors").exists()
    assert [r[0] for r in loss_rows(tmp_path / "out")] == [str(s) for s in range(1, step + 1)]

    cfg["train"]["steps"] = step + 1
    again = run_cli(setup, cfg, "after-sigterm", processes=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(step {step})" in again.stdout
    assert [r[0] for r in loss_rows(tmp_path / "out")] == [str(s) for s in range(1, step + 2)]
    assert (tmp_path / "out" / "adapter.safetensors").exists()


def test_a_sigterm_to_one_process_ends_it_with_status_143_after_a_checkpoint(setup, tmp_path):
    """`kill <pid>` of a run on one process: the step in progress ends, its checkpoint is written and
    the process exits with 143, what a shell reports for a process SIGTERM ended (wrappers that read
    it as "preempted" keep doing so)."""
    import signal

    path = tmp_path / "run.json"
    path.write_text(json.dumps(config(setup, tmp_path / "out", steps=400, batch_size=1)))
    env = {**os.environ, "COMFYUI_DIR": str(comfyui_dir()), "OMP_NUM_THREADS": "1"}
    job, lines = started_until_step_one([sys.executable, str(REPO_ROOT / "train.py"), "--config", str(path)], env)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) == 143, "".join(lines)[-3000:]
    time.sleep(0.5)
    step = stopped_step(lines, "0", 400)
    assert [c.name for c in (tmp_path / "out").glob("checkpoint-*")] == [f"checkpoint-{step:07d}"]


@pytest.mark.train_long   # three 2-process launches, ~5 min; the unit tier's FSDP tests run by default
def test_fsdp_on_two_gloo_processes_trains_like_ddp_and_resumes(setup, tmp_path):
    """train.sharding "fsdp" through torchrun on the real adapter, gradient checkpointing on, in mode
    prediction (0, 1 or 2 context frames drawn per clip, so one rank's clip may leave the context
    encoder unused): the losses and gradient norms of DDP on as many ranks, and a rerun resumes from
    the FSDP run's checkpoint (whole tensors, written by rank 0). Against DDP on as many ranks: the
    loss per clip is checked against one process in tests/host/test_training.py."""
    from videoldm_core.training.trainer import read_log

    ddp = config(setup, tmp_path / "ddp", steps=2, batch_size=1, gradient_checkpointing=True)
    fsdp = config(setup, tmp_path / "fsdp", steps=1, batch_size=1, gradient_checkpointing=True, sharding="fsdp",
                  checkpoint_every=1)
    for cfg in (ddp, fsdp):
        cfg["mode"] = "prediction"
    run = run_cli(setup, ddp, "ddp-prediction", processes=2)
    assert run.returncode == 0, run.stderr[-3000:]
    first = run_cli(setup, fsdp, "fsdp-first", processes=2)
    assert first.returncode == 0, first.stderr[-3000:]
    fsdp["train"]["steps"] = 2
    again = run_cli(setup, fsdp, "fsdp-again", processes=2)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout and "(step 1)" in again.stdout
    rows = {name: read_log(tmp_path / name / "loss.csv") for name in ("ddp", "fsdp")}
    assert [r["step"] for r in rows["fsdp"]] == ["1", "2"]
    for a, b in zip(rows["ddp"], rows["fsdp"]):
        assert float(a["adapter/loss"]) == pytest.approx(float(b["adapter/loss"]), abs=1e-6)
        assert float(a["adapter/grad_norm"]) == pytest.approx(float(b["adapter/grad_norm"]), rel=1e-3)
    a, b = load_file(str(tmp_path / "ddp" / "adapter.safetensors")), load_file(str(tmp_path / "fsdp" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3   # Adam moves ~0-gradient weights by rounding noise


def test_a_folders_clips_start_where_data_start_says(setup, pack_module):
    """`"start": "random"` draws each clip's first frame (seeded by the clip; the cache keeps it); it was
    accepted and ignored for folders, every clip starting at its first frame."""
    training_data = pack_module("host.training_data")
    data = {"folder": str(setup / "clips"), "frames": 4, "fps": 15, "width": 64, "height": 64}
    first, drawn = training_data.data_folder(data, 1, 15.0), training_data.data_folder({**data, "start": "random"}, 1, 15.0)
    assert (first.spec.start, drawn.spec.start) == ("first", "random")
    assert any(not torch.equal(first[i]["frames"], drawn[i]["frames"]) for i in range(len(first)))


def test_what_the_ranks_compare_leaves_out_where_each_finds_its_files_and_names_a_difference(pack_module, monkeypatch):
    """Ranks compare their run configurations (each node reads its own copy), but a node may mount the
    data, checkpoint and output folders elsewhere: paths are left out. A difference is named with
    every rank's value (the collective itself: tests/unit/test_trainer.py, two gloo ranks)."""
    cli = pack_module("host.training_cli")
    errors = pack_module("videoldm_core.training.objective")
    cfg = {"checkpoint": "/models/a.safetensors", "output": "/runs/x", "mode": "temporal",
           "data": {"folder": "/data/clips", "cache": None, "frames": 8}, "adapter": {"init": "/b", "regimes": [0]},
           "train": {"lr": 0.1, "betas": [0.9, 0.99]}}
    assert cli.settings_of(cfg) == {"mode": "temporal", "data.frames": 8, "adapter.regimes": [0], "train.lr": 0.1,
                                    "train.betas": [0.9, 0.99]}
    monkeypatch.setattr(cli, "ranks_that_differ", lambda facts, world: ("train.lr", [0.05, 0.1]))
    with pytest.raises(errors.TrainingError, match=r"^the ranks of this run read different run configurations: "
                                                   r"train\.lr is rank 0: 0\.05, rank 1: 0\.1\. Start every rank"):
        cli.check_ranks_agree(None, cli.settings_of(cfg), "run configurations", "Start every rank alike.")

"""The training loop's own guarantees, on a small pure-torch phase: warm-up, clipping, EMA,
rank-split batches, CSV log, checkpoints and resume, DistributedDataParallel on gloo."""

import datetime
import os

from pathlib import Path

import pytest
import torch
from torch import nn

from videoldm_core.noise_schedule import SD_SCHEDULE
from videoldm_core.training.batches import StepBatches, clip_seed
from videoldm_core.training.objective import Phase, TrainingError
from videoldm_core.training.schedule import NoiseSchedule
from videoldm_core.training.trainer import Trainer, TrainConfig, latest_checkpoint, read_log


class Regression(Phase):
    """Fit y = w x with a noisy target drawn from each clip's own seed."""
    name = "model"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)

    def forward(self, batch, generator):
        noise = torch.stack([torch.randn(1, generator=torch.Generator().manual_seed(int(s))) for s in batch["sample_seeds"]])
        target = batch["x"] @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.01 * noise
        loss = ((self.linear(batch["x"]) - target) ** 2).mean()
        return loss, {"loss": loss.item()}


DATA = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i))} for i in range(10)]


def trainer(tmp_path=None, steps=8, batch=2, **config):
    return Trainer([Regression()], TrainConfig(steps=steps, lr=0.05, seed=3, **config), StepBatches(DATA, batch, seed=3),
                   output_dir=tmp_path, identity={"what": "regression"})


def test_warm_up_is_linear_then_constant():
    config = TrainConfig(lr=1e-3, warmup=4)
    assert [config.learning_rate(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_bad_settings_are_refused_with_what_was_expected():
    with pytest.raises(TrainingError, match="at least 1 training step"):
        TrainConfig(steps=0)
    with pytest.raises(TrainingError, match="precision in"):
        TrainConfig(precision="fp8")
    with pytest.raises(TrainingError, match="EMA decay"):
        TrainConfig(ema_decay=1.5)
    for clip in (-1.0, 0.0, float("nan")):   # negative: gradient ascent; 0: no step
        with pytest.raises(TrainingError, match=f"gradient clipping norm > 0, or none for no clipping, found {clip}"):
            TrainConfig(grad_clip=clip)
    with pytest.raises(TrainingError, match="weight decay ≥ 0, found -1"):
        TrainConfig(weight_decay=-1)
    for betas in ([0.9], (0.9, 1.0), ("a", 0.9)):
        with pytest.raises(TrainingError, match="betas as two numbers in \\[0, 1\\)"):
            TrainConfig(betas=betas)
    with pytest.raises(TrainingError, match="keep_checkpoints ≥ 0"):
        TrainConfig(keep_checkpoints=-1)


class InfiniteGradient(torch.autograd.Function):
    """Adds 0 to the loss; its gradient for the weight is infinite (a layer that overflows backwards only)."""

    @staticmethod
    def forward(ctx, weight):
        return weight.sum() * 0.0

    @staticmethod
    def backward(ctx, grad):
        return torch.full((1, 4), float("inf"))


class Exploding(Regression):
    def forward(self, batch, generator):
        loss, logs = super().forward(batch, generator)
        return loss + InfiniteGradient.apply(self.linear.weight), logs


def test_a_non_finite_gradient_stops_the_run_before_the_step_is_applied(tmp_path):
    t = Trainer([Exploding()], TrainConfig(steps=4, lr=0.05, seed=3, checkpoint_every=1), StepBatches(DATA, 2, seed=3),
                output_dir=tmp_path, identity={"what": "regression"})
    before = {k: v.clone() for k, v in t.phases[0].state_dict().items()}
    with pytest.raises(TrainingError, match="step 1: phase 'model' gradient norm is (inf|nan) .* the step was not applied"):
        t.run()
    assert all(torch.equal(before[k], v) for k, v in t.phases[0].state_dict().items())
    assert latest_checkpoint(tmp_path) is None   # nothing non-finite was saved


class ExplodingOnce(Regression):
    """An infinite gradient at the first step only: what fp16 gradients at too high a loss scale do."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch, generator):
        loss, logs = super().forward(batch, generator)
        self.calls += 1
        return (loss + InfiniteGradient.apply(self.linear.weight) if self.calls == 1 else loss), logs


def test_fp16_steps_the_grad_scaler_skips_are_logged_not_applied():
    """With precision fp16 an overflowing gradient does not stop the run: the scaler skips the step
    (the weights stay), lowers its scale, and the row says so (`skipped`), so a caller can tell."""
    t = Trainer([ExplodingOnce()], TrainConfig(steps=30, lr=0.05, seed=3, precision="fp16"), StepBatches(DATA, 2, seed=3))
    before = {k: v.clone() for k, v in t.phases[0].state_dict().items()}
    scale = t.scaler.get_scale()
    t.train_step()
    assert t.history[0]["model/skipped"] == 1.0 and t.scaler.get_scale() < scale
    assert all(torch.equal(before[k], v) for k, v in t.phases[0].state_dict().items())
    t.run()   # the rest: its own fp16 gradients overflow too at the start scale, until the scale is low enough
    skipped = [r["model/skipped"] for r in t.history]
    assert skipped[-1] == 0.0 and t.scaler.get_scale() == scale * 0.5 ** sum(skipped)
    assert not torch.equal(before["linear.weight"], t.phases[0].linear.weight)


def test_the_loss_falls_and_gradients_are_clipped():
    t = trainer(steps=60, grad_clip=0.5)
    t.run()
    losses = [r["model/loss"] for r in t.history]
    assert losses[-1] < 0.3 * losses[0]
    assert t.history[0]["model/grad_norm"] > 0.5   # the norm before clipping is logged ...
    t = trainer(steps=1, grad_clip=0.5)
    t.run()
    after = torch.cat([p.grad.flatten() for p in t.phases[0].parameters()]).norm()
    assert t.history[0]["model/grad_norm"] > 1.0 and after == pytest.approx(0.5, rel=1e-4)   # ... the step used ≤ 0.5


def test_ema_weights_trail_the_raw_weights():
    t = trainer(steps=10, ema_decay=0.9)
    start = t.phases[0].linear.weight.detach().clone()
    t.run()
    raw, ema = t.phases[0].linear.weight.detach(), t.ema_state()["model.linear.weight"]
    assert not torch.equal(raw, ema)
    assert (ema - start).norm() < (raw - start).norm()


def test_the_ema_decay_warms_up_as_sgms_lit_ema():
    """decay_n = min(decay, (1 + n) / (10 + n)) after n updates: with 0.999 from the first step, the
    EMA of a 1,000-step run would still hold 37% of the initial weights."""
    config = TrainConfig(ema_decay=0.999)
    assert [config.ema_decay_at(s) for s in (0, 1, 89)] == pytest.approx([2 / 11, 3 / 12, 91 / 100])
    assert config.ema_decay_at(10_000) == 0.999
    kept = 1.0
    for step in range(1000):
        kept *= config.ema_decay_at(step)   # the weight the initial value still has in the average
    assert kept < 1e-3 < 0.999 ** 1000 / 100
    t = trainer(steps=1, ema_decay=0.999)   # the trainer's first update uses the warmed-up decay
    start = t.phases[0].linear.weight.detach().clone()
    t.run()
    raw = t.phases[0].linear.weight.detach()
    torch.testing.assert_close(t.ema_state()["model.linear.weight"], torch.lerp(start, raw, 1 - 2 / 11))


def test_a_split_global_batch_holds_the_same_clips_and_seeds():
    one = StepBatches(DATA, 4, seed=1)
    two = StepBatches(DATA, 2, seed=1)
    for step in range(5):
        whole = one(step)
        halves = [two(step, r, 2) for r in range(2)]
        assert torch.equal(torch.cat([h["x"] for h in halves]), whole["x"])
        assert torch.equal(torch.cat([h["sample_seeds"] for h in halves]), whole["sample_seeds"])
    assert clip_seed(1, 5) != clip_seed(1, 6) != clip_seed(2, 5)


def test_resume_reproduces_the_uninterrupted_run_and_rewrites_the_log(tmp_path):
    straight = trainer(tmp_path / "a", steps=8, ema_decay=0.9)
    straight.run()
    first = trainer(tmp_path / "b", steps=8, ema_decay=0.9, checkpoint_every=3)
    for _ in range(5):
        first.train_step()   # checkpoint at 3, then two steps that the resumed run must redo
    resumed = trainer(tmp_path / "b", steps=8, ema_decay=0.9)
    resumed.load_checkpoint(latest_checkpoint(tmp_path / "b"))
    assert resumed.step == 3
    resumed.run()
    assert read_log(tmp_path / "a" / "loss.csv") != [] and \
        [r["model/loss"] for r in read_log(tmp_path / "b" / "loss.csv")] == [r["model/loss"] for r in read_log(tmp_path / "a" / "loss.csv")]
    assert torch.equal(resumed.phases[0].linear.weight, straight.phases[0].linear.weight)
    assert torch.equal(resumed.ema_state()["model.linear.weight"], straight.ema_state()["model.linear.weight"])


def test_resuming_a_finished_run_leaves_its_checkpoint_in_place(tmp_path, monkeypatch):
    """A finished run started again resumes at its last step and trains nothing: its checkpoint is not
    deleted and written again (a crash in between once left none, and the next run began at step 0)."""
    import shutil

    done = trainer(tmp_path, steps=4, keep_checkpoints=1)
    done.run()
    last = latest_checkpoint(tmp_path)
    again = trainer(tmp_path, steps=4, keep_checkpoints=1)
    again.load_checkpoint(last)
    removed = []
    monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: removed.append(Path(path).name))
    assert again.run() and again.step == 4
    assert removed == [] and latest_checkpoint(tmp_path) == last
    longer = trainer(tmp_path, steps=5, keep_checkpoints=1)   # one more step: a new checkpoint, as before
    longer.load_checkpoint(last)
    monkeypatch.undo()
    longer.run()
    assert latest_checkpoint(tmp_path).name == "checkpoint-0000005"


@pytest.mark.parametrize("damaged", ["trainable.safetensors", "optimizer.pt"])
def test_a_checkpoint_cut_short_is_named_with_the_one_to_resume_from(tmp_path, monkeypatch, damaged):
    """Its files are synced to the disk before the folder takes its name; one damaged all the same (a
    disk that lied) was a bare 'invalid header length' or a zip error that named no file."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    trainer(tmp_path, steps=4, checkpoint_every=2, keep_checkpoints=2).run()
    assert len(synced) >= 2 * 4   # each checkpoint: its files, its folder, the output folder
    newest = latest_checkpoint(tmp_path)
    path = newest / damaged
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TrainingError, match=rf"checkpoint 'checkpoint-0000004': {damaged} cannot be read .* Delete the "
                                            r"folder 'checkpoint-0000004' to resume from 'checkpoint-0000002'\."):
        trainer(tmp_path, steps=6).load_checkpoint(newest)


def test_a_resume_with_another_seed_or_other_clips_is_refused(tmp_path):
    """Steps draw their clips and noise from (seed, step) over the clips: either changed, the resumed
    steps were another run's, continued without a word."""
    trainer(tmp_path, steps=2).run()
    checkpoint = latest_checkpoint(tmp_path)
    reseeded = Trainer([Regression()], TrainConfig(steps=4, lr=0.05, seed=4), StepBatches(DATA, 2, seed=4),
                       output_dir=tmp_path, identity={"what": "regression"})
    with pytest.raises(TrainingError, match=r"trained with seed 3, this run has 4; .* resume with seed 3"):
        reseeded.load_checkpoint(checkpoint)
    fewer = Trainer([Regression()], TrainConfig(steps=4, lr=0.05, seed=3), StepBatches(DATA[:-1], 2, seed=3),
                    output_dir=tmp_path, identity={"what": "regression"})
    with pytest.raises(TrainingError, match=rf"drew its steps from {len(DATA)} clips, this run has {len(DATA) - 1}"):
        fewer.load_checkpoint(checkpoint)
    trainer(tmp_path, steps=4).load_checkpoint(checkpoint)   # the same: resumed


def test_a_second_run_on_the_same_output_folder_is_refused_while_the_first_holds_it(tmp_path):
    """A job queued again while the first still ran wrote checkpoints and loss.csv beside it."""
    import fcntl

    from videoldm_core.training.distributed import World
    from videoldm_core.training.trainer import only_run_in

    with only_run_in(tmp_path, World()):
        with open(tmp_path / ".run.lock") as other:   # another process's view: its own open file
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TrainingError, match=r"is in use by another training run \(it holds \.run\.lock there\)"):
            with only_run_in(tmp_path, World()):
                pytest.fail("the second run went on")
    with only_run_in(tmp_path, World()):   # released when the first ended
        pass


def test_an_output_folder_that_cannot_be_locked_is_trained_in_with_a_warning(tmp_path, monkeypatch, caplog):
    """NFS without lockd, some FUSE and Lustre mounts refuse locks: the run goes on, and says so."""
    import errno
    import fcntl

    from videoldm_core.training.distributed import World
    from videoldm_core.training.trainer import only_run_in

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with only_run_in(tmp_path, World()):
        ran = True
    assert ran and "cannot be locked (No locks available); nothing stops a second run" in caplog.text


def test_a_loss_log_held_open_elsewhere_costs_no_training_and_gets_its_rows_later(tmp_path, monkeypatch, caplog):
    """On Windows a spreadsheet showing loss.csv locks it: the run died at the next step's append,
    losing everything since its last checkpoint."""
    import builtins

    from videoldm_core.training import trainer as trainer_module

    locked = []

    def held_open(path, *args, **kwargs):
        if locked and Path(path).name.startswith("loss.csv"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "open", held_open, raising=False)
    run = trainer(tmp_path, steps=6)
    assert run.run(on_step=lambda row: locked.append(1) if row["step"] == 2 else
                   locked.clear() if row["step"] == 4 else None) is True
    assert [r["step"] for r in read_log(tmp_path / "loss.csv")] == ["1", "2", "3", "4", "5", "6"]
    warnings = [r.getMessage() for r in caplog.records if "could not be written" in r.getMessage()]
    assert len(warnings) == 1 and "Permission denied" in warnings[0] and "from step 3" in warnings[0], warnings
    locked.append(1)   # a resume cuts the log back to its checkpoint: refused by name, before any step
    resumed = trainer(tmp_path, steps=8)
    with pytest.raises(TrainingError, match=r"loss.csv' could not be rewritten to end at the checkpoint's step 6 "
                                            r"\(Permission denied\); close the program holding it open"):
        resumed.load_checkpoint(latest_checkpoint(tmp_path))

def test_a_resumed_run_takes_its_own_betas_and_weight_decay(tmp_path):
    """The optimiser's moments come from the checkpoint; its settings from this run's config (a
    checkpoint's betas and weight decay once overrode the config without a word)."""
    trainer(tmp_path, steps=2).run()
    resumed = trainer(tmp_path, steps=4, betas=(0.5, 0.9), weight_decay=0.2)
    resumed.load_checkpoint(latest_checkpoint(tmp_path))
    group = resumed.optimizers[0].param_groups[0]
    assert (tuple(group["betas"]), group["weight_decay"]) == ((0.5, 0.9), 0.2)
    assert resumed.optimizers[0].state   # the moments were restored


def test_a_checkpoint_of_another_setup_is_refused(tmp_path):
    t = trainer(tmp_path, steps=2)
    t.run()
    other = Trainer([Regression()], TrainConfig(steps=4), StepBatches(DATA, 2), output_dir=tmp_path, identity={"what": "else"})
    with pytest.raises(TrainingError, match=r"differs in \['what'\]"):
        other.load_checkpoint(latest_checkpoint(tmp_path))


def test_noise_schedule_targets():
    schedule = NoiseSchedule.from_sigmas(SD_SCHEDULE.sigmas(), "v")
    x0, eps, t = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 500, 999])
    a = schedule.alphas_cumprod[t].float()[:, None]
    torch.testing.assert_close(schedule.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(schedule.target(x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    sigmas = ((1 - schedule.alphas_cumprod) / schedule.alphas_cumprod).sqrt()
    torch.testing.assert_close(NoiseSchedule.from_sigmas(sigmas).alphas_cumprod, schedule.alphas_cumprod)


WORKER = """
import gc, importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("trainer_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
torch.set_num_threads(1)
t = tests.trainer(steps=5, batch=1)
t.run()
if t.world.rank == 0:
    torch.save(t.phases[0].state_dict(), sys.argv[2])
# DDP's reducer goes before its process group: destroyed after it, at exit, it aborted the process
# ("terminate called without an active exception") in 4 of 6 runs. The trainer holds cycles: collect them.
del t
gc.collect()
torch.distributed.destroy_process_group()
"""


def test_two_gloo_ranks_match_one_process_at_the_same_global_batch(tmp_path):
    """torchrun, 2 processes x batch 1, against one process x batch 2."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), __file__, str(tmp_path / "ddp.pt")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = trainer(steps=5, batch=2)
    single.run()
    ddp = torch.load(tmp_path / "ddp.pt")
    for k, v in single.phases[0].state_dict().items():
        torch.testing.assert_close(ddp[k], v, atol=1e-6, rtol=1e-5)


NAN_WORKER = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("trainer_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
torch.set_num_threads(1)

class NanOnRankOne(tests.Regression):
    def forward(self, batch, generator):
        loss, logs = super().forward(batch, generator)
        if torch.distributed.get_rank() == 1 and batch["step"] == 1:
            loss = loss * float("nan")
        return loss, logs

t = tests.Trainer([NanOnRankOne()], tests.TrainConfig(steps=5, lr=0.05, seed=3), tests.StepBatches(tests.DATA, 1, seed=3),
                  identity={"what": "regression"})
try:
    t.run()
except tests.TrainingError as e:
    print(f"rank {torch.distributed.get_rank()} stopped: {e}", flush=True)
    sys.exit(3)
"""


def test_a_loss_that_is_not_finite_on_one_rank_stops_every_rank_together(tmp_path):
    """A rank stopping alone leaves the others waiting in the backward's all-reduce (on several nodes
    until the step collectives time out, 30 min): every rank learns of the non-finite loss and stops at once."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    (tmp_path / "worker.py").write_text(NAN_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), __file__], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "rank 1 stopped: step 2: phase 'model' loss is nan" in run.stdout, run.stdout + run.stderr[-2000:]
    assert "rank 0 stopped: step 2: phase 'model' loss is not finite on rank(s) 1" in run.stdout, run.stdout


AGREE_WORKER = """
import torch.distributed as dist
from videoldm_core.training.distributed import init_world, ranks_that_differ
world = init_world(gpus=False)
own = {"mode": "temporal", "train.lr": 0.05 if world.rank == 0 else 0.1, "train.steps": 10}
print(f"rank {world.rank} differ: {ranks_that_differ(own, world)}", flush=True)
extra = {"mode": "temporal", **({"train.warmup": 100} if world.rank == 1 else {})}   # a key one copy adds
print(f"rank {world.rank} extra: {ranks_that_differ(extra, world)}", flush=True)
print(f"rank {world.rank} alike: {ranks_that_differ({'mode': 'temporal', 'train.steps': 10}, world)}", flush=True)
dist.destroy_process_group()
"""


def test_every_rank_learns_what_the_ranks_read_differently(tmp_path):
    """Each node reads its own copy of the run configuration and lists the output folder itself: a
    learning rate that differs on one rank (DDP averages the gradients of two runs without a word), or
    a checkpoint one rank cannot see, is found on every rank alike, so every rank stops together."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    (tmp_path / "worker.py").write_text(AGREE_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} differ: ('train.lr', [0.05, 0.1])" in run.stdout, run.stdout
        assert f"rank {rank} extra: ('train.warmup', [None, 100])" in run.stdout, run.stdout
        assert f"rank {rank} alike: None" in run.stdout, run.stdout



def test_a_sigterm_stops_the_run_after_its_step_with_a_checkpoint_that_resumes_to_the_same_weights(tmp_path):
    """A cluster's SIGTERM (preemption, a job's time limit): the run stops after the step it lands in,
    with a checkpoint the same command resumes from (videoldm_core/training/stop_request.py; the CLI's
    whole path, torchrun and streamed data workers under one signal to the job, is in
    tests/host/test_training_cli.py)."""
    import signal

    from videoldm_core.training.stop_request import StopRequest

    outer = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: outer.append(signum))   # stands in for the default: ending pytest
    try:
        run = trainer(tmp_path / "stopped", steps=8)

        def preempted(row):
            if row["step"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        with StopRequest(run.world) as stop:
            assert run.run(should_stop=stop, on_step=preempted) is False
            assert (run.step, stop.ranks, outer) == (3, [0], [])
            os.kill(os.getpid(), signal.SIGTERM)   # a second one (Slurm's, then torchrun's) changes nothing
            assert outer == [] and stop.received
        os.kill(os.getpid(), signal.SIGTERM)   # after the loop, the handler from before is back
        assert outer == [signal.SIGTERM] and stop.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert latest_checkpoint(tmp_path / "stopped").name == "checkpoint-0000003"

    resumed = trainer(tmp_path / "stopped", steps=8)
    resumed.load_checkpoint(latest_checkpoint(tmp_path / "stopped"))
    assert resumed.run() is True
    whole = trainer(tmp_path / "whole", steps=8)
    whole.run()
    for key, value in whole.phases[0].state_dict().items():
        torch.testing.assert_close(resumed.phases[0].state_dict()[key], value, rtol=0, atol=0)


def test_no_signal_no_stop():
    from videoldm_core.training.stop_request import StopRequest

    run = trainer(steps=3)
    with StopRequest(run.world) as stop:
        assert run.run(should_stop=stop) is True
    assert (run.step, stop.ranks) == (3, [])


STOP_WORKER = """
import gc, importlib.util, os, signal, sys, torch
spec = importlib.util.spec_from_file_location("trainer_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
from videoldm_core.training.stop_request import StopRequest
torch.set_num_threads(1)
t = tests.trainer(tests.Path(sys.argv[2]), steps=8, batch=1)

def preempted(row):
    if t.world.rank == 1 and row["step"] == 2:
        os.kill(os.getpid(), signal.SIGTERM)

with StopRequest(t.world) as stop:
    finished = t.run(should_stop=stop, on_step=preempted)
print(f"rank {t.world.rank}: finished {finished} at step {t.step}, asked on {stop.ranks}", flush=True)
del t
gc.collect()
torch.distributed.destroy_process_group()
"""


def test_a_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Rank 1 alone is signalled: rank 0 learns it at the next step boundary, both stop there (one
    rank stopping alone would leave the other waiting in the next step's gradient all-reduce)."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    (tmp_path / "worker.py").write_text(STOP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), __file__,
                          str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: finished False at step 2, asked on [1]" in run.stdout, run.stdout
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-0000002"


def test_only_checkpoint_folders_by_their_exact_name_count_in_step_order(tmp_path):
    """A user's copy 'checkpoint-0000004-backup' was pruned and could be resumed from; steps past 10^7
    sorted before smaller ones as text; a crash's '.tmp' and a file are no checkpoints (the '.tmp' is
    removed once a checkpoint is written: rank 0 writes alone)."""
    from videoldm_core.training.trainer import checkpoints_in

    for name in ("checkpoint-0000004", "checkpoint-9999999", "checkpoint-10000000", "checkpoint-0000004-backup",
                 "checkpoint-0000005.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-0000006").write_text("not a folder")
    assert [p.name for p in checkpoints_in(tmp_path)] == ["checkpoint-0000004", "checkpoint-9999999",
                                                          "checkpoint-10000000"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-10000000"
    t = trainer(tmp_path, steps=1, keep_checkpoints=1)
    t._prune_checkpoints()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000004-backup", "checkpoint-0000006",
                                                          "checkpoint-10000000"]


def test_bf16_autocast_trains():
    t = trainer(steps=30, precision="bf16")
    t.run()
    losses = [r["model/loss"] for r in t.history]
    assert losses[-1] < 0.5 * losses[0]
    assert t.phases[0].linear.weight.dtype == torch.float32   # master weights stay fp32


FSDP_WORKER = """
import gc, importlib.util, sys, torch
from videoldm_core.training.trainer import latest_checkpoint
spec = importlib.util.spec_from_file_location("trainer_tests", sys.argv[1])
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)
torch.set_num_threads(1)
out = sys.argv[2]
settings = dict(steps=8, batch=1, ema_decay=0.9, sharding="fsdp")

def finish(t, name):
    with t.gathered():   # every rank gathers, rank 0 reads whole tensors
        if t.world.rank == 0:
            torch.save({"raw": t.phase_state("model", ema=False), "ema": t.phase_state("model")}, f"{out}/{name}.pt")

straight = tests.trainer(f"{out}/straight", **settings)
assert type(straight.phases[0].linear.weight).__name__ == "DTensor"   # split over the ranks, not replicated
straight.run()
finish(straight, "straight")
first = tests.trainer(f"{out}/resumed", checkpoint_every=3, **settings)
for _ in range(5):
    first.train_step()   # checkpoint at 3, then two steps the resumed run redoes
resumed = tests.trainer(f"{out}/resumed", **settings)
resumed.load_checkpoint(latest_checkpoint(f"{out}/resumed"))
assert resumed.step == 3
resumed.run()
finish(resumed, "resumed")
# as in WORKER: the trainers' sharded modules go before their process group (destroyed after it, at
# exit, rank 0 aborted: "terminate called without an active exception", once in a full run)
del straight, first, resumed
gc.collect()
torch.distributed.destroy_process_group()
"""


def test_fsdp_on_two_gloo_ranks_matches_one_process_and_resumes_exactly(tmp_path):
    """train.sharding "fsdp": 2 processes x batch 1 with weights, gradients, AdamW moments and EMA
    split over the ranks give one process's losses and weights at batch 2 (to float summation order:
    losses 1e-6, weights atol 1e-6 as for DDP); a resumed FSDP run repeats the straight one exactly,
    and its checkpoints hold whole tensors, so one process continues one of them like its own."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    (tmp_path / "worker.py").write_text(FSDP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    single = trainer(tmp_path / "single", steps=8, batch=2, ema_decay=0.9)
    single.run()
    losses = {name: [float(r["model/loss"]) for r in read_log(tmp_path / name / "loss.csv")]
              for name in ("single", "straight", "resumed")}
    assert len(losses["single"]) == 8
    assert losses["straight"] == pytest.approx(losses["single"], abs=1e-6)
    assert losses["resumed"] == losses["straight"]   # bit for bit
    straight, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resumed.pt")
    expected = {"raw": single.phase_state("model", ema=False), "ema": single.phase_state("model")}
    for kind in ("raw", "ema"):
        for k, v in expected[kind].items():
            torch.testing.assert_close(straight[kind][k], v, atol=1e-6, rtol=1e-5)
            assert torch.equal(resumed[kind][k], straight[kind][k])
    # an FSDP checkpoint is the same files as any other: one process at the same global batch goes on from it
    continued = trainer(tmp_path / "resumed", steps=8, batch=2, ema_decay=0.9)
    continued.load_checkpoint(tmp_path / "resumed" / "checkpoint-0000003")
    continued.run()
    for k, v in expected["raw"].items():
        torch.testing.assert_close(continued.phase_state("model", ema=False)[k], v, atol=1e-6, rtol=1e-5)


def test_fsdp_refuses_fp16_and_several_phases():
    with pytest.raises(TrainingError, match="use bf16"):
        TrainConfig(sharding="fsdp", precision="fp16")
    with pytest.raises(TrainingError, match=r"sharding in \['ddp', 'fsdp'\]"):
        TrainConfig(sharding="zero3")
    from videoldm_core.training.distributed import World

    with pytest.raises(TrainingError, match="sharding 'fsdp' trains one phase, found 2"):   # before any process group is needed
        Trainer([Regression(), Regression()], TrainConfig(sharding="fsdp"), StepBatches(DATA, 1), world=World(0, 2))


@pytest.mark.parametrize("gpus, backend", [(True, "nccl"), (False, "gloo")])
def test_the_process_group_follows_the_device_the_run_uses(monkeypatch, gpus, backend):
    """On a machine with GPUs, a run told to stay on the CPU (train.py --cpu) joins on gloo (nccl
    cannot carry CPU tensors). A step's collectives wait half an hour for a stalled rank; the waits for
    rank 0's work alone (its latent cache, the validation video) two hours, in a gloo group of their own."""
    import torch.distributed as dist

    from videoldm_core.training import distributed

    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.setdefault("device", index))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: joined.update(backend=backend, timeout=timeout))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "new_group", lambda backend, timeout: joined.update(waits=(backend, timeout)) or "waits")
    monkeypatch.setattr(distributed, "_main_work", None)
    world = distributed.init_world(gpus=gpus)
    assert (world.rank, world.size, world.local_rank) == (1, 2, 1)
    assert joined["backend"] == backend and joined.get("device") == (1 if gpus else None)
    assert joined["timeout"] == distributed.STEP_TIMEOUT == datetime.timedelta(minutes=30)
    assert joined["waits"] == ("gloo", distributed.MAIN_WORK_TIMEOUT) and distributed.MAIN_WORK_TIMEOUT >= datetime.timedelta(hours=1)
    waited = []
    monkeypatch.setattr(dist, "barrier", lambda group=None: waited.append(group))
    distributed.barrier(world)
    assert waited == ["waits"]


def test_train_py_makes_this_ranks_gpu_current_before_comfyui_is_imported(monkeypatch, tmp_path):
    """Importing ComfyUI measures the current CUDA device's memory: without this, every rank opened a
    context on GPU 0 first. Run as on a 2-GPU machine, rank 1 (CUDA itself is stood in for)."""
    import importlib.util

    from devtools.paths import REPO_ROOT

    spec = importlib.util.spec_from_file_location("train_cli", REPO_ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    events = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(("set_device", device)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(train, "find_comfyui", lambda path: tmp_path)

    def init_host(comfyui, cpu):
        events.append(("init_host", cpu))
        raise KeyboardInterrupt   # stop before anything loads

    monkeypatch.setattr(train, "init_host", init_host)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(KeyboardInterrupt):
        train.main(["--config", "run.json"])
    assert events == [("set_device", 1), ("init_host", False)]
    events.clear()
    with pytest.raises(KeyboardInterrupt):
        train.main(["--config", "run.json", "--cpu"])   # on the CPU no GPU is touched
    assert events == [("init_host", True)]
    monkeypatch.setenv("LOCAL_RANK", "2")   # more processes than GPUs (or CUDA_VISIBLE_DEVICES per task)
    with pytest.raises(SystemExit, match="LOCAL_RANK 2 sees 2 GPU"):
        train.main(["--config", "run.json"])

"""Training clips streamed from WebDataset shards (videoldm_core/training/shards.py): a folder of
clips written as shards reads back as the same clips with their captions; broken samples and a
truncated shard are skipped and counted; ranks and DataLoader workers read disjoint samples; passes
repeat; pipe: URLs only where the operator allows them."""

import io
import tarfile
from dataclasses import replace

import pytest
import torch
from torch.utils.data import DataLoader

from devtools.synthetic_data import write_dataset
from videoldm_core.training.data import ClipSpec, VideoFolder
from videoldm_core.training.objective import TrainingError
from videoldm_core.training.shards import ShardClips, shard_urls, write_shards

SPEC = ClipSpec(frames=4, fps=15.0, height=32, width=32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    captions = write_dataset(folder, 8, seed=3, frames=12, height=32, width=32, fps=30.0)
    return folder, captions


@pytest.fixture(scope="module")
def shards(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    report = write_shards(clips[0], str(out / "clips-%06d.tar"), clips_per_shard=2)
    return out, report


def read(urls, passes=1, **options):
    return list(ShardClips(urls, SPEC, passes=passes, shuffle=0, **options))


def test_a_folder_written_as_shards_reads_back_as_the_same_clips_with_captions(clips, shards):
    folder, captions = clips
    out, report = shards
    assert report == {"clips": 8, "shards": 4, "left_out": []}
    urls = shard_urls(str(out / "clips-{000000..000003}.tar"))
    items = read(urls)
    assert sorted(i["caption"] for i in items) == sorted(captions.values())
    from_folder = VideoFolder(folder, SPEC)   # keys number the folder's clips in its (sorted) order
    assert len(items) == len(from_folder) == 8
    for item in items:
        same = from_folder[int(item["key"])]
        assert item["caption"] == same["caption"]
        assert item["frames"].shape == (4, 3, 32, 32)
        assert torch.equal(item["frames"], same["frames"])   # first frames, centre crop: the same pixels
    assert all(i["skipped"] == 0 for i in items)


def test_broken_samples_and_a_truncated_shard_are_skipped_and_counted(shards, tmp_path):
    out, _ = shards
    broken = tmp_path / "broken.tar"
    with tarfile.open(broken, "w") as tar:
        for name, data in [("a.mp4", b"not a video"), ("b.txt", b"no video here"),
                           ("c.mp4", (out / "clips-000000.tar").read_bytes()[:2000])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    truncated = tmp_path / "truncated.tar"
    whole = (out / "clips-000001.tar").read_bytes()
    truncated.write_bytes(whole[:len(whole) // 2])
    items = read([str(out / "clips-000000.tar"), str(broken), str(truncated)])
    assert 2 <= len(items) <= 3   # shard 0's two clips, and the truncated shard's first if it was whole
    assert items[-1]["skipped"] >= 3   # a, b, c (and the truncated shard's rest)


@pytest.mark.parametrize("problem", ["missing", "too short"])
def test_shards_that_give_no_clip_stop_the_stream_instead_of_reading_them_forever(shards, problem):
    out, _ = shards
    urls = [str(out / f"typo-{i:06d}.tar") for i in range(2)] if problem == "missing" else \
        [str(out / "clips-000000.tar"), str(out / "clips-000001.tar")]
    spec = SPEC if problem == "missing" else ClipSpec(frames=40, fps=15.0, height=32, width=32)   # 12 frames at 30 fps
    stream = iter(ShardClips(urls, spec, passes=3, shuffle=0))   # training reads endless passes: it stops after the first
    reason = "No such file" if problem == "missing" else "too short"
    with pytest.raises(TrainingError, match=f"every one of the 2 shard\\(s\\) was read by this reader .* without a clip "
                                            f"it could use; [0-9]+ sample\\(s\\) or shard\\(s\\) skipped, the last: .*{reason}"):
        next(stream)


def test_one_bad_shard_among_good_ones_is_skipped_pass_after_pass(shards, monkeypatch):
    """Two readers, one shard each per pass: a pass in which a reader draws the bad shard gives it
    nothing, and is no reason to stop; the reader goes on to the good shard in later passes."""
    out, _ = shards
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    urls = [str(out / "typo-000000.tar"), str(out / "clips-000000.tar")]
    items = list(ShardClips(urls, SPEC, passes=6, shuffle=0))
    assert len(items) >= 2 and items[-1]["skipped"] >= 1


def test_a_member_declaring_more_than_a_clip_may_have_is_skipped_unread(shards, tmp_path, caplog):
    """A .tar.gz member's header can declare gigabytes that a few compressed bytes expand to; such a
    member is skipped from its header (here with the limit lowered to 4 KiB), the rest read."""
    import gzip
    import logging

    out, _ = shards
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb") as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("000.mp4")
        info.size = 64 * 1024
        tar.addfile(info, io.BytesIO(bytes(info.size)))   # 64 KiB of zeros: about 100 bytes packed
    assert bomb.stat().st_size < 1024
    with caplog.at_level(logging.WARNING):
        items = read([str(bomb), str(out / "clips-000000.tar")], max_member_bytes=4096 + 1024 * 1024)
    assert len(items) == 2 and not any("'000.mp4'" in r.message and "declares" in r.message for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingError, match="without a clip it could use; 1 sample"):
        read([str(bomb)], max_member_bytes=4096)   # its one member skipped: a pass of nothing stops the stream
    assert any("member '000.mp4'" in r.message and "declares 65536 bytes" in r.message for r in caplog.records)


def test_a_sample_of_thousands_of_files_is_cut_at_its_cap_and_counted(tmp_path):
    """A shard laid out one frame per member gathered every frame of a clip into one sample held at
    once; members past MAX_SAMPLE_MEMBERS are not read, the sample is counted as skipped once, and
    the next sample reads whole."""
    from videoldm_core.training.shards import MAX_SAMPLE_MEMBERS

    path = tmp_path / "frames.tar"
    with tarfile.open(path, "w") as tar:
        for name in [f"clip.{i:05d}.jpg" for i in range(3 * MAX_SAMPLE_MEMBERS)] + ["next.mp4", "next.txt"]:
            info = tarfile.TarInfo(name)
            info.size = 8
            tar.addfile(info, io.BytesIO(bytes(8)))
    reader = ShardClips([str(path)], SPEC)
    with open(path, "rb") as stream:
        names = [m["fname"] for m in reader.members([{"url": str(path), "stream": stream}])]
    assert len([n for n in names if n.startswith("clip.")]) == MAX_SAMPLE_MEMBERS
    assert names[-2:] == ["next.mp4", "next.txt"] and reader.skipped == 1
    assert f"its files number more than {MAX_SAMPLE_MEMBERS}" in reader.last_skipped
    heavy = ShardClips([str(path)], SPEC, max_member_bytes=8 * 5)   # the same cap in bytes: 5 of 8 bytes each
    with open(path, "rb") as stream:
        names = [m["fname"] for m in heavy.members([{"url": str(path), "stream": stream}])]
    assert len([n for n in names if n.startswith("clip.")]) == 5 and names[-2:] == ["next.mp4", "next.txt"]
    assert heavy.skipped == 1


def test_two_ranks_and_two_workers_read_disjoint_samples_covering_every_clip(shards, monkeypatch):
    out, _ = shards
    urls = shard_urls(str(out / "clips-{000000..000003}.tar"))
    keys = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = DataLoader(ShardClips(urls, SPEC, passes=1, shuffle=4), batch_size=None, num_workers=2)
        keys[rank] = [item["key"] for item in loader]
    assert not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"{i:09d}" for i in range(8)]


def test_readers_deal_as_many_shards_each_pass_so_none_runs_into_the_next(shards, monkeypatch, caplog):
    """3 shards for 2 ranks: a rank dealt 2 shards where the other had 1 ran a pass behind it, so
    within an epoch's steps some clips came twice and others not at all. Each pass now deals one
    shard to each rank (disjoint), the third sits out (another one each pass), and a warning says so."""
    import logging

    out, _ = shards
    urls = shard_urls(str(out / "clips-{000000..000002}.tar"))
    by_rank = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        with caplog.at_level(logging.WARNING):
            by_rank[rank] = read(urls, passes=6)
    assert "3 shard(s) for 2 reader(s) (ranks x data workers): each pass leaves 1 shard(s) out" in caplog.text
    passes = []
    for pass_index in range(6):
        keys = [{i["key"] for i in by_rank[r] if i["position"][1] == pass_index} for r in (0, 1)]
        assert len(keys[0]) == len(keys[1]) == 2 and not keys[0] & keys[1]   # one 2-clip shard each
        passes.append(keys[0] | keys[1])
    assert set().union(*passes) == {f"{i:09d}" for i in range(6)} and len(set(map(frozenset, passes))) > 1


def test_passes_repeat_with_a_new_shard_order(shards):
    out, _ = shards
    urls = shard_urls(str(out / "clips-{000000..000003}.tar"))
    items = read(urls, passes=3)
    keys = [i["key"] for i in items]
    assert len(keys) == 24 and sorted(set(keys)) == [f"{i:09d}" for i in range(8)]
    assert keys[:8] != keys[8:16] or keys[8:16] != keys[16:]


def test_more_readers_than_shards_is_refused_with_the_counts(shards, monkeypatch):
    out, _ = shards
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(TrainingError, match=r"4 shard\(s\) for 8 rank\(s\)"):
        read(shard_urls(str(out / "clips-{000000..000003}.tar")))


def test_shard_paths_from_a_windows_drive_become_file_urls_webdataset_opens(monkeypatch):
    """On Windows 'C:\\shards\\clips-{0..1}.tar' lost its backslashes to brace expansion (escapes) and
    webdataset took 'C:' for a URL scheme it has no handler for: every shard was skipped."""
    import nturl2path
    from urllib.parse import urlparse

    from videoldm_core.training import shards as shards_module

    monkeypatch.setattr(shards_module, "WINDOWS", True)
    urls = shard_urls("C:\\data\\my shards\\clips-{000..001}.tar")
    assert urls == ["file:///C:/data/my%20shards/clips-000.tar", "file:///C:/data/my%20shards/clips-001.tar"]
    # what webdataset's gopen does with a file: URL on Windows (url2pathname is nturl2path's there)
    assert nturl2path.url2pathname(urlparse(urls[1]).path) == "C:\\data\\my shards\\clips-001.tar"
    assert shard_urls("shards\\c-{0..1}.tar") == ["shards\\c-0.tar", "shards\\c-1.tar"]   # relative: opened as it is
    assert shard_urls("D:/x.tar") == ["file:///D:/x.tar"] and shard_urls("https://h/x-{0..1}.tar")[1] == "https://h/x-1.tar"

def test_pipe_urls_only_where_the_operator_allows_them():
    with pytest.raises(TrainingError, match="runs a shell command"):
        shard_urls("pipe:curl -s http://example.invalid/{0..1}.tar")
    assert shard_urls("pipe:cat a{0..1}.tar", allow_pipe=True) == ["pipe:cat a0.tar", "pipe:cat a1.tar"]


def test_train_py_makes_shards_from_a_folder_without_comfyui(clips, tmp_path):
    """The data tool is part of train.py and needs neither ComfyUI nor a GPU."""
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--make-shards", str(clips[0]),
                           "--shards", str(tmp_path / "s-%03d.tar"), "--clips-per-shard", "3"],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "wrote 8 clips into 3 shard(s)" in done.stdout
    items = read(shard_urls(str(tmp_path / "s-{000..002}.tar")))
    assert sorted(i["caption"] for i in items) == sorted(clips[1].values())


def stream_of(urls, workers=2, batch_size=1):
    from videoldm_core.training.streamed_batches import StreamedBatches

    clips = ShardClips(urls, ClipSpec(frames=4, fps=15.0, height=32, width=32, crop="random"), seed=5, shuffle=3)
    return StreamedBatches(clips, batch_size, encode=lambda items: {"frames": torch.stack([i["frames"] for i in items])},
                           seed=5, workers=workers)


def test_a_resumed_stream_goes_on_where_training_left_it(shards):
    """Each worker restarts after the last clip training used, in its turn: a resumed run trains on
    exactly the clips, crops and per-position seeds of an uninterrupted one."""
    out, _ = shards
    urls = shard_urls(str(out / "clips-{000000..000003}.tar"))
    whole = stream_of(urls)
    steps = [whole(step) for step in range(12)]   # a pass and a half over 8 clips, two workers
    for stop in (4, 5):   # resumed where worker 0's turn is next, and where worker 1's is
        first = stream_of(urls)
        before = [first(step) for step in range(stop)]
        resumed = stream_of(urls)
        resumed.load_state_dict(first.state_dict(), stop)
        after = [resumed(step) for step in range(stop, 12)]
        assert [b["keys"] for b in before + after] == [b["keys"] for b in steps]
        assert all(torch.equal(a["frames"], b["frames"]) and torch.equal(a["sample_seeds"], b["sample_seeds"])
                   for a, b in zip(before + after, steps))


def test_a_sigterm_from_outside_leaves_the_data_workers_serving_and_their_own_process_ends_them(shards, monkeypatch):
    """Slurm signals every process of a job, and torchrun its ranks' process groups, before a stop: a
    data worker that ended on it took its queued clips with it, and the step its training process was
    finishing failed before the stop and checkpoint. A worker ignores a SIGTERM from anyone but its
    training process, which still ends it at once, with status 0 (its loader's shutdown, and
    multiprocessing's terminate at exit: a worker ignoring that hung the exit)."""
    import datetime
    import multiprocessing
    import os
    import signal
    import subprocess
    import sys
    import time

    from videoldm_core.training import streamed_batches

    monkeypatch.setattr(streamed_batches, "CLIP_TIMEOUT", datetime.timedelta(seconds=20))   # a dead worker's wait
    urls = shard_urls(str(shards[0] / "clips-{000000..000003}.tar"))
    stream = stream_of(urls, workers=2)
    first = stream(0)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    kill = "import os, signal, sys\nfor pid in sys.argv[1:]: os.kill(int(pid), signal.SIGTERM)"
    for _ in range(2):   # the scheduler's, then the launcher's: from other processes
        subprocess.run([sys.executable, "-c", kill, *(str(w.pid) for w in workers)], check=True)
    time.sleep(1)
    later = [stream(step) for step in range(1, 6)]
    assert all(worker.is_alive() for worker in workers)
    whole = stream_of(urls, workers=2)
    assert [b["keys"] for b in [first, *later]] == [whole(step)["keys"] for step in range(6)]
    del whole
    signalled = time.monotonic()
    os.kill(workers[0].pid, signal.SIGTERM)   # from the training process
    workers[0].join(timeout=10)
    assert workers[0].exitcode == 0 and time.monotonic() - signalled < 5


def test_a_stream_goes_forward_only_and_resumes_only_with_its_own_workers_and_settings(shards, monkeypatch):
    from videoldm_core.training.streamed_batches import StreamedBatches

    out, _ = shards
    urls = shard_urls(str(out / "clips-{000000..000003}.tar"))
    stream = stream_of(urls, workers=0)
    stream(0)
    with pytest.raises(TrainingError, match="goes forward only"):
        stream(3)
    other = stream_of(urls, workers=2)
    with pytest.raises(TrainingError, match="resume with data.workers = 0"):
        other.load_state_dict(stream.state_dict(), 1)
    with pytest.raises(TrainingError, match="holds no position"):
        other.load_state_dict(None, 1)
    saved = stream.state_dict()
    spec = ClipSpec(frames=4, fps=15.0, height=32, width=32, crop="random")
    for changed, named in ((dict(shuffle=4), "'shuffle'"), (dict(seed=6), "'seed'"), (dict(flip=True), "'flip'"),
                           (dict(urls=urls[::-1]), "'shards'"), (dict(spec=replace(spec, frames=5)), "'spec.frames'")):
        settings = {**dict(urls=urls, spec=spec, seed=5, shuffle=3), **changed}
        elsewhere = StreamedBatches(ShardClips(**settings), 1, encode=lambda items: {}, seed=5, workers=0)
        with pytest.raises(TrainingError, match=rf"holds positions in another stream of clips: \[{named}\] differ"):
            elsewhere.load_state_dict(saved, 1)
    # a checkpoint written before streams stated their identity: its passes were dealt alike where the
    # shards divide among the readers, and not otherwise
    before = {k: v for k, v in saved.items() if k != "stream"}
    stream_of(urls, workers=0).load_state_dict(before, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(TrainingError, match="written by an earlier version, which dealt 4 shards to 3 readers"):
        stream_of(urls, workers=0).load_state_dict(before, 1)


def test_augmentation_is_one_draw_per_clip_and_changes_from_pass_to_pass(shards):
    """Random crop and flip: all frames of a clip get the same window and flip (each draw is the
    clip's frames cut at one height and maybe mirrored, as a whole), and a clip's next pass draws anew."""
    out, _ = shards
    shard = [str(out / "clips-000000.tar")]
    spec = ClipSpec(frames=4, fps=15.0, height=24, width=32, crop="random")   # 32 px frames: windows at 9 heights
    draws = [i["frames"] for i in ShardClips(shard, spec, seed=1, shuffle=0, passes=8, flip=True) if i["key"] == "000000000"]
    [whole] = [i["frames"] for i in ShardClips(shard, ClipSpec(frames=4, fps=15.0, height=32, width=32), shuffle=0, passes=1)
               if i["key"] == "000000000"]
    placed = []
    for draw in draws:
        found = [(y, f) for y in range(9) for f in (False, True)
                 if torch.equal(draw, (whole.flip(-1) if f else whole)[:, :, y:y + 24])]
        assert found, "a draw that is not one window of the whole clip"
        placed.append(found[0])
    assert len(draws) == 8 and len(set(placed)) > 2 and {f for _, f in placed} == {False, True}


TORCHRUN_READER = """
import json, sys, torch
from videoldm_core.training.distributed import gather_to_main, init_world
from videoldm_core.training.data import ClipSpec
from videoldm_core.training.shards import ShardClips, shard_urls
from videoldm_core.training.streamed_batches import StreamedBatches

world = init_world()   # torchrun's RANK / WORLD_SIZE / MASTER_ADDR: a real gloo process group
clips = ShardClips(shard_urls(sys.argv[1]), ClipSpec(frames=4, fps=15.0, height=32, width=32), seed=5, shuffle=4)
stream = StreamedBatches(clips, 1, encode=lambda items: {}, seed=5, workers=2)
keys = [stream(step, world.rank, world.size)["keys"][0] for step in range(int(sys.argv[3]))]
with open(f"{sys.argv[2]}/keys-{world.rank}.json", "w") as f:   # each rank's own log
    json.dump({"rank": world.rank, "world": world.size, "keys": keys, "positions": stream.state_dict()["positions"]}, f)
everyone = gather_to_main(keys, world)
if world.is_main:
    with open(f"{sys.argv[2]}/gathered.json", "w") as f:
        json.dump(everyone, f)
torch.distributed.destroy_process_group()
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_ranks_with_two_workers_each_read_disjoint_samples_covering_every_clip(shards, tmp_path):
    """A real `torchrun --nproc_per_node 2` (c10d rendezvous on 127.0.0.1) of the streamed training
    data: each rank's StreamedBatches with 2 DataLoader worker processes; over one pass (8 clips in
    4 shards: 4 steps x 1 clip per rank) the keys the ranks log are disjoint and cover every clip."""
    import json
    import os
    import subprocess
    import sys

    from devtools.paths import REPO_ROOT

    out, _ = shards
    (tmp_path / "reader.py").write_text(TORCHRUN_READER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
                          str(tmp_path / "reader.py"), str(out / "clips-{000000..000003}.tar"), str(tmp_path), "4"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    logs = [json.loads((tmp_path / f"keys-{rank}.json").read_text()) for rank in (0, 1)]
    assert [(log["rank"], log["world"]) for log in logs] == [(0, 2), (1, 2)]
    assert all(sorted(log["positions"]) == ["0", "1"] for log in logs)   # both workers of each rank read
    assert not set(logs[0]["keys"]) & set(logs[1]["keys"])
    assert sorted(logs[0]["keys"] + logs[1]["keys"]) == [f"{i:09d}" for i in range(8)]
    assert json.loads((tmp_path / "gathered.json").read_text()) == [log["keys"] for log in logs]


class StalledClips(torch.utils.data.IterableDataset):
    """A data worker slow to its first clip (a resumed stream reads its pass through to its position),
    then stuck on its second (a shard download that hangs)."""
    start: dict = {}

    def __iter__(self):
        import time
        for index, delay in enumerate((3, 60)):
            time.sleep(delay)
            yield {"position": [0, 0, index], "skipped": 0, "key": f"clip{index}"}


def test_a_stalled_data_worker_stops_its_rank_by_name_before_the_others_time_out(monkeypatch, capsys):
    """A rank whose worker hangs waited forever in its DataLoader while the other ranks waited in the
    step's all-reduce, until the collective timed out there and named a healthy rank. The first clip
    may take longer (FIRST_CLIP_TIMEOUT): all ranks wait for it before the first step."""
    import datetime
    import time

    from videoldm_core.training import streamed_batches

    monkeypatch.setattr(streamed_batches, "CLIP_TIMEOUT", datetime.timedelta(seconds=1))
    monkeypatch.setattr(streamed_batches, "FIRST_CLIP_TIMEOUT", datetime.timedelta(seconds=20))
    stream = streamed_batches.StreamedBatches(StalledClips(), 1, lambda items: {}, workers=1)
    stream.wait_for_first_clip()   # 3 s: past the clip timeout, within the first clip's
    assert "this process: waiting for the first clip" in capsys.readouterr().out
    assert stream(0)["keys"] == ["clip0"]
    started = time.perf_counter()
    with pytest.raises(TrainingError, match=r"this process: no clip came from its 1 data worker\(s\) in 0.0166667 min; "
                                            r"a worker stalled"):
        stream(1)
    assert time.perf_counter() - started < 30

"""Real torch.distributed: two gloo ranks on the CPU through torchrun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine
from engine import replay, train
from engine.data import image_files
from engine.evaluation.scoring import VALIDATION, score_images, summarise
from profiling.records import read_config, read_jsonl
from profiling.report.__main__ import main as report
from profiling.report.analysis import analyse
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[3]
# every step from the 11th on a spike (0 x its running median), recorded with its batch: what the records hold
ARGS = [*TINY, "--batch-size", "4", "--checkpoint-every", "3", "--explosion-factor", "0"]


def torchrun(args, cwd, nproc=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "engine.train",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run_dir):
    return torch.load(Path(run_dir) / "checkpoints" / "last.pt", weights_only=True)


def losses(run_dir):
    return [r["loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-rank run of 12 steps (3 decoding into /dev/shm, then 9 resumed from the data cache, checkpointing every
    5: the second job has steady steps past its warm-up, for the report, and a checkpoint after step 10, the
    weights step 11 ran with) and a 1-process run of 15 steps, same global batch and seed."""
    root = tmp_path_factory.mktemp("ddp")
    import numpy as np
    from PIL import Image

    from tests.conftest import smooth_image

    folder = root / "hr"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(smooth_image(rng, 40, 48)).save(folder / f"img{i}.png")
    done = torchrun([*ARGS, "--data", str(folder), "--steps", "3", "--name", "two", "--val", str(folder),
                     "--data-cache", "off"], root)  # fmt: skip
    (root / "two.err").write_text(done.stderr)
    done = torchrun(["--resume", "runs/two", "--steps", "12", "--data-cache", "", "--checkpoint-every", "5"], root)
    (root / "resumed.err").write_text(done.stderr)
    old = os.getcwd()
    os.chdir(root)
    try:
        train.main([*ARGS, "--data", str(folder), "--steps", "15", "--name", "one"])
    finally:
        os.chdir(old)
    return root


def test_two_ranks_hold_identical_weights_equal_to_one_process(runs):
    two, one = weights(runs / "runs" / "two"), runs / "runs" / "one"
    assert two["world_size"] == 2 and two["ranks_agree"] is True and two["step"] == 12
    # fp32 sums over 2 ranks vs 1 batch run in another order: equal to 1e-4 after 12 Adam steps
    assert losses(runs / "runs" / "two") == pytest.approx(losses(one)[:12], rel=1e-4)


def test_rank_zero_alone_writes_metrics_and_checkpoints(runs):
    folder = runs / "runs" / "two"
    assert len(read_jsonl(folder / "metrics.jsonl")) == 12
    saved = [
        "best.pt",
        "last.pt",
        "step_00000010.pt",
        "step_00000012.pt",
    ]  # every 5 from step 3, 2 kept, validated at 12
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == saved
    assert len(read_jsonl(folder / "phases.jsonl")) == 12 and len(read_jsonl(folder / "phases.rank1.jsonl")) == 12
    assert (folder / "gpu.rank1.jsonl").exists() and not list(folder.glob("metrics.rank*"))
    env = read_jsonl(folder / "env.jsonl")[0]
    assert env["world_size"] == 2 and [r["seed"] for r in env["ranks"]] == [10, 11]
    assert "allreduce_ms" in read_jsonl(folder / "phases.rank1.jsonl")[-1]


def samples(event):
    return sorted(zip(event["images"], map(tuple, event["boxes"]), strict=True))


def test_a_spike_under_ddp_records_the_global_batch_and_replays_it_like_with_like(runs):
    """Steps 11 and 12 are recorded with both ranks' shares: the four samples the one-process run records at the
    same steps, with the same losses. Step 11's batch replayed with the weights it ran with (the checkpoint after
    step 10) gives back the losses averaged over the ranks and the averaged gradient's norm that it logged."""
    two, one = runs / "runs" / "two", runs / "runs" / "one"
    events = {e["step"]: e for e in read_jsonl(two / "explosions.jsonl")}
    alone = {e["step"]: e for e in read_jsonl(one / "explosions.jsonl")}
    assert sorted(events) == [11, 12]
    for step, event in events.items():
        assert event["world_size"] == 2 and len(event["images"]) == 4 and samples(event) == samples(alone[step])
        assert event["losses"] == pytest.approx(alone[step]["losses"], rel=1e-4)
    *each, (_, _, _, losses, norm) = replay.replay(two, events[11], two / "checkpoints" / "step_00000010.pt")
    assert [row[1] for row in each] == events[11]["images"]
    assert losses == pytest.approx(events[11]["losses"], rel=1e-4) and norm == pytest.approx(
        events[11]["grad_norm"], rel=1e-4
    )


def test_the_node_decodes_the_data_once_and_leaves_no_shared_memory_behind(runs):
    said = [line for line in (runs / "two.err").read_text().splitlines() if "data decoded once" in line]
    assert len(said) == 1 and "this node's 2 ranks, shared in" in said[0]
    shared_file = Path(said[0].split("shared in ")[1].split(" (")[0])
    assert shared_file.parent.is_dir() and not shared_file.exists()


def test_the_node_s_first_rank_fills_the_data_cache_that_both_map(runs):
    resumed = (runs / "resumed.err").read_text()
    said = [line for line in resumed.splitlines() if line.startswith("data cache:")]
    assert len(said) == 1 and "3 images cached" in said[0]  # the validation set's images: the same, found
    assert "data decoded once" not in resumed  # no copy in /dev/shm
    jobs = [line["data"]["decoded_in"] for line in read_jsonl(runs / "runs" / "two" / "env.jsonl")]
    assert jobs == ["memory", os.path.join(os.environ["XDG_CACHE_HOME"], "irnscope", "data")]


def test_both_ranks_share_the_validation(runs):
    """Each rank scores its share of the images; the logged scores equal one process scoring all of them."""
    logged = read_jsonl(runs / "runs" / "two" / "metrics.jsonl")[-1]
    model = engine.load(runs / "runs" / "two" / "checkpoints" / "step_00000012.pt")
    images = image_files.read_folder(runs / "hr").images[: read_config(runs / "runs" / "two")["val_max_images"]]
    expected = summarise(score_images(model, images, VALIDATION, "cpu"), VALIDATION)
    assert logged["val_psnr_y"] == pytest.approx(expected["settings"]["T=1"]["psnr_y"], abs=1e-4)
    assert logged["val_lr_psnr_y"] == pytest.approx(expected["lr_psnr_y"], abs=1e-4)


def test_report_shows_both_ranks(runs, capsys, monkeypatch):
    monkeypatch.chdir(runs)
    report(["two"])
    out = capsys.readouterr().out
    assert "ranks" in out and "all-reduce" in out
    ranks = analyse("runs/two")["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["allreduce_ms"] > 0 and r["step_ms"] > 0 for r in ranks)


def test_a_two_rank_checkpoint_resumes_in_one_process(runs, tmp_path, monkeypatch):
    """A copy of the two-rank run resumes (the module's run stays as the other tests read it, in any order)."""
    shutil.copytree(runs / "runs" / "two", tmp_path / "runs" / "two")
    monkeypatch.chdir(tmp_path)
    train.main(["--resume", "runs/two", "--steps", "15"])
    resumed = losses("runs/two")
    assert len(resumed) == 15 and resumed == pytest.approx(losses(runs / "runs" / "one"), rel=1e-4)


def _agreement(rank, store_file, results):
    """On two gloo ranks of one node: rank 1 cannot take what rank 0 made (a cache it cannot read, say), and
    the ranks then hold different lists of files."""
    from engine.errors import UserError
    from engine.training import distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    ranks = distributed.Ranks(rank, 2, local_rank=rank)
    loaded = distributed.first_on_each_node(lambda: "sets" if rank == 0 else None, ranks)
    try:
        distributed.same_on_every_rank(["a.png", "b.png"][: 2 - rank], ranks, "a different list of images")
        said = None
    except UserError as err:
        said = str(err)
    results[rank] = (loaded, said)
    torch.distributed.destroy_process_group()


def test_ranks_fall_back_together_and_refuse_to_train_on_different_files(tmp_path):
    """Both ranks get None when one of them could not load (neither waits in a collective the other left),
    and both stop with one line when their files differ."""
    with torch.multiprocessing.Manager() as manager:
        results = manager.dict()
        torch.multiprocessing.spawn(_agreement, args=(str(tmp_path / "store"), results), nprocs=2)
        results = dict(results)
    said = "rank 1 found a different list of images than rank 0 (files that changed"
    assert results[0][0] is None and results[1][0] is None
    assert results[0][1] == results[1][1] and results[0][1].startswith(said)

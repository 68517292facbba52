"""train.py end to end on real TinyStories text tokenized with stories260K's 512-token vocabulary:
the loss goes down with each optimizer and schedule, a resumed run is bitwise identical to an
uninterrupted one, two DDP processes match one process, a time budget stops training, Ctrl-C saves
a checkpoint, and missing data gets a how-to message."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TINY = ["--dim=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--vocab_size=512", "--max_seq_len=32",
        "--batch_size=4", "--eval_iters=2", "--warmup_iters=2", "--log_interval=1"]


@pytest.fixture(scope="module")
def data_dir(shared, tmp_path_factory):
    """data/tok512.model + data/tok512/{train,val}_0000.bin from 2 MiB of TinyStories (about 1M tokens)."""
    import tinystories
    d = tmp_path_factory.mktemp("data")
    shutil.copy(shared / "models" / "tok512.model", d / "tok512.model")
    tinystories.pretokenize(512, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], data_dir=d, workers=1)
    return d


def env(**extra):
    e = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    e.update(extra)
    return e


def train(*args, cwd, torchrun=0, timeout=300, **extra):
    cmd = [sys.executable, str(REPO / "train.py")]
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               str(REPO / "train.py")]
    r = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env(**extra))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def load(out_dir):
    return torch.load(Path(out_dir) / "ckpt.pt", weights_only=True)


def test_no_data_says_how_to_prepare_it(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--dim=64", "--n_layers=5", "--n_kv_heads=4"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=env(STORYLLAMA_DATA=str(tmp_path / "nodata")))
    assert r.returncode == 1
    err = r.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # nothing written before the data is there
    for step in ("python tinystories.py download", "python tinystories.py train_vocab --vocab_size=512",
                 "python tinystories.py pretokenize --vocab_size=512"):
        assert step in err, err
    # the hint keeps the user's --data_dir, and never suggests a command that would fail
    for args, want, never in ((["--data_dir=elsewhere"], "train_vocab --vocab_size=512 --data_dir=elsewhere", None),
                              (["--vocab_size=100"], "at least 260 tokens", "train_vocab --vocab_size=100")):
        r = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env=env(STORYLLAMA_DATA=str(tmp_path / "nodata")))
        assert r.returncode == 1 and want in r.stderr and (never is None or never not in r.stderr), r.stderr


def test_loss_goes_down_and_bits_per_byte(data_dir, tmp_path):
    import dataloader
    out = tmp_path / "out"
    train(*TINY, "--dim=64", "--max_seq_len=64", "--batch_size=16", "--learning_rate=3e-3", "--max_iters=60",
          "--eval_interval=60", "--log_interval=20", f"--data_dir={data_dir}", f"--out_dir={out}", cwd=tmp_path)
    evals = [m for m in metrics(out) if "val_loss" in m]
    logs = [m for m in metrics(out) if "tok_per_s" in m]
    assert [m["iter"] for m in evals] == [0, 60] and [m["iter"] for m in logs] == [20, 40, 60]
    assert evals[0]["val_loss"] == pytest.approx(math.log(512), abs=0.15)  # uniform at init
    assert evals[1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals
    assert logs[-1]["loss"] < logs[0]["loss"]
    bpt = dataloader.split_bytes_per_token("val", 512, "custom", data_dir)
    assert evals[1]["val_bpb"] == pytest.approx(evals[1]["val_loss"] / math.log(2) / bpt)
    assert all(m["tok_per_s"] > 0 and 0 < m["mfu"] < 1 for m in logs)
    ckpt = load(out)
    assert ckpt["iter_num"] == 60 and ckpt["model_args"]["dim"] == 64 and ckpt["config"]["learning_rate"] == 3e-3
    from tokenizer import Tokenizer  # the checkpoint names its vocabulary, for sample.py, export.py and run.c
    assert ckpt["vocab_identity"] == Tokenizer(data_dir / "tok512.model").identity.hex()
    assert not (out / "ckpt.pt.tmp").exists()
    import plot  # plot.py reads what train.py really writes
    run = plot.load_run(out)
    assert [p[0] for p in run["val"]] == [0, 60] and run["val"][1][1] == 60 * 16 * 64 and run["val"][1][2] > 0


def test_muon_and_wsd_lower_the_loss(data_dir, tmp_path):
    """AdamW with cosine is test_loss_goes_down_and_bits_per_byte; Muon with cosine trains in the DDP test."""
    out = tmp_path / "out"
    train(*TINY, "--dim=64", "--max_seq_len=64", "--batch_size=16", "--learning_rate=3e-3", "--muon_lr=0.03",
          "--optimizer=muon", "--lr_schedule=wsd", "--decay_frac=0.5", "--min_lr=3e-4",
          "--max_iters=40", "--eval_interval=40", f"--data_dir={data_dir}", f"--out_dir={out}", cwd=tmp_path)
    evals = [m for m in metrics(out) if "val_loss" in m]
    lrs = {m["iter"]: m["lr"] for m in metrics(out) if "tok_per_s" in m}
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals
    # the log line of iteration i shows the rate iteration i - 1 trained with: after 2 warm-up
    # iterations the peak until half-way (progress = iterations past warm-up / 38), then linear to min_lr
    wsd = lambda it: 3e-3 - 2.7e-3 * max((it - 2) / 38 - 0.5, 0) / 0.5  # noqa: E731
    assert lrs[2] < 3e-3 and lrs[3] == lrs[20] == 3e-3
    assert [lrs[i + 1] for i in (25, 30, 39)] == pytest.approx([wsd(25), wsd(30), wsd(39)])
    ckpt = load(out)
    assert len(ckpt["optimizer"]) == 2 and ckpt["config"]["optimizer"] == "muon" and ckpt["train_seconds"] > 0


def test_resume_is_bitwise_identical(data_dir, tmp_path):
    """8 iterations straight vs 4 + resume 4, with dropout (RNG), 2 micro-batches (data position) and
    both optimizers (Muon's momentum, AdamW's moments)."""
    common = [*TINY, "--dropout=0.1", "--gradient_accumulation_steps=2", "--lr_decay_iters=8", "--optimizer=muon",
              "--always_save_checkpoint=True", "--eval_interval=4", f"--data_dir={data_dir}"]
    train(*common, "--max_iters=8", f"--out_dir={tmp_path / 'a'}", cwd=tmp_path)
    train(*common, "--max_iters=4", f"--out_dir={tmp_path / 'b'}", cwd=tmp_path)
    half = load(tmp_path / "b")
    train("--init_from=resume", "--max_iters=8", f"--out_dir={tmp_path / 'b'}", cwd=tmp_path)
    a, b = load(tmp_path / "a"), load(tmp_path / "b")
    assert a["iter_num"] == b["iter_num"] == 8 and half["iter_num"] == 4
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert not torch.equal(a["model"][k], half["model"][k]), k  # the second half did train
    assert len(a["optimizer"]) == len(b["optimizer"]) == 2  # Muon, AdamW
    for oa, ob in zip(a["optimizer"], b["optimizer"]):
        assert oa["state"].keys() == ob["state"].keys() and oa["state"]
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    resumed = metrics(tmp_path / "b")
    assert {"iter": 4, "event": "resume"} in resumed
    # the logged losses after the resume repeat the uninterrupted run's
    la = {m["iter"]: m["loss"] for m in metrics(tmp_path / "a") if "loss" in m}
    lb = {m["iter"]: m["loss"] for m in resumed if "loss" in m}
    assert la == lb


def test_ddp_two_processes_match_one(data_dir, tmp_path):
    """torchrun gloo, 2 processes x 1 micro-batch vs 1 process x 2 micro-batches, with Muon: the same
    data, the same averaged gradients; only the order of float additions differs."""
    common = [*TINY, "--gradient_accumulation_steps=2", "--max_iters=6", "--eval_interval=6", "--optimizer=muon",
              "--learning_rate=3e-3", f"--data_dir={data_dir}"]
    one = train(*common, f"--out_dir={tmp_path / 'one'}", cwd=tmp_path)
    two = train(*common, f"--out_dir={tmp_path / 'two'}", cwd=tmp_path, torchrun=2)
    assert "2 processes x 1" in two.stdout and "1 processes x 2" in one.stdout
    a, b = load(tmp_path / "one"), load(tmp_path / "two")
    assert len(b["rng"]) == 2 and b["data_state"]["micro_batches"] == 2
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=2e-5, rtol=1e-4, msg=k)
    la = [m["loss"] for m in metrics(tmp_path / "one") if "loss" in m]
    lb = [m["loss"] for m in metrics(tmp_path / "two") if "loss" in m]
    assert len(la) == 6 and la == pytest.approx(lb, abs=1e-4)
    assert la[-1] < la[0]


def test_as_typed_then_ctrl_c_saves(data_dir, tmp_path):
    """The README's command, exactly as typed (data found via STORYLLAMA_DATA); Ctrl-C once it trains."""
    p = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--dim=64", "--n_layers=5", "--n_kv_heads=4"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env(STORYLLAMA_DATA=str(data_dir)))
    lines, deadline = [], time.time() + 240
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("iter 0: train loss") or time.time() > deadline:
                break
        assert any(line.startswith("iter 0: train loss") for line in lines), "".join(lines)
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, "".join(lines) + rest
    assert "interrupted at iteration" in rest
    ckpt = load(tmp_path / "out")
    assert ckpt["iter_num"] >= 1 and ckpt["iter_num"] == ckpt["data_state"]["iter"]
    assert (ckpt["model_args"]["dim"], ckpt["model_args"]["n_layers"], ckpt["model_args"]["n_kv_heads"]) == (64, 5, 4)
    evals = [m for m in metrics(tmp_path / "out") if "val_bpb" in m]
    assert evals and evals[0]["iter"] == 0
    # and the run continues from there
    train("--init_from=resume", f"--max_iters={ckpt['iter_num'] + 1}", "--eval_iters=1", cwd=tmp_path,
          STORYLLAMA_DATA=str(data_dir))
    assert load(tmp_path / "out")["iter_num"] == ckpt["iter_num"] + 1


def test_ctrl_c_during_evaluation_stops_at_once(data_dir, tmp_path):
    """Ctrl-C in the middle of a long evaluation stops the run within seconds (it used to finish the
    evaluation first: minutes), keeps the last completed iteration's checkpoint and records no
    partial evaluation."""
    out = tmp_path / "out"
    train(*TINY, "--max_iters=4", "--eval_interval=4", f"--data_dir={data_dir}", f"--out_dir={out}", cwd=tmp_path)
    # resumed at 4 (no evaluation there): iterations 5 and 6, then an evaluation of 2 x 100,000 batches
    p = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--init_from=resume", "--max_iters=8",
                          "--eval_interval=6", "--eval_iters=100000", f"--out_dir={out}"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("iter 6 |"):
                break
        t0 = time.time()
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=120)
        waited = time.time() - t0
    finally:
        p.kill()
    assert p.returncode == 130, "".join(lines) + rest
    assert waited < 30, waited
    assert "interrupted at iteration 6: saved" in rest
    assert load(out)["iter_num"] == 6
    assert [m["iter"] for m in metrics(out) if "val_loss" in m] == [0, 4]


def test_time_budget_stops_training(data_dir, tmp_path):
    """A 3-second budget: training stops on time whatever max_iters says, with the learning rate at
    its floor, and the checkpoint and the log say how many iterations it got."""
    out = tmp_path / "out"
    r = train(*TINY, "--max_minutes=0.05", "--max_iters=1000000", "--eval_interval=1000000", "--warmup_iters=0",
              "--min_lr=1e-5", f"--data_dir={data_dir}", f"--out_dir={out}", cwd=tmp_path)
    ckpt, logs = load(out), [m for m in metrics(out) if "tok_per_s" in m]
    assert 3.0 <= ckpt["train_seconds"] < 3.0 + 5.0 and 0 < ckpt["iter_num"] == logs[-1]["iter"]
    assert f"time budget spent: {ckpt['iter_num']} iterations" in r.stdout
    lrs = [m["lr"] for m in logs]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 1e-4  # decayed with time, to near min_lr
    assert [m["iter"] for m in metrics(out) if "val_loss" in m] == [0, ckpt["iter_num"]]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_dtypes(data_dir, tmp_path, dtype):
    out = tmp_path / "out"
    train(*TINY, "--max_iters=3", "--eval_interval=3", f"--dtype={dtype}", f"--data_dir={data_dir}",
          f"--out_dir={out}", cwd=tmp_path)
    ckpt = load(out)
    assert ckpt["iter_num"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert (ckpt["scaler"] is not None) == (dtype == "float16")  # fp16 trains with a GradScaler

"""train.py end to end on real TinyStories text tokenized with stories260K's 512-token vocabulary:
the loss goes down with each optimizer and schedule, a resumed run is bitwise identical to an
uninterrupted one, two DDP processes match one process, a time budget stops training, Ctrl-C saves
a checkpoint, and missing data gets a how-to message."""
import json
import math
import os
import re
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


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
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


@pytest.mark.slow  # a training run in a process of its own
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
    # and carries it: a copy in out_dir that the checkpoint names (tests/test_out_dir.py uses it)
    assert ckpt["tokenizer"] == "tok512.model"
    assert (out / "tok512.model").read_bytes() == (data_dir / "tok512.model").read_bytes()
    assert not (out / "ckpt.pt.tmp").exists()
    import plot  # plot.py reads what train.py really writes
    run = plot.load_run(out)
    assert [p[0] for p in run["val"]] == [0, 60] and run["val"][1][1] == 60 * 16 * 64 and run["val"][1][2] > 0


@pytest.mark.slow  # a training run in a process of its own
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


# dropout (RNG), 2 micro-batches (data position) and both optimizers (Muon's momentum, AdamW's moments)
RESUME = [*TINY, "--dropout=0.1", "--gradient_accumulation_steps=2", "--lr_decay_iters=8", "--optimizer=muon",
          "--always_save_checkpoint=True"]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """An uninterrupted 8-iteration run: what every interrupted and resumed run must end bitwise equal to."""
    out = tmp_path_factory.mktemp("straight") / "a"
    train(*RESUME, "--eval_interval=4", "--max_iters=8", f"--data_dir={data_dir}", f"--out_dir={out}", cwd=out.parent)
    return out


def assert_same_run(a, b):
    assert a["iter_num"] == b["iter_num"] == 8 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(a["optimizer"]) == len(b["optimizer"]) == 2  # Muon, AdamW
    for oa, ob in zip(a["optimizer"], b["optimizer"]):
        assert oa["state"].keys() == ob["state"].keys() and oa["state"]
        for sa, sb in zip(oa["state"].values(), ob["state"].values()):
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow  # a training run in a process of its own
def test_resume_is_bitwise_identical(data_dir, straight, tmp_path):
    """8 iterations straight vs 4 + resume 4."""
    common = [*RESUME, "--eval_interval=4", f"--data_dir={data_dir}"]
    train(*common, "--max_iters=4", f"--out_dir={tmp_path / 'b'}", cwd=tmp_path)
    half = load(tmp_path / "b")
    r = train("--init_from=resume", "--max_iters=8", f"--out_dir={tmp_path / 'b'}", cwd=tmp_path)
    assert f"resumed from iteration 4 of {tmp_path / 'b' / 'ckpt.pt'}; settings changed: max_iters 4 -> 8" in r.stdout
    a, b = load(straight), load(tmp_path / "b")
    assert half["iter_num"] == 4
    assert_same_run(a, b)
    for k in a["model"]:
        assert not torch.equal(a["model"][k], half["model"][k]), k  # the second half did train
    resumed = metrics(tmp_path / "b")
    assert {"iter": 4, "event": "resume"} in resumed
    # the logged losses after the resume repeat the uninterrupted run's
    la = {m["iter"]: m["loss"] for m in metrics(straight) if "loss" in m}
    lb = {m["iter"]: m["loss"] for m in resumed if "loss" in m}
    assert la == lb


@pytest.mark.slow  # a training run in a process of its own
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


@pytest.mark.slow  # a training run in a process of its own
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


@pytest.mark.slow  # a training run in a process of its own
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


@pytest.mark.slow  # a training run in a process of its own
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
    # decayed with time towards min_lr (by iterations it would still be at the peak): how near depends on
    # when the last iteration started, which a busy machine makes early
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.3 * lrs[0], lrs
    assert [m["iter"] for m in metrics(out) if "val_loss" in m] == [0, ckpt["iter_num"]]


@pytest.mark.slow  # a training run in a process of its own
def test_a_busy_machine_is_named_at_the_end(data_dir, tmp_path):
    """A time-budgeted run beside a process that keeps a core busy says so when it ends: the story
    of a 3-minute run on a busy machine is worse, and the user should know why."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        r = train(*TINY, "--max_minutes=0.03", "--max_iters=1000000", "--eval_interval=1000000",
                  f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}", cwd=tmp_path)
    finally:
        hog.kill()
        hog.wait()
    assert re.search(r"note: other processes kept [0-9.]+ of this machine's \d+ cores busy during the run, so it "
                     r"trained slower than on a quiet machine and the time budget bought fewer iterations", r.stdout), \
        r.stdout[-1500:]


@pytest.mark.slow  # a training run in a process of its own
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_dtypes(data_dir, tmp_path, dtype):
    out = tmp_path / "out"
    train(*TINY, "--max_iters=3", "--eval_interval=3", f"--dtype={dtype}", f"--data_dir={data_dir}",
          f"--out_dir={out}", cwd=tmp_path)
    ckpt = load(out)
    assert ckpt["iter_num"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert (ckpt["scaler"] is not None) == (dtype == "float16")  # fp16 trains with a GradScaler


# -----------------------------------------------------------------------------
# checkpoint safety: kills, full disks, a second run, divergence, and one-line refusals

# Runs train.py with open() wrapped for ckpt.pt's temp files, so a test can stop or fail a checkpoint
# write part way. HOOK="stall:N:MARK": the N-th checkpoint write of the process writes its first block,
# creates the file MARK and sleeps (to be SIGKILLed); "full:N": the N-th one fails with ENOSPC after
# 1000 bytes (a full disk).
HOOK = r"""
import builtins, errno, os, runpy, sys, time
kind, nth, mark = (os.environ["HOOK"] + "::").split(":")[:3]
real_open, saves = builtins.open, [0]

class Hooked:
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, b):
        if kind == "full" and self.written + len(b) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.f.write(b)
        self.written += len(b)
        if kind == "stall":
            self.f.flush()
            real_open(mark, "w").close()
            time.sleep(3600)
        return n
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

def hooked_open(path, mode="r", *args, **kwargs):
    f = real_open(path, mode, *args, **kwargs)
    if os.path.basename(str(path)).startswith("ckpt.pt.tmp"):
        saves[0] += 1
        if saves[0] == int(nth):
            return Hooked(f)
    return f

builtins.open = hooked_open
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as `python train.py` would
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def hooked(hook, *args, cwd):
    return subprocess.Popen([sys.executable, "-c", HOOK, str(REPO / "train.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(HOOK=hook))


def temps(out):
    return sorted(p.name for p in Path(out).glob("ckpt.pt.tmp*"))


def kill_when(proc, ready, timeout=240):
    """SIGKILL proc once ready() is true (polled), as a crash or an OOM killer would."""
    deadline = time.time() + timeout
    try:
        while not ready() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert ready(), proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # a training run in a process of its own
def test_sigkill_anywhere_resumes_bitwise_identically(data_dir, straight, tmp_path):
    """Checkpoints every iteration; SIGKILL in the middle of a checkpoint write, between iterations and
    again mid-write, each time resumed: the run ends bitwise equal to the uninterrupted one (evaluations
    touch no RNG or data position, so their number does not matter)."""
    out = tmp_path / "c"
    common = [*RESUME, "--eval_interval=1", f"--data_dir={data_dir}", f"--out_dir={out}"]
    mark = tmp_path / "stalled"
    p = hooked(f"stall:2:{mark}", *common, "--max_iters=8", cwd=tmp_path)  # stalls in the iteration-2 write
    kill_when(p, mark.exists)
    mark.unlink()
    assert load(out)["iter_num"] == 1 and len(temps(out)) == 1  # the old ckpt.pt and a torn temp file
    p = hooked("none:0", "--init_from=resume", *common[-2:], cwd=tmp_path)  # killed once iteration 4 logs
    kill_when(p, lambda: any(m.get("iter", 0) >= 4 and "loss" in m for m in metrics(out)))
    assert load(out)["iter_num"] in (3, 4)  # killed before or after iteration 4's checkpoint
    p = hooked(f"stall:2:{mark}", "--init_from=resume", *common[-2:], cwd=tmp_path)  # its second write
    kill_when(p, mark.exists)
    at = load(out)["iter_num"]
    assert 4 <= at < 8, at
    r = train("--init_from=resume", f"--out_dir={out}", cwd=tmp_path)
    assert f"resumed from iteration {at} of" in r.stdout
    assert_same_run(load(straight), load(out))
    assert temps(out) == []  # the torn temp files of the killed runs were cleared


@pytest.mark.slow  # a training run in a process of its own
def test_disk_full_keeps_the_last_checkpoint(data_dir, tmp_path):
    """A checkpoint write that fails (ENOSPC) used to print torch's 'unexpected pos' traceback and leave
    ckpt.pt.tmp filling the disk. Now: one line, the temp file removed, the old ckpt.pt intact."""
    out = tmp_path / "out"
    common = [*TINY, "--eval_interval=1", "--always_save_checkpoint=True", f"--data_dir={data_dir}", f"--out_dir={out}"]
    p = hooked("full:2", *common, "--max_iters=4", cwd=tmp_path)
    _, err = p.communicate(timeout=300)
    err = err.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1, err[-3000:]
    assert re.fullmatch(rf"train.py: error: cannot write checkpoint {re.escape(str(out))}/ckpt.pt.tmp\d+: the disk "
                        rf"is full; removed it \({re.escape(str(out))}/ckpt.pt keeps iteration 1\)", err), err
    assert temps(out) == [] and load(out)["iter_num"] == 1
    train("--init_from=resume", f"--out_dir={out}", cwd=tmp_path)  # and the run goes on from there
    assert load(out)["iter_num"] == 4


@pytest.mark.slow  # a training run in a process of its own
def test_second_run_overwrite_and_settings(data_dir, tmp_path):
    """A second train.py on a busy out_dir is refused in one line (they used to share one temp file and
    mix metrics.jsonl); from scratch into an out_dir holding an earlier run's ckpt.pt is refused unless
    --overwrite=True, unless it is the same finished run (nothing to do); a bad --device or a CUDA device on a CPU build of torch is one line."""
    out = tmp_path / "out"
    common = [*TINY, "--eval_interval=1", "--always_save_checkpoint=True", f"--data_dir={data_dir}", f"--out_dir={out}"]
    mark = tmp_path / "stalled"
    busy = hooked(f"stall:1:{mark}", *common, "--max_iters=4", cwd=tmp_path)  # holds the lock, stalled in a write
    try:
        deadline = time.time() + 240
        while not mark.exists() and time.time() < deadline:
            time.sleep(0.05)
        r = subprocess.run([sys.executable, str(REPO / "train.py"), *common], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120, env=env())
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() == (f"train.py: error: --out_dir={out} is in use by another train.py "
                                    f"(pid {busy.pid}); wait for it, or pick another --out_dir"), r.stderr
    finally:
        busy.send_signal(signal.SIGKILL)
        busy.wait()
    train(*common, "--max_iters=2", "--overwrite=True", cwd=tmp_path)  # the lock died with its process
    # the same command again finds its run finished: nothing to do, nothing written (the first command
    # of the README can be repeated)
    before = (out / "ckpt.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()
    r = train(*common, "--max_iters=2", "--device=cpu", cwd=tmp_path)
    assert r.stdout.startswith("nothing to do: ") and r.stderr == "", r.stdout + r.stderr
    assert ((out / "ckpt.pt").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *common, "--max_iters=3"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=env())
    assert r.returncode == 2 and r.stderr.strip() == (
        f"train.py: error: {out / 'ckpt.pt'} holds the checkpoint of an earlier run: continue it with "
        "--init_from=resume, or pass --overwrite=True to train from scratch and replace it"), r.stderr
    assert load(out)["iter_num"] == 2
    for device, words in (("cuda", "use --device=cpu"), ("cuda:1", "use --device=cpu"), ("gpu", "expected cpu, cuda")):
        r = subprocess.run([sys.executable, str(REPO / "train.py"), f"--device={device}"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env=env())
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("train.py: error: --device="), err
        assert words in err, err


@pytest.mark.slow  # a training run in a process of its own
def test_divergence_stops_without_saving(data_dir, tmp_path):
    """A NaN loss (here a learning rate of 1e30 after a good start) stops the run with one line naming
    the iteration; the last good checkpoint is not overwritten with NaN weights, even with
    always_save_checkpoint and an evaluation due."""
    out = tmp_path / "out"
    common = [*TINY, "--eval_interval=2", "--always_save_checkpoint=True", f"--data_dir={data_dir}", f"--out_dir={out}"]
    train(*common, "--max_iters=2", cwd=tmp_path)
    good = (out / "ckpt.pt").read_bytes()
    r = subprocess.run([sys.executable, str(REPO / "train.py"), "--init_from=resume", f"--out_dir={out}",
                        "--max_iters=8", "--learning_rate=1e30"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env())
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1, r.stderr[-3000:]
    assert re.fullmatch(r"train.py: error: the run diverged: the (loss or gradient norm was NaN or inf at iteration [34]|"
                        r"weights hold NaN or inf at iteration 4); stopped without saving \(.*ckpt.pt keeps iteration "
                        r"2\)\. Lower --learning_rate or --grad_clip, or raise --warmup_iters", err[0]), err[0]
    assert (out / "ckpt.pt").read_bytes() == good and temps(out) == []


@pytest.mark.slow  # a training run in a process of its own
def test_bad_shard_is_refused_before_training(data_dir, tmp_path):
    """A shard holding a token id beyond the vocabulary used to kill training mid-run (IndexError)."""
    d = tmp_path / "data"
    shutil.copytree(data_dir, d)
    shard = d / "tok512" / "train_0000.bin"
    raw = bytearray(shard.read_bytes())
    raw[-2:] = (777).to_bytes(2, "little")
    shard.write_bytes(raw)
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, "--max_iters=2", f"--data_dir={d}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env())
    err = r.stderr.strip()
    assert r.returncode == 1 and "\n" not in err, err
    assert err.startswith(f"train.py: error: {shard}: token id 777 at position") and "outside the 512-token" in err
    assert not (tmp_path / "out").exists()

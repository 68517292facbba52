"""
bench/bench_threads.py: training and sampling speed beside another busy process, by thread choice.

    python bench/bench_threads.py [--rounds 5] [--seconds 6]

Two workloads, each run as a fresh process: a training step loop (the stories260K shape, batch
16 x 256, forward + backward + AdamW, as train.py runs it) and greedy generation (the same model,
256 tokens, as sample.py runs it). Each runs with 1 thread, with every core, and with the
default of train.py/sample.py (machine.use_free_cores: the cores other processes leave free, checked
at start and, in training, again at every log line), on an idle machine and with a competing
process that keeps one core busy (a Python busy loop). Rounds interleave every variant; the table
shows the median tokens/s and the ratio to 1 thread under the same load. Linux only.

Last logged run: dev/LOG.md, "## 2026-12-02: training and sampling beside a busy core (bench_threads)".
"""
import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WORK = r"""
import os, sys, time, torch
sys.path.insert(0, sys.argv[1])
from machine import use_free_cores
from model import ModelArgs, Transformer
mode, threads, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4])
if threads == "auto":
    reading = use_free_cores()
else:
    torch.set_num_threads(int(threads))
torch.manual_seed(0)
m = Transformer(ModelArgs(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, multiple_of=4,
                          max_seq_len=256))
tokens, t0, k = 0, None, 0
if mode == "train":
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    x = torch.randint(0, 512, (16, 256))
    while True:
        _, loss = m(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        k += 1
        if k == 2:
            t0 = time.perf_counter()  # after warm-up
        elif k > 2:
            tokens += x.numel()
            if threads == "auto" and k % 10 == 0:
                reading = use_free_cores(reading)
        if t0 and time.perf_counter() - t0 > seconds:
            break
else:
    m.eval()
    start = torch.ones(1, 1, dtype=torch.long)
    m.generate(start, 16, temperature=0.0, stop_tokens=())  # warm-up
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tokens += m.generate(start, 255, temperature=0.0, stop_tokens=()).shape[1] - 1
print(tokens / (time.perf_counter() - t0), torch.get_num_threads())
"""


def run(mode, threads, seconds):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", WORK, str(REPO), mode, threads, str(seconds)], env=env,
                       capture_output=True, text=True, check=True)
    tok_s, used = r.stdout.split()
    return float(tok_s), int(used)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=6.0)
    a = p.parse_args()
    n = len(os.sched_getaffinity(0))
    print(f"{n} cores, load average {os.getloadavg()[0]:.2f} at start, {a.rounds} rounds of {a.seconds:g} s")
    variants = [(mode, t) for mode in ("train", "sample") for t in ("1", str(n), "auto")]
    results = {}
    for load in ("idle", "one core busy"):
        hog = None
        if load != "idle":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            for r in range(a.rounds):
                for mode, t in variants[r % len(variants):] + variants[:r % len(variants)]:
                    results.setdefault((load, mode, t), []).append(run(mode, t, a.seconds))
        finally:
            if hog:
                hog.kill()
    print("| workload | load | threads | tokens/s (median) | threads used (auto) | vs 1 thread |")
    print("|---|---|---|---|---|---|")
    for mode in ("train", "sample"):
        for load in ("idle", "one core busy"):
            base = statistics.median(v for v, _ in results[(load, mode, "1")])
            for t in ("1", str(n), "auto"):
                vals = results[(load, mode, t)]
                med = statistics.median(v for v, _ in vals)
                used = "/".join(str(u) for _, u in vals) if t == "auto" else ""
                print(f"| {mode} | {load} | {t} | {med:,.0f} | {used} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()

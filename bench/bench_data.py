"""
bench/bench_data.py: pretokenize throughput (stories/s) and peak memory, 1 worker vs all cores.

    python bench/bench_data.py [--repeats 5] [--scale 8] [--vocabs 512,llama2]

Runs `python tinystories.py pretokenize` as a fresh process on the shared TinyStories text
(../shared/data/tinystories, about 7,000 stories), for our 512-token vocabulary and for the Llama 2
tokenizer, with --workers=1 (the baseline) and --workers=<all cores>. "x{scale}" rows repeat the
same files `scale` times, so process start-up weighs as little as on the real 2M-story dataset.
Reports the median over repeats of: wall time of the whole command, stories/s over that wall
time, CPU seconds of the process tree (shows the cost of parallelism even on a busy machine), and
the peak resident memory of the whole process tree (parent + workers, sampled every 5 ms from
/proc). Linux only. Scratch files go to bench/out/ (gitignored).

Last logged run: dev/LOG.md, "## 2026-11-21: pretokenize speed (bench_data)".
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import dataloader  # noqa: E402  (flat scripts: the repo root is not a package)
import tinystories as ts  # noqa: E402

SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))

OUT = REPO / "bench" / "out" / "data"


def tree_rss(pid):
    """Resident bytes of pid and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass  # the process ended while we looked
    return total


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # all waited-for descendants, workers too
    return r.ru_utime + r.ru_stime


def run(cmd):
    """(wall seconds, CPU seconds, peak tree RSS bytes) of one command."""
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.005)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return seconds, children_cpu() - cpu0, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=int, default=8)
    parser.add_argument("--vocabs", default="512,llama2", help="vocabularies to time: sizes, or llama2")
    args = parser.parse_args()

    src = SHARED / "tinystories"
    files = sorted(src.iterdir())
    shutil.rmtree(OUT, ignore_errors=True)
    scaled = OUT / f"x{args.scale}"
    scaled.mkdir(parents=True)
    for i in range(args.scale):
        for f in files:
            os.symlink(f, scaled / f"{i:02d}-{f.name}")
    n_stories = sum(1 for _ in ts.iter_split(files))
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"input: {src} ({n_stories} stories), and x{args.scale} of it; median of {args.repeats} runs")

    data = OUT / "d"
    subprocess.run([sys.executable, "tinystories.py", "train_vocab", "--vocab_size=512", "--input", str(src),
                    "--data_dir", str(data)], cwd=REPO, check=True, capture_output=True)
    shutil.copy(SHARED / "models" / "tokenizer.model", dataloader.tokenizer_path(32000, "llama2", data))
    print("| vocab | input | workers | wall s | stories/s | speed-up | CPU s | peak RSS (tree) |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab in args.vocabs.split(","):
        source, size = ("llama2", 32000) if vocab == "llama2" else ("custom", int(vocab))
        flag = "--vocab_source=llama2" if vocab == "llama2" else f"--vocab_size={size}"
        for inp, n in ((src, n_stories), (scaled, n_stories * args.scale)):
            base = None
            for workers in (1, os.cpu_count()):
                times, cpus, peaks = [], [], []
                for _ in range(args.repeats):
                    shutil.rmtree(dataloader.shard_dir(size, source, data), ignore_errors=True)
                    s, c, p = run([sys.executable, "tinystories.py", "pretokenize", flag,
                                "--input", str(inp), "--data_dir", str(data), f"--workers={workers}"])
                    times.append(s)
                    cpus.append(c)
                    peaks.append(p)
                s, c, p = statistics.median(times), statistics.median(cpus), statistics.median(peaks)
                base = base or s
                name = "llama2 (32000)" if vocab == "llama2" else vocab
                label = "shared" if inp == src else f"shared x{args.scale}"
                print(f"| {name} | {label} | {workers} | {s:.2f} | {n / s:,.0f} | {base / s:.2f}x | {c:.2f} | "
                      f"{p / 2**20:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

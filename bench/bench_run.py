"""Benchmark run.c: tokens/s, weight bytes read per token, and the fraction of the memory roofline.

    make bench                                    (= python bench/bench_run.py)
    python bench/bench_run.py --models 15M,110M --dtypes fp32,q8_0 --runs 5

What it does, all in one run so the numbers compare:
  1. builds `runomp` (vector kernels + OpenMP) and a baseline: the same run.c with -DPLAIN (its plain C
     row-dot kernels, what a straightforward implementation does) at -O3 -march=native -fopenmp;
  2. compiles a streaming-read C kernel (bench/out/bandwidth.c) for the machine's memory read bandwidth
     on transparent huge pages (where run.c keeps the weights), measured just before and just after every
     run: the roofline is that bandwidth divided by the weight bytes a token reads;
  3. exports random-weight models of llama2.c's 15M/42M/110M shapes (dim 288/512/768, 6/8/12 layers and
     heads, vocab 32000) as v3 fp32/bf16/q8_0 under bench/out/ (kept for the next run), plus the real
     stories260K (v0 fp32 as shipped, and re-exported bf16/q8_0);
  4. runs each at -t 0 -n 256 from BOS with 1 thread and all cores, --runs rounds; within a model size
     every measurement (all dtypes, baseline, bandwidth) is interleaved round by round, each round
     starting at a different place, because this VM's bandwidth drifts; prints a markdown table of
     medians (ratios and roofline fractions are paired within a round, then the median taken), then
     the int8/bf16 quality against fp32 on real text (stories260K).
The random models have the rows of BOS and EOS in the (tied) classifier zeroed so greedy decoding never
stops early: every run times 255 tokens.
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from export import load_bin, model_export, read_header  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

OUT = REPO / "bench" / "out"
SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))
SHAPES = {  # llama2.c's stories15M/42M/110M
    "15M": ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256),
    "42M": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, max_seq_len=1024),
    "110M": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, max_seq_len=1024),
}
BANDWIDTH_C = r"""
// Streaming read bandwidth: every thread sums its contiguous slice of a buffer (first touched by that
// thread), either as one sequential stream or as four streams over its four quarters (the pattern
// run.c's kernels read weight rows in). Prints the best GB/s of reps for each pattern.
// argv: MB reps huge(0/1: madvise the buffer for transparent huge pages)
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static float sum1(const float *a, size_t n) {
    float acc[16] = {0};
    for (size_t i = 0; i + 16 <= n; i += 16) { for (int k = 0; k < 16; k++) { acc[k] += a[i + k]; } }
    float t = 0; for (int k = 0; k < 16; k++) { t += acc[k]; } return t;
}
static float sum4(const float *a, size_t n) {
    size_t q = n / 4;
    float acc[4][16] = {{0}};
    for (size_t i = 0; i + 16 <= q; i += 16) {
        for (int r = 0; r < 4; r++) { for (int k = 0; k < 16; k++) { acc[r][k] += a[r * q + i + k]; } }
    }
    float t = 0; for (int r = 0; r < 4; r++) { for (int k = 0; k < 16; k++) { t += acc[r][k]; } } return t;
}
int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argv[1]) * 1024 * 1024, n = bytes / sizeof(float);
    int reps = atoi(argv[2]);
    float *a = aligned_alloc(1 << 21, bytes);
    if (!a) { return 1; }
#ifdef MADV_HUGEPAGE
    madvise(a, bytes, atoi(argv[3]) ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
#endif
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { a[i] = (float)(i & 1023); }
    double sink = 0;
    for (int pattern = 1; pattern <= 4; pattern += 3) {
        double best = 0;
        for (int r = 0; r < reps; r++) {
            double t0 = now(), total = 0;
            #pragma omp parallel reduction(+:total)
            {
                int nt = 1, id = 0;
#ifdef _OPENMP
                nt = omp_get_num_threads(); id = omp_get_thread_num();
#endif
                size_t lo = n * id / nt, hi = n * (id + 1) / nt;
                total += pattern == 1 ? sum1(a + lo, hi - lo) : sum4(a + lo, hi - lo);
            }
            double gbs = bytes / (now() - t0) / 1e9;
            sink += total;
            if (gbs > best) { best = gbs; }
        }
        printf("%.3f ", best);
    }
    printf("%g\n", sink);
    return 0;
}
"""


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"bench_run.py: {' '.join(map(str, cmd))} failed:\n{r.stdout}{r.stderr}")
    return r


def build():
    """runomp via the Makefile, the -DPLAIN baseline and the bandwidth kernel by hand."""
    OUT.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    sh(["make", "-C", str(REPO), "runomp"])
    sh([cc, "-O3", "-march=native", "-fopenmp", "-DPLAIN", "-o", str(OUT / "run_plain"), str(REPO / "run.c"), "-lm"])
    (OUT / "bandwidth.c").write_text(BANDWIDTH_C)
    sh([cc, "-O3", "-march=native", "-fopenmp", "-o", str(OUT / "bandwidth"), str(OUT / "bandwidth.c")])
    return {"fast": REPO / "runomp", "baseline": OUT / "run_plain"}


def bandwidth(threads, huge, mb=1024, reps=8):
    """Best read GB/s over the two access patterns, on 4 KB pages or on transparent huge pages."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="true")
    out = sh([str(OUT / "bandwidth"), str(mb), str(reps), str(int(huge))], env=env).stdout.split()
    return max(float(out[0]), float(out[1]))


def random_model(name, dtype):
    """bench/out/<name>_<dtype>.bin, exported once from a seeded random model."""
    path = OUT / f"{name}_{dtype}.bin"
    if path.exists():
        try:
            h = read_header(path)
            if h["weight_type"] == dtype and h["dim"] == SHAPES[name].dim:
                return path
        except ValueError:
            pass
    print(f"exporting {path.name} ...", file=sys.stderr, flush=True)
    torch.manual_seed(1337)
    model = Transformer(SHAPES[name]).eval()
    with torch.no_grad():
        model.tok_embeddings.weight[1:3] = 0.0  # BOS/EOS logits exactly 0: greedy never picks them
    model_export(model, path, version=3, dtype=dtype)
    return path


def stories_model(dtype):
    src = SHARED / "models" / "stories260K.bin"
    if dtype == "fp32":
        return src
    path = OUT / f"stories260K_{dtype}.bin"
    try:
        read_header(path)  # raises when missing, or written by an older export.py (the size no longer matches)
    except (OSError, ValueError):
        model_export(load_bin(src), path, version=3, dtype=dtype)
    return path


def weight_bytes_per_token(path):
    """Bytes of weights one token reads: every matrix of every layer, the classifier, the norms and one
    embedding row (the whole table only when it is also the classifier)."""
    h = read_header(path)
    dim, hidden, L, V = h["dim"], h["hidden_dim"], h["n_layers"], h["vocab_size"]
    kv_dim = h["n_kv_heads"] * dim // h["n_heads"]
    per_elem = {"fp32": 4.0, "bf16": 2.0, "q8_0": 1.0 + (4.0 / h["group_size"] if h["group_size"] else 0)}
    b = per_elem[h["weight_type"]]
    matrices = L * (2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden) + V * dim
    return matrices * b + (2 * L + 1) * dim * 4 + (0 if h["shared"] else dim * b)


def tok_per_s(binary, path, threads, tokenizer):
    """One run at -t 0 -n 256: the tok/s run.c reports."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="true")
    r = sh([str(binary), str(path), "-t", "0", "-n", "256", "-z", str(tokenizer)], env=env)
    return float(re.search(r"achieved tok/s: ([0-9.]+)", r.stderr).group(1))


def quality(tokenizer_model, n_windows=24):
    """Top-1 agreement and mean next-token loss of stories260K bf16/q8_0 against fp32 (C logits)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    texts = json.loads((SHARED / "tinystories" / "tinystories-3000-stories.json").read_text())["texts"]
    windows = [[1] + sp.encode(t)[:255] for t in texts[-n_windows:]]
    out = {}
    for dtype in ("fp32", "bf16", "q8_0"):
        path, top1, nll = stories_model(dtype), [], []
        for ids in windows:
            o = OUT / "logits.bin"
            sh([str(REPO / "runomp"), str(path), "-m", "logits", "-i", " ".join(map(str, ids)), "-o", str(o)])
            L = np.fromfile(o, np.float32).reshape(len(ids), -1).astype(np.float64)
            m = L.max(1, keepdims=True)
            logp = L - m - np.log(np.exp(L - m).sum(1, keepdims=True))
            top1.append(L.argmax(1)[:-1])
            nll.append(-logp[np.arange(len(ids) - 1), ids[1:]])
        out[dtype] = (np.concatenate(top1), float(np.concatenate(nll).mean()), sum(len(w) - 1 for w in windows))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="stories260K,15M,42M,110M")
    p.add_argument("--dtypes", default="fp32,bf16,q8_0")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", default=None, help="thread counts, default 1 and all cores")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-quality", action="store_true")
    a = p.parse_args()
    cores = os.cpu_count()
    threads = [int(t) for t in a.threads.split(",")] if a.threads else sorted({1, cores})
    bins = build()
    tok32000, tok512 = SHARED / "models" / "tokenizer.bin", SHARED / "models" / "tok512.bin"
    load = os.getloadavg()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    small = {t: bandwidth(t, huge=False) for t in threads}
    print(f"\nmachine: {cpu}, {cores} cores, {platform.system()} {platform.release()}; load average at start {load:.2f}")
    print(f"command: OMP_NUM_THREADS=T OMP_PROC_BIND=true ./runomp MODEL.bin -t 0 -n 256, median of {a.runs} runs "
          f"interleaved with the other columns; baseline: run.c -DPLAIN (plain C kernels) -O3 -march=native -fopenmp, "
          f"{max(threads)} threads; vs baseline and vs fp32 at {max(threads)} threads")
    print("roofline: read bandwidth of bench/out/bandwidth.c on transparent huge pages (where run.c keeps the "
          "weights), median of measurements interleaved with the runs (it drifts on this shared VM), divided by "
          "the weight bytes a token reads (% roofline: median over runs of tok/s against the mean of the bandwidth "
          "measured just before and just after that run); on 4 KB pages it reads "
          + ", ".join(f"{small[t]:.1f}" for t in threads) + " GB/s (" + ", ".join(f"{t}T" for t in threads) + "); "
          "vs baseline and vs fp32: median over rounds of the ratio within a round\n")
    head = ["model", "dtype", "MB/token"]
    if not a.no_baseline:
        head += ["baseline tok/s"]
    for t in threads:
        head += [f"{t}T GB/s", f"{t}T tok/s", f"{t}T % roofline"]
    head += ["vs baseline", "vs fp32"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    dtypes = a.dtypes.split(",")
    for name in a.models.split(","):
        # The memory bandwidth of this VM drifts from minute to minute, so every measurement of one
        # model size (all dtypes, baseline, fast, bandwidth) is interleaved round by round.
        paths = {d: stories_model(d) if name == "stories260K" else random_model(name, d) for d in dtypes}
        tok = tok512 if name == "stories260K" else tok32000
        for d in dtypes:  # warm the page cache
            tok_per_s(bins["fast"], paths[d], max(threads), tok)
        samples = {}
        # The VM's bandwidth also depends on what ran just before (a heavy run after lighter ones went
        # up to 1.6x faster), so each round starts the list at a different place; the dtypes of one
        # thread count run back to back, so the ratios between them compare runs seconds apart.
        jobs = [(d, t) for t in (["base"] if not a.no_baseline else []) + threads for d in dtypes]
        for r in range(a.runs):
            for d, t in jobs[r % len(jobs):] + jobs[:r % len(jobs)]:
                if t == "base":
                    samples.setdefault((d, "base"), []).append(tok_per_s(bins["baseline"], paths[d], max(threads), tok))
                    continue
                bw0 = bandwidth(t, huge=True, mb=256, reps=2)  # the bandwidth just before and just after each run
                samples.setdefault((d, t), []).append(tok_per_s(bins["fast"], paths[d], t, tok))
                samples.setdefault((d, "bw", t), []).append((bw0 + bandwidth(t, huge=True, mb=256, reps=2)) / 2)
        med = {k: statistics.median(v) for k, v in samples.items()}
        top = max(threads)

        def ratio(d, key):  # paired within each round: the drift between rounds cancels
            return statistics.median(x / y for x, y in zip(samples[(d, top)], samples[key]))
        for d in dtypes:
            wb = weight_bytes_per_token(paths[d])
            row = [name, d, f"{wb / 1e6:.1f}"]
            if not a.no_baseline:
                row.append(f"{med[(d, 'base')]:,.0f}")
            for t in threads:
                bw, v = med[(d, "bw", t)], med[(d, t)]
                roof = statistics.median(x * wb / (y * 1e9) for x, y in zip(samples[(d, t)], samples[(d, "bw", t)]))
                row += [f"{bw:.1f}", f"{v:,.0f}", f"{100 * roof:.0f}%"]
            row.append(f"{ratio(d, (d, 'base')):.2f}x" if not a.no_baseline else "-")
            row.append(f"{ratio(d, ('fp32', top)):.2f}x" if "fp32" in dtypes else "-")
            print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    if a.no_quality:
        return
    q = quality(SHARED / "models" / "tok512.model")
    ref_top1, ref_loss, n = q["fp32"]
    print(f"\nquality, stories260K on {n} tokens of held-out TinyStories (C logits):")
    for dtype in ("fp32", "bf16", "q8_0"):
        top1, loss, _ = q[dtype]
        print(f"  {dtype:5s} top-1 agreement with fp32 {100 * (top1 == ref_top1).mean():.1f}%, "
              f"loss {loss:.4f} ({100 * (loss - ref_loss) / ref_loss:+.2f}%)")


if __name__ == "__main__":
    main()

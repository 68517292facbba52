"""Benchmark run.c against llama.cpp and llama2.c: tokens/s, prefill, start-up, threads beside a busy core.

    make bench                                    (= python bench/bench_run.py: every part below)
    python bench/bench_run.py --tables llamacpp   (run.c against llama.cpp only; make llama-cpp first)
    python bench/bench_run.py --tables llamacpp --models 15M,110M --threads 1 --runs 2   (a quick look)
    python bench/bench_run.py --models 15M,110M --dtypes fp32,q8_0,q4 --builds native,avx2 --runs 5
    python bench/bench_run.py --llama2c ~/llama2.c   (a checkout of karpathy/llama2.c; never committed)
    python bench/bench_run.py --against HEAD~1 --models 42M --dtypes q4 --runs 5   (a kernel change, quiet machine)

Against llama.cpp (--tables llamacpp; its tools from bench/llama_tools.py's build of the pinned source, or
--llama-cpp DIR): per model, our fp32/q8_0/q4 and llama.cpp's F32/Q8_0/Q4_0+Q4_K_M of the same weights
(export.py --to_gguf, then llama-quantize), 1 and all threads, interleaved round by round: decode tok/s
(-n 256 from BOS against llama-bench tg256), prefill tok/s of the ~210-token PROMPT (against llama-bench
pp of as many tokens), the whole process at -n 64 and at -n 1 (start-up; against llama-completion), %
roofline of both, and whether the greedy texts are equal; the table goes to bench/out/llama_cpp_table.md.

Against llama2.c (--tables llama2c,busy,quality), all in one run so the numbers compare:
  1. builds run.c for each --builds: native (`make run`: -O3 -march=native -fopenmp) and avx2 (`make
     runavx2`: -O3 -march=haswell -fopenmp, what an AVX2 laptop runs); and llama2.c's run.c and runq.c
     from --llama2c with llama2.c's own runomp flags (-Ofast -fopenmp) and the same -march, under
     bench/out/llama2c/ (skipped, with a note, when no checkout is given or found);
  2. compiles a streaming-read C kernel (bench/out/bandwidth.c) for the machine's memory read bandwidth
     on transparent huge pages (where run.c keeps the weights of long runs), measured around every run:
     % roofline is tok/s x the weight bytes a token reads / that bandwidth;
  3. exports random-weight models of llama2.c's 15M/42M/110M shapes (dim 288/512/768, 6/8/12 layers and
     heads, vocab 32000) as v3 fp32/bf16/q8_0/q4 under bench/out/ (kept for the next run), plus v0 and
     v2 copies for llama2.c's run and runq; and the real stories260K (v0 as shipped, re-exported);
  4. per model, build and dtype, interleaved round by round (each round starting at a different place,
     because this VM's bandwidth drifts): run.c at -t 0 -n 256 from BOS on 1 thread and on all cores;
     llama2.c's equivalent (run for fp32, runq for q8_0) on all cores; start-up: the whole process at
     -n 16, ours and llama2.c's; prompt: a 210-token prompt, run.c's batched prompt tok/s and llama2.c's
     (its tok/s over the prompt, which it runs token by token); prints a markdown table of medians;
  5. threads under load: 15M fp32 and 110M q8_0 with a busy-looping process beside them, on 1 thread,
     on 2 threads (run.c's default: the free cores) and on 2 fixed threads (OMP_DYNAMIC=false), and
     llama2.c on 2 threads; then the same without the busy process;
  6. int8/int4/bf16 quality against fp32 on 300 held-out stories: stories260K, and any
     --quality-checkpoint (a trained checkpoint, exported to each type with export.py's default group
     size, and to q4 with --gptq=128).
The random models have the rows of BOS and EOS in the (tied) classifier zeroed so greedy decoding never
stops early: every run times 255 tokens.

Last logged runs: dev/LOG.md, "## 2026-12-07: run.c against llama.cpp (bench_run --tables llamacpp; busy machine:
preliminary) ..." and "## 2026-12-02: run.c against llama2.c, every model and dtype, quiet Intel Xeon (make bench)".
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
from binfile import Q4_CLASSIFIER, load_bin, model_export, read_header  # noqa: E402
from machine import cpu_flags  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

OUT = REPO / "bench" / "out"
SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))
SHAPES = {  # llama2.c's stories15M/42M/110M
    "15M": ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256),
    "42M": ModelArgs(dim=512, n_layers=8, n_heads=8, vocab_size=32000, max_seq_len=1024),
    "110M": ModelArgs(dim=768, n_layers=12, n_heads=12, vocab_size=32000, max_seq_len=1024),
}
BUILDS = {"native": ("run", "native"), "avx2": ("runavx2", "haswell")}  # make target, llama2.c's -march
PROMPT = ("Once upon a time, there was a little dog named Max. He liked to run in the park with his "
          "friend Lily. ") * 8  # about 210 tokens with either vocabulary (15M holds 256)
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


def build(builds, llama2c):
    """run.c's builds via the Makefile, llama2.c's run and runq (if a checkout is there) and the
    bandwidth kernel: {build: {"ours": path, "run": path, "runq": path}}."""
    OUT.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    bins = {}
    for b in builds:
        target, march = BUILDS[b]
        sh(["make", "-C", str(REPO), target])
        bins[b] = {"ours": REPO / target}
        if llama2c:
            (OUT / "llama2c").mkdir(exist_ok=True)
            for prog in ("run", "runq"):
                exe = OUT / "llama2c" / f"{prog}_{march}"
                sh([cc, "-Ofast", "-fopenmp", f"-march={march}", "-o", str(exe), str(llama2c / f"{prog}.c"), "-lm"])
                bins[b][prog] = exe
    (OUT / "bandwidth.c").write_text(BANDWIDTH_C)
    sh([cc, "-O3", "-march=native", "-fopenmp", "-o", str(OUT / "bandwidth"), str(OUT / "bandwidth.c")])
    return bins


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
        if read_header(path)["weight_type"] != dtype:  # raises when missing or the size no longer matches
            raise ValueError(f"{path}: an older export.py's {dtype}")
    except (OSError, ValueError):
        model_export(load_bin(src), path, version=3, dtype=dtype)
    return path


def llama2c_model(name, dtype):
    """The file llama2.c's equivalent reads: v0 for run (fp32), v2 for runq (q8_0); None for the
    types llama2.c has no program for."""
    if dtype not in ("fp32", "q8_0"):
        return None
    if name == "stories260K" and dtype == "fp32":
        return SHARED / "models" / "stories260K.bin"
    version = 0 if dtype == "fp32" else 2
    path = OUT / f"{name}_llama2c_v{version}.bin"
    try:
        read_header(path)
    except (OSError, ValueError):
        src = stories_model("fp32") if name == "stories260K" else random_model(name, "fp32")
        model_export(load_bin(src), path, version=version)
    return path


def weight_bytes_per_token(path):
    """Bytes of weights one token reads: every matrix of every layer, the classifier, the norms and one
    embedding row (the whole table only when it is also the classifier)."""
    h = read_header(path)
    dim, hidden, L, V = h["dim"], h["hidden_dim"], h["n_layers"], h["vocab_size"]
    kv_dim = h["n_kv_heads"] * dim // h["n_heads"]
    scales = 4.0 / h["group_size"] if h["group_size"] else 0
    size = {"fp32": 4.0, "bf16": 2.0, "q8_0": 1.0 + scales, "q6": 0.75 + scales, "q4": 0.5 + scales,
            "q4_q8": 0.5 + scales}
    b = size[h["weight_type"]]
    # the classifier (binfile.CLASSIFIER) as `make run` (-march=native) reads it: a q6 one in 6 bits on
    # AVX-512 VNNI + VBMI at group sizes of 32 and more (kernels.h's KEEPS_Q6), else expanded to q8_0
    kind = Q4_CLASSIFIER.get(h["weight_type"], h["weight_type"])
    if kind == "q6" and not ({"avx512_vnni", "avx512vbmi"} <= cpu_flags() and h["group_size"] % 32 == 0):
        kind = "q8_0"
    bc = size[kind]
    matrices = L * (2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden)
    return matrices * b + V * dim * bc + (2 * L + 1) * dim * 4 + (0 if h["shared"] else dim * bc)


def speed(binary, path, tokenizer, threads, n=256, prompt=None, bind=True, dynamic=True):
    """One run at -t 0: (generation tok/s, prompt tok/s), as the program reports them (None where it
    reports none)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_DYNAMIC", None)
    if bind:
        env["OMP_PROC_BIND"] = "true"
    if not dynamic:
        env["OMP_DYNAMIC"] = "false"
    r = sh([str(binary), str(path), "-t", "0", "-n", str(n), "-z", str(tokenizer), *(["-i", prompt] if prompt else [])],
           env=env)
    g = re.search(r"achieved tok/s: ([0-9.]+)", r.stderr)  # absent when -n ends with the prompt
    m = re.search(r"prompt: \d+ tokens, ([0-9.]+) tok/s", r.stderr)
    return float(g.group(1)) if g else None, float(m.group(1)) if m else None


def prompt_speed(binary, path, tokenizer, threads, ours):
    """Tokens/s over PROMPT: run.c reports its batched prompt; llama2.c runs it token by token, so its
    tok/s at -n (the prompt's length) is its prompt speed."""
    if ours:
        return speed(binary, path, tokenizer, threads, n=400, prompt=PROMPT)[1]
    n_prompt = len(sh([str(REPO / "run"), str(path), "-z", str(tokenizer), "-m", "tokenize", "-i", PROMPT]).stdout.split()) + 1
    return speed(binary, path, tokenizer, threads, n=n_prompt, prompt=PROMPT)[0]


def startup(binary, path, tokenizer, threads):
    """Seconds for the whole process at -n 16: start-up (loading or mapping the file) plus 16 tokens."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("OMP_DYNAMIC", None)
    t0 = time.perf_counter()
    sh([str(binary), str(path), "-t", "0", "-n", "16", "-z", str(tokenizer)], env=env)
    return time.perf_counter() - t0


QUALITY_DTYPES = ("fp32", "bf16", "q8_0", "q4")


def checkpoint_models(ckpt_path):
    """A train.py checkpoint exported as v3 in every QUALITY_DTYPE and as q4 rounded by GPTQ on 128 windows
    of its training shards (export.py --gptq=128) under bench/out/<dir>_<dtype>.bin, and the SentencePiece
    model it was trained with (dataloader.py's rule, as sample.py finds it)."""
    import dataloader
    import export
    from checkpoint import load_checkpoint
    model, ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt.get("config") or {}
    tok = dataloader.tokenizer_path(model.args.vocab_size, cfg.get("vocab_source", "custom"), cfg.get("data_dir"))
    paths = {}
    for dtype in QUALITY_DTYPES:
        paths[dtype] = OUT / f"{Path(ckpt_path).parent.name}_{dtype}.bin"
        model_export(model, paths[dtype], version=3, dtype=dtype)
    paths["q4 gptq"] = OUT / f"{Path(ckpt_path).parent.name}_q4_gptq.bin"
    export.main([str(paths["q4 gptq"]), f"--checkpoint={ckpt_path}", "--dtype=q4", "--gptq=128"])
    return paths, Path(tok).with_suffix(".model")


def held_out_texts(n=300):
    """The last n stories of the shared 3000 (held out from the shared training text)."""
    return json.loads((SHARED / "tinystories" / "tinystories-3000-stories.json").read_text())["texts"][-n:]


def quality(paths, tokenizer_model, n_windows=300):
    """Top-1 agreement and mean next-token loss of a model's bf16/q8_0/q4 files against its fp32 one (C
    logits) on the last n_windows stories of the shared 3000 (held out from the shared training text)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    windows = [[1] + sp.encode(t)[:255] for t in held_out_texts(n_windows)]
    out = {}
    for dtype, path in paths.items():
        top1, nll = [], []
        for ids in windows:
            o = OUT / "logits.bin"
            sh([str(REPO / "run"), str(path), "-m", "logits", "-i", " ".join(map(str, ids)), "-o", str(o)])
            L = np.fromfile(o, np.float32).reshape(len(ids), -1).astype(np.float64)
            m = L.max(1, keepdims=True)
            logp = L - m - np.log(np.exp(L - m).sum(1, keepdims=True))
            top1.append(L.argmax(1)[:-1])
            nll.append(-logp[np.arange(len(ids) - 1), ids[1:]])
        out[dtype] = (np.concatenate(top1), float(np.concatenate(nll).mean()), sum(len(w) - 1 for w in windows))
    return out


def rotated(jobs, r):
    return jobs[r % len(jobs):] + jobs[:r % len(jobs)]


def speed_table(a, bins, threads, tok_for):
    """The main table: per model, build and dtype, every measurement interleaved round by round."""
    top = max(threads)
    head = ["model", "build", "dtype", "MB/token"]
    for t in threads:
        head += [f"{t}T tok/s (llama2.c)", f"{t}T % roofline", f"{t}T vs llama2.c"]
    head += ["vs fp32", "start -n 16 s (llama2.c)", "prompt tok/s (llama2.c)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in a.models.split(","):
        tok = tok_for(name)
        paths = {d: stories_model(d) if name == "stories260K" else random_model(name, d) for d in a.dtypes.split(",")}
        l2c = {d: llama2c_model(name, d) for d in paths}
        for b in bins:  # warm the page cache
            for d in paths:
                speed(bins[b]["ours"], paths[d], tok, top)
        jobs = []
        for b in bins:
            for d in paths:
                jobs += [(b, d, "ours", t) for t in threads] + [(b, d, "start", 0), (b, d, "prompt", 0)]
                if l2c[d] and "run" in bins[b]:
                    jobs += [(b, d, "l2c", t) for t in threads] + [(b, d, "l2c start", 0), (b, d, "l2c prompt", 0)]
        samples = {}
        for r in range(a.runs):
            for b, d, what, t in rotated(jobs, r):
                ours = bins[b]["ours"]
                theirs = bins[b].get("run" if d == "fp32" else "runq")
                key = (b, d, what, t)
                if what == "ours":
                    bw0 = bandwidth(t, huge=True, mb=256, reps=2)
                    samples.setdefault(key, []).append(speed(ours, paths[d], tok, t)[0])
                    samples.setdefault((b, d, "bw", t), []).append((bw0 + bandwidth(t, huge=True, mb=256, reps=2)) / 2)
                elif what == "l2c":
                    samples.setdefault(key, []).append(speed(theirs, l2c[d], tok, t)[0])
                elif what.endswith("start"):
                    samples.setdefault(key, []).append(startup(ours if what == "start" else theirs,
                                                               paths[d] if what == "start" else l2c[d], tok, top))
                else:
                    samples.setdefault(key, []).append(prompt_speed(ours if what == "prompt" else theirs,
                                                                    paths[d] if what == "prompt" else l2c[d], tok, top,
                                                                    what == "prompt"))
        med = {k: statistics.median(v) for k, v in samples.items()}

        def paired(k1, k2):  # median of the per-round ratios: the drift between rounds cancels
            return statistics.median(x / y for x, y in zip(samples[k1], samples[k2]))
        for b in bins:
            for d in paths:
                wb = weight_bytes_per_token(paths[d])
                has = (b, d, "l2c", top) in samples
                row = [name, b, d, f"{wb / 1e6:.1f}"]
                for t in threads:
                    roof = statistics.median(x * wb / (y * 1e9) for x, y in
                                             zip(samples[(b, d, "ours", t)], samples[(b, d, "bw", t)]))
                    row += [f"{med[(b, d, 'ours', t)]:,.0f}" + (f" ({med[(b, d, 'l2c', t)]:,.0f})" if has else ""),
                            f"{100 * roof:.0f}%", f"{paired((b, d, 'ours', t), (b, d, 'l2c', t)):.2f}x" if has else "-"]
                row.append(f"{paired((b, d, 'ours', top), (b, 'fp32', 'ours', top)):.2f}x" if "fp32" in paths else "-")
                row.append(f"{med[(b, d, 'start', 0)]:.2f}" + (f" ({med[(b, d, 'l2c start', 0)]:.2f})" if has else ""))
                row.append(f"{med[(b, d, 'prompt', 0)]:,.0f}" + (f" ({med[(b, d, 'l2c prompt', 0)]:,.0f})" if has else ""))
                print("| " + " | ".join(row) + " |", flush=True)


LLAMA_TYPES = {"fp32": ("F32",), "q8_0": ("Q8_0",), "q4": ("Q4_0", "Q4_K_M")}  # ours -> llama.cpp's, compared
N_DECODE, N_PROCESS = 256, 64  # tokens decoded from BOS; tokens the whole-process run writes after SHORT_PROMPT
SHORT_PROMPT = "Once upon a time"


def markdown_table(head, rows):
    """A markdown table (one string) of a header and rows of cells."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def compare(ours, theirs, faster=max):
    """(median of ours, median of theirs, median over rounds of ours' speed-up within the round): the
    drift between rounds cancels. faster=max for tok/s (ours / theirs), min for seconds (theirs / ours)."""
    ratios = [x / y if faster is max else y / x for x, y in zip(ours, theirs)]
    return statistics.median(ours), statistics.median(theirs), statistics.median(ratios)


def f32_gguf(src, tokenizer, name):
    """bench/out/<name>_F32.gguf: the weights of src (a .bin) written by export.py --to_gguf with their
    tokenizer (a .model); kept while newer than src."""
    import export
    f32 = OUT / f"{name}_F32.gguf"
    if not f32.exists() or f32.stat().st_mtime < Path(src).stat().st_mtime:
        export.main([f"--to_gguf={f32}", f"--bin={src}", f"--tokenizer={tokenizer}", "--dtype=fp32"])
    return f32


def llama_files(tools, name, dtypes):
    """Ours {dtype: .bin} and llama.cpp's {type: .gguf} of one model: the fp32 weights exported by export.py
    --to_gguf (with the model's tokenizer) and quantised by llama-quantize, under bench/out/."""
    import llama_tools
    ours = {d: stories_model(d) if name == "stories260K" else random_model(name, d) for d in dtypes}
    src = stories_model("fp32") if name == "stories260K" else random_model(name, "fp32")
    f32 = f32_gguf(src, SHARED / "models" / ("tok512.model" if name == "stories260K" else "tokenizer.model"), name)
    theirs = {q: f32 if q == "F32" else llama_tools.quantize(tools, f32, OUT / f"{name}_{q}.gguf", q)
              for d in dtypes for q in LLAMA_TYPES.get(d, ())}
    return ours, theirs


def llama_greedy(gguf, ids, n):
    """llama.cpp's greedy continuation of token ids, n tokens at most, ending at BOS or EOS, as text
    (through llama-cpp-python: llama-completion prints asynchronously, and a pipe may lose the end)."""
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf), n_ctx=len(ids) + n + 1, n_threads=1, n_threads_batch=1, logits_all=True,
                verbose=False)
    out, ends = list(ids), {llm.token_bos(), llm.token_eos()}
    llm.eval(out)
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt in ends:
            break
        out.append(nxt)
        llm.eval([nxt])
    return llm.detokenize(out[1:]).decode("utf-8", "replace")


def greedy_check(ours, theirs, tok):
    """'equal' when run.c's greedy text after SHORT_PROMPT is llama.cpp's (N_PROCESS tokens, one thread
    each, the same prompt tokens), else where they part; '-' without llama-cpp-python."""
    import importlib.util
    if importlib.util.find_spec("llama_cpp") is None:
        return "- (no llama-cpp-python)"
    ids = [1] + [int(t) for t in sh([str(REPO / "run"), str(ours), "-z", str(tok), "-m", "tokenize", "-i",
                                     SHORT_PROMPT]).stdout.split()]
    one = dict(os.environ, OMP_NUM_THREADS="1")  # as llama.cpp's: another sum order may flip a near tie
    # run.c's -n counts the prompt's tokens and writes -n - len(ids) + 1 after it
    mine = sh([str(REPO / "run"), str(ours), "-t", "0", "-n", str(len(ids) - 1 + N_PROCESS), "-z", str(tok),
               "-i", SHORT_PROMPT], env=one).stdout.strip()
    other = llama_greedy(theirs, ids, N_PROCESS).strip()
    if mine == other:
        return "equal"
    k = next((i for i, (x, y) in enumerate(zip(mine, other)) if x != y), min(len(mine), len(other)))
    return f"differ at character {k}: {mine[k:k + 30]!r} / {other[k:k + 30]!r}"


def process_seconds(cmd, env):
    t0 = time.perf_counter()
    sh(cmd, env=env)
    return time.perf_counter() - t0


def llama_round(tools, files, tok, n_prompt, n_short, ctx, threads, r, samples):
    """One round of every measurement of one model, in a rotated order, appended to samples[(what, type, T)]."""
    import llama_tools
    ours, theirs = files
    jobs = [(w, d, t) for t in threads for d in ours for w in ("decode", "prefill", "process", "start", "bw")]
    jobs += [(w, q, t) for t in threads for q in theirs for w in ("llama", "llama process", "llama start")]
    for what, d, t in rotated(jobs, r):
        env = dict(os.environ, OMP_NUM_THREADS=str(t), OMP_PROC_BIND="true")
        env.pop("OMP_DYNAMIC", None)
        run = [str(REPO / "run"), str(ours.get(d)), "-t", "0", "-z", str(tok), "-i", SHORT_PROMPT]
        if what == "decode":
            v = [speed(REPO / "run", ours[d], tok, t, n=N_DECODE)[0]]
        elif what == "prefill":
            v = [speed(REPO / "run", ours[d], tok, t, n=n_prompt, prompt=PROMPT)[1]]
        elif what in ("process", "start"):
            v = [process_seconds(run + ["-n", str(n_short - 1 + (N_PROCESS if what == "process" else 1))], env)]
        elif what == "bw":
            v = [bandwidth(t, huge=True, mb=256, reps=2)]
        elif what == "llama":
            pp, tg = llama_tools.bench(tools, theirs[d], n_prompt, N_DECODE, t, env=env)
            samples.setdefault(("llama prefill", d, t), []).append(pp)
            v = [tg]
        else:
            v = [llama_tools.completion(tools, theirs[d], SHORT_PROMPT, N_PROCESS if what == "llama process" else 1, t,
                                        ctx, env)[0]]
        samples.setdefault((what, d, t), []).extend(v)


def llama_rows(name, files, samples, threads, greedy):
    """The table's rows of one model: each of our types against each llama.cpp type it is compared with."""
    import llama_tools
    ours, theirs = files
    rows = []
    for t in threads:
        for d in ours:
            for q in LLAMA_TYPES.get(d, ()):
                if q not in theirs:
                    continue
                wb, (wq, cls) = weight_bytes_per_token(ours[d]), llama_tools.gguf_bytes_per_token(theirs[q])
                bw = statistics.median(samples[("bw", d, t)])
                row = [name, f"{d} / {q} ({cls} classifier)", t, f"{wb / 1e6:.1f} / {wq / 1e6:.1f}"]
                for what, faster in (("decode", max), ("prefill", max), ("process", min), ("start", min)):
                    key = "llama" if what == "decode" else f"llama {what}"
                    mo, mt, x = compare(samples[(what, d, t)], samples[(key, q, t)], faster)
                    row += [f"{mo:,.0f} / {mt:,.0f}" if faster is max else f"{mo:.3f} / {mt:.3f}", f"{x:.2f}x"]
                    if what == "decode":
                        row.append(f"{100 * mo * wb / (bw * 1e9):.0f}% / {100 * mt * wq / (bw * 1e9):.0f}%")
                row.append(greedy.get(d, "-"))
                rows.append(row)
    return rows


def llama_table(a, tools, threads):
    """run.c against llama.cpp (llama-bench, llama-completion) on the same weights: every model, type and
    thread count, interleaved round by round; prints the markdown table and writes it to a.llama_out."""
    head = ["model", "ours / llama.cpp", "T", "MB/token", "decode tok/s", "x", "% roofline", "prefill tok/s", "x",
            f"-n {N_PROCESS} process s", "x", "start s", "x", "greedy text"]
    rows = []
    for name in a.models.split(","):
        tok = SHARED / "models" / ("tok512.bin" if name == "stories260K" else "tokenizer.bin")
        dtypes = [d for d in a.dtypes.split(",") if d in LLAMA_TYPES]
        files = llama_files(tools, name, dtypes)
        ctx = read_header(files[0][dtypes[0]])["max_seq_len"]
        n_prompt, n_short = (len(sh([str(REPO / "run"), str(files[0][dtypes[0]]), "-z", str(tok), "-m", "tokenize",
                                     "-i", p]).stdout.split()) + 1 for p in (PROMPT, SHORT_PROMPT))
        greedy = {d: greedy_check(files[0][d], files[1][LLAMA_TYPES[d][0]], tok)
                  for d in ("fp32", "q8_0") if d in dtypes}
        samples = {}
        for r in range(a.runs):
            llama_round(tools, files, tok, n_prompt, n_short, ctx, threads, r, samples)
        new = llama_rows(name, files, samples, threads, greedy)
        print(markdown_table(head, new).split("\n", 2)[2], flush=True)
        rows += new
    table = markdown_table(head, rows)
    print("\n" + table)
    return table


def busy_table(a, bins, tokenizer):
    """Threads under load: 2 threads against 1 with a busy-looping process beside them, and without."""
    print("\nthreads under load (native build, -t 0 -n 256 from BOS, no OMP_PROC_BIND; 'busy' = a Python "
          "busy loop running beside it; 2T = run.c's default, the free cores; 2T fixed = OMP_DYNAMIC=false):\n")
    cases = [("15M", "fp32"), ("110M", "q8_0")]
    cols = ["1T", "2T", "2T fixed"] + (["llama2.c 2T"] if "run" in bins["native"] else [])
    print("| model | dtype | machine | " + " | ".join(f"{c} tok/s" for c in cols) + " | 2T / 1T |")
    print("|" + "---|" * (len(cols) + 4))
    for name, d in cases:
        path, l2c = random_model(name, d), llama2c_model(name, d)
        samples = {}
        for busy in (True, False):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                time.sleep(0.5)
                for r in range(a.runs):
                    for c in rotated(cols, r):
                        if c.startswith("llama2.c"):
                            v = speed(bins["native"]["run" if d == "fp32" else "runq"], l2c, tokenizer, 2, bind=False)[0]
                        else:
                            v = speed(bins["native"]["ours"], path, tokenizer, 1 if c == "1T" else 2, bind=False,
                                      dynamic=c != "2T fixed")[0]
                        samples.setdefault((busy, c), []).append(v)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
            med = {c: statistics.median(samples[(busy, c)]) for c in cols}
            ratio = statistics.median(x / y for x, y in zip(samples[(busy, "2T")], samples[(busy, "1T")]))
            print(f"| {name} | {d} | {'one core busy' if busy else 'idle'} | "
                  + " | ".join(f"{med[c]:,.0f}" for c in cols) + f" | {ratio:.2f}x |", flush=True)


def header_lines(a):
    """The machine, the load and what each table's columns mean: printed, and written above the table."""
    load = os.getloadavg()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return (f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; load average at start "
            f"{load:.2f}; median of {a.runs} rounds, every cell of a model interleaved (rotated order each round)")


def run_llama2c_tables(a, threads):
    """The llama2.c comparison: builds, speeds (table llama2c), threads under load (table busy)."""
    llama2c = Path(a.llama2c)
    if not (llama2c / "run.c").exists() or not (llama2c / "runq.c").exists():
        print(f"note: no llama2.c checkout at {llama2c} (--llama2c): its columns stay empty", file=sys.stderr)
        llama2c = None
    bins = build(a.builds.split(","), llama2c)
    tok32000, tok512 = SHARED / "models" / "tokenizer.bin", SHARED / "models" / "tok512.bin"
    print(f"\nrun.c against llama2.c; {header_lines(a)}")
    print(f"command: OMP_NUM_THREADS=T OMP_PROC_BIND=true ./run MODEL.bin -t 0 -n 256 (native: make run; avx2: make "
          f"runavx2); llama2.c: its run (fp32, v0 file) "
          f"or runq (q8_0, v2 file) built -Ofast -fopenmp with the build's -march, on as many threads; vs: "
          f"median over rounds of the ratio within a round; start: seconds for the "
          f"whole process at -n 16; prompt: tok/s over a {len(PROMPT)}-character prompt (~210 tokens)")
    print("roofline: read bandwidth of bench/out/bandwidth.c on transparent huge pages with as many threads, "
          "measured just before and after each run; % roofline = tok/s x MB/token / that bandwidth\n")
    if "llama2c" in a.tables:
        speed_table(a, bins, threads, lambda name: tok512 if name == "stories260K" else tok32000)
    if "busy" in a.tables and "native" in bins:
        busy_table(a, bins, tok32000)


def run_llama_cpp_table(a, threads):
    """run.c against llama.cpp, when its tools are built (or given); else one line saying how to get them."""
    import llama_tools
    tools = llama_tools.find(a.llama_cpp)
    if not tools:
        if a.tables == ["llamacpp"]:  # the only table asked for cannot run: an error, not a note
            sys.exit(f"bench_run.py: error: {llama_tools.missing_message(a.llama_cpp)}")
        print(f"note: {llama_tools.missing_message(a.llama_cpp)}", file=sys.stderr)
        return
    build(["native"], None)  # ./run and the bandwidth kernel
    intro = (f"run.c against llama.cpp ({tools['llama-bench'].parent}); {header_lines(a)}\n"
             f"ours: OMP_NUM_THREADS=T OMP_PROC_BIND=true ./run MODEL.bin -t 0 (make run): decode = its tok/s at -n "
             f"{N_DECODE} from BOS, prefill = its prompt tok/s over a ~210-token prompt; llama.cpp: llama-bench -p "
             f"(the same count) -n {N_DECODE} -t T -r 1 in the same environment; process: seconds for the whole "
             f"process, greedy, {N_PROCESS} tokens after '{SHORT_PROMPT}' (llama-completion -no-cnv, its defaults "
             f"otherwise), start: the same for 1 token; x: ours' speed-up, the median over rounds of the ratio "
             f"within a round; "
             f"% roofline: tok/s x MB/token / the read bandwidth of bench/out/bandwidth.c at T threads, measured "
             f"in each round; greedy text: ours against llama.cpp's (llama-cpp-python), {N_PROCESS} tokens after the "
             f"same prompt tokens, one thread\n")
    print("\n" + intro)
    table = llama_table(a, tools, threads)
    from fileio import atomic_write
    text = intro + "\n" + table + f"\n\nload average at end {os.getloadavg()[0]:.2f}\n"
    atomic_write(a.llama_out, lambda f: f.write(text.encode()))
    print(f"\nwrote {a.llama_out}")


def run_against(a, threads):
    """run.c against itself at git revision a.against (that revision's run.c, kernels.h and Makefile, built
    by its `make run` in bench/out/against/; ours: the working tree's, uncommitted edits included):
    decode and prefill tok/s, interleaved round by round, and the median of the per-round ratios: how a
    change to the kernels moved each model and type."""
    if not a.against:
        sys.exit("bench_run.py: error: --tables against needs --against REV (a git revision to time ./run against)")
    old = OUT / "against"
    old.mkdir(parents=True, exist_ok=True)
    for f in ("run.c", "kernels.h", "Makefile"):
        r = subprocess.run(["git", "-C", str(REPO), "show", f"{a.against}:{f}"], capture_output=True)
        if r.returncode != 0:
            sys.exit(f"bench_run.py: error: --against {a.against}: git show {a.against}:{f} failed: "
                     f"{r.stderr.decode(errors='replace').strip()}")
        (old / f).write_bytes(r.stdout)
    sh(["make", "-B", "-C", str(old), "run"])  # with that revision's own flags
    sh(["make", "-C", str(REPO), "run"])
    bins = {"ours": REPO / "run", a.against: old / "run"}
    print(f"\n./run against ./run at {a.against}; {header_lines(a)}\n"
          f"decode: tok/s at -t 0 -n {N_DECODE} from BOS; prefill: prompt tok/s over a ~210-token prompt; "
          f"OMP_NUM_THREADS=T OMP_PROC_BIND=true; x: the median over rounds of the ratio within a round\n")
    head = ["model", "dtype", "T", f"decode tok/s (ours / {a.against})", "x", f"prefill tok/s (ours / {a.against})", "x"]
    rows = []
    for name in a.models.split(","):
        tok = SHARED / "models" / ("tok512.bin" if name == "stories260K" else "tokenizer.bin")
        for d in a.dtypes.split(","):
            path = stories_model(d) if name == "stories260K" else random_model(name, d)
            for b in bins:  # warm the page cache: the first round's first run would read the file from disk
                speed(bins[b], path, tok, max(threads))
            jobs = [(b, t, what) for t in threads for b in bins for what in ("decode", "prefill")]
            samples = {}
            for r in range(a.runs):
                for b, t, what in rotated(jobs, r):
                    v = speed(bins[b], path, tok, t)[0] if what == "decode" else prompt_speed(bins[b], path, tok, t, True)
                    samples.setdefault((b, t, what), []).append(v)
            for t in threads:
                row = [name, d, t]
                for what in ("decode", "prefill"):
                    ours, theirs, x = compare(samples[("ours", t, what)], samples[(a.against, t, what)])
                    row += [f"{ours:,.0f} / {theirs:,.0f}", f"{x:.2f}x"]
                rows.append(row)
                print("| " + " | ".join(map(str, row)) + " |", flush=True)
    print("\n" + markdown_table(head, rows) + f"\n\nload average at end {os.getloadavg()[0]:.2f}")


def run_quality(a):
    models = [("stories260K", {d: stories_model(d) for d in QUALITY_DTYPES}, SHARED / "models" / "tok512.model")]
    models += [(c, *checkpoint_models(c)) for c in a.quality_checkpoint]
    for name, paths, tok in models:
        q = quality(paths, tok)
        ref_top1, ref_loss, n = q["fp32"]
        gs = read_header(paths["q4"])["group_size"]
        print(f"\nquality, {name} on {n} tokens of held-out TinyStories (C logits; q8_0/q4 group size {gs}):")
        for dtype, (top1, loss, _) in q.items():
            print(f"  {dtype:7s} top-1 agreement with fp32 {100 * (top1 == ref_top1).mean():.1f}%, "
                  f"loss {loss:.4f} ({100 * (loss - ref_loss) / ref_loss:+.2f}%)")


TABLES = ("llamacpp", "llama2c", "busy", "quality", "against")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", default=None,
                   help=f"which parts to run, of {','.join(TABLES)} (default: all but against; against alone "
                        "when --against is given)")
    p.add_argument("--models", default="stories260K,15M,42M,110M")
    p.add_argument("--dtypes", default="fp32,bf16,q8_0,q4", help="(llama.cpp's table: fp32, q8_0 and q4 of these)")
    p.add_argument("--builds", default="native,avx2", help="native, avx2 (-march=haswell)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", default=None, help="thread counts, default 1 and all cores")
    p.add_argument("--llama-cpp", default=None, metavar="DIR",
                   help="a llama.cpp build's folder of tools (default: bench/llama_tools.py's build)")
    p.add_argument("--llama-out", default=str(OUT / "llama_cpp_table.md"), help="where the llama.cpp table goes")
    p.add_argument("--llama2c", default=os.environ.get("LLAMA2C", "/tmp/llama2c"),
                   help="a checkout of karpathy/llama2.c (run.c, runq.c); default $LLAMA2C or /tmp/llama2c")
    p.add_argument("--against", default=None, metavar="REV",
                   help="(--tables against) a git revision whose run.c and kernels.h ./run is timed against")
    p.add_argument("--quality-checkpoint", action="append", default=[], metavar="CKPT",
                   help="also measure quantisation quality on this train.py checkpoint (repeatable)")
    a = p.parse_args()
    a.tables = a.tables.split(",") if a.tables else ["against"] if a.against else list(TABLES[:4])
    if set(a.tables) - set(TABLES):
        p.error(f"--tables={','.join(sorted(set(a.tables) - set(TABLES)))}: expected some of {','.join(TABLES)}")
    if a.runs < 1:
        p.error(f"--runs={a.runs}: expected at least 1")
    bad = set(a.models.split(",")) - {"stories260K", *SHAPES} or set(a.dtypes.split(",")) - set(QUALITY_DTYPES)
    if bad:
        p.error(f"{','.join(sorted(bad))}: --models takes stories260K,{','.join(SHAPES)}; "
                f"--dtypes {','.join(QUALITY_DTYPES)}")
    threads = [int(t) for t in a.threads.split(",")] if a.threads else sorted({1, os.cpu_count()})
    OUT.mkdir(parents=True, exist_ok=True)
    if "llamacpp" in a.tables:
        run_llama_cpp_table(a, threads)
    if "llama2c" in a.tables or "busy" in a.tables:
        run_llama2c_tables(a, threads)
        print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    if "quality" in a.tables:
        run_quality(a)
    if "against" in a.tables:
        run_against(a, threads)


if __name__ == "__main__":
    main()

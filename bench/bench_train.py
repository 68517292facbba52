"""Training throughput benchmark: tokens/s of full training steps (forward, backward, AdamW).

Each variant is a model shape plus one design choice; all variants of a run are built first (compile
happens during their warm-up), then timed in interleaved rounds so that a noisy neighbour on the
machine hurts every variant alike. One round times `--steps` steps of a variant; the table gives the
median over rounds, the spread, the speed relative to the first variant of the same shape (the
baseline, measured in the same run) and MFU against this device's measured matmul peak.

    python bench/bench_train.py                          # the README table (about 12 minutes on 2 cores)
    python bench/bench_train.py --variants=260K:d0.05,260K:d0 --rounds=5
    python bench/bench_train.py --quiet=10     # on a shared machine: only rounds without other load count

--quiet=PCT waits before each round until Linux's CPU pressure (/proc/pressure/cpu, some avg10) is
below PCT %, and discards (and repeats) a round after which it is above: a round during which another
job ran says nothing about our code.

Variants (SHAPE:NAME): NAME is d<p> (model.py as it is, dropout p), naive<p> (dropout p also on the
attention probabilities via SDPA's dropout_p: the straightforward design), repeat<p> (GQA by
repeat_interleave of k and v instead of SDPA's enable_gqa), compile<p> (torch.compile), bf16<p>
(bfloat16 autocast). Shapes: 260K (the stories260K recipe: dim 64, 5 layers, 8 heads, 4 kv heads,
vocab 512, batch 32, seq 512, multiple_of 4) and 15M (dim 288, 6 layers, 6 heads, vocab 32000,
batch 32, seq 256).
"""
import argparse
import os
import re
import statistics
import sys
import time
from contextlib import nullcontext
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from model import ModelArgs, Transformer, peak_flops  # noqa: E402

SHAPES = {  # (model args, batch size)
    "260K": (dict(dim=64, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512, multiple_of=4,
                  max_seq_len=512), 32),
    "15M": (dict(dim=288, n_layers=6, n_heads=6, vocab_size=32000, max_seq_len=256), 32),
}
DEFAULT = ("260K:d0.05,260K:d0,260K:naive0.05,260K:repeat0.05,260K:compile0.05,260K:bf16_0.05,"
           "15M:d0,15M:compile0,15M:bf16_0")

_sdpa = F.scaled_dot_product_attention


def sdpa_with_dropout(p):
    """SDPA that also drops attention probabilities (every call here is training)."""
    def sdpa(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
        return _sdpa(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal, enable_gqa=enable_gqa)
    return sdpa


def sdpa_repeat_kv(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
    """SDPA with GQA done by copying each kv head to its query heads first."""
    if enable_gqa:
        rep = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)


class Variant:
    def __init__(self, spec, warmup):
        self.spec = spec
        shape, name = spec.split(":")
        m = re.fullmatch(r"(d|naive|repeat|compile|bf16_?)([0-9.]+)", name)
        if shape not in SHAPES or not m:
            sys.exit(f"bench_train.py: bad variant {spec!r}; expected SHAPE:NAME, SHAPE in {list(SHAPES)}, "
                     "NAME one of d<p>, naive<p>, repeat<p>, compile<p>, bf16<p>")
        kind, p = m.group(1).rstrip("_"), float(m.group(2))
        margs, self.batch = SHAPES[shape]
        self.shape, self.kind, self.seq = shape, kind, margs["max_seq_len"]
        torch.manual_seed(0)
        self.model = Transformer(ModelArgs(**margs, dropout=p)).train()
        self.opt = self.model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
        self.fwd = torch.compile(self.model) if kind == "compile" else self.model
        self.patch = {"naive": sdpa_with_dropout(p), "repeat": sdpa_repeat_kv}.get(kind)
        self.dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        xys = [torch.randint(0, margs["vocab_size"], (self.batch, self.seq + 1)) for _ in range(4)]
        self.data = [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous()) for xy in xys]
        self.k = 0
        t0 = time.perf_counter()
        self.steps(warmup)
        self.warmup_s = time.perf_counter() - t0
        self.rates = []

    def steps(self, n):
        patch = mock.patch.object(F, "scaled_dot_product_attention", self.patch) if self.patch else nullcontext()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == torch.bfloat16 else nullcontext()
        with patch:
            for _ in range(n):
                x, y = self.data[self.k % len(self.data)]
                self.k += 1
                with amp:
                    _, loss = self.fwd(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)

    def time_round(self, n):
        t0 = time.perf_counter()
        self.steps(n)
        self.rates.append(n * self.batch * self.seq / (time.perf_counter() - t0))


def cpu_pressure():
    """Linux PSI: % of the last 10 s in which some runnable task waited for a CPU (None if unknown)."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_for_quiet(limit, max_wait=300):
    """Sleep until CPU pressure is below limit %: other jobs on a shared machine distort timings."""
    t0 = time.time()
    while (p := cpu_pressure()) is not None and p > limit and time.time() - t0 < max_wait:
        time.sleep(2)
    return time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=DEFAULT, help="comma-separated SHAPE:NAME list (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant (compile happens here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quiet", type=float, default=0, help="before each round wait (at most 5 min) until "
                    "CPU pressure (/proc/pressure/cpu some avg10) is below this %% (0: do not wait)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    variants = []
    for spec in args.variants.split(","):
        print(f"building {spec} ...", flush=True)
        variants.append(Variant(spec, args.warmup))
        print(f"  warm-up {args.warmup} steps: {variants[-1].warmup_s:.1f}s", flush=True)
    if args.quiet:
        wait_for_quiet(args.quiet)
    peaks = {dt: peak_flops("cpu", dt) for dt in {v.dtype for v in variants}}
    r = discarded = 0
    while r < args.rounds:
        waited = wait_for_quiet(args.quiet) if args.quiet else 0.0
        before = cpu_pressure()
        for v in variants:
            v.time_round(args.steps)
        after = cpu_pressure()
        line = "  ".join(f"{v.spec} {v.rates[-1]:,.0f}" for v in variants)
        line += f"  (cpu pressure {before} -> {after}%, waited {waited:.0f}s)"
        if args.quiet and after is not None and after > args.quiet and discarded < 2 * args.rounds:
            for v in variants:  # another job ran meanwhile: this round says nothing about our code
                v.rates.pop()
            discarded += 1
            print(f"discarded: {line}", flush=True)
            continue
        r += 1
        print(f"round {r}/{args.rounds}: {line}", flush=True)
    print(f"\nmedian tokens/s over {args.rounds} rounds of {args.steps} steps "
          f"(peak fp32 {peaks.get(torch.float32, 0) / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks.get(torch.bfloat16, 0) / 1e9:.0f} GFLOP/s, measured matmul)")
    print(f"{'variant':<20}{'tok/s':>10}{'min':>10}{'max':>10}{'vs base':>9}{'MFU':>7}{'warm-up s':>11}")
    base = {}
    for v in variants:
        med = statistics.median(v.rates)
        base.setdefault(v.shape, med)
        mfu = v.model.estimate_mfu(med, peaks[v.dtype], v.seq)
        print(f"{v.spec:<20}{med:>10,.0f}{min(v.rates):>10,.0f}{max(v.rates):>10,.0f}"
              f"{med / base[v.shape]:>8.2f}x{mfu * 100:>6.1f}%{v.warmup_s:>11.1f}")


if __name__ == "__main__":
    main()

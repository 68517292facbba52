"""Training throughput benchmark: tokens/s of full training steps (forward, backward, clip, optimizer).

A variant is a preset of config/ (its model shape, sequence length, dropout and optimizer) plus one
design choice. All variants of a run are built first (compile happens during their warm-up), then
timed in interleaved rounds that rotate their order, so that a noisy neighbour on the machine hurts
every variant alike. One round times `--steps` steps of each variant on random tokens; the table
gives the median over rounds, the spread, the speed relative to the first variant of the same
preset (the baseline, measured in the same run: the median of the per-round ratios, which a
neighbour's load moves much less than the rates themselves) and MFU against this device's measured
matmul peak.
Every step holds about `--tokens` tokens (batch = tokens / max_seq_len): the presets' own batches
would take minutes per step on a CPU.

    python bench/bench_train.py --llama2c=/tmp/llama2.c/model.py     # every preset vs llama2.c (the log entry below)
    python bench/bench_train.py --variants=stories260K:ours@0,stories260K:naive@0.05 --rounds=5
    python bench/bench_train.py --quiet=10     # on a shared machine: only rounds without other load count

--quiet=PCT waits before each round until Linux's CPU pressure (/proc/pressure/cpu, some avg10) is
below PCT %, and discards (and repeats) a round after which it is above: a round during which another
job ran says nothing about our code.

Variants (PRESET:KIND or PRESET:KIND@DROPOUT; the dropout defaults to the preset's): KIND is ours
(model.py and the preset's optimizer as train.py builds them), llama2c (llama2.c's model.py, from the
file given by --llama2c, with its own AdamW set-up; it always ties the classifier), adamw / muon (ours
with that optimizer), naive (dropout also on the attention probabilities via SDPA's dropout_p: the
straightforward design, llama2.c's), repeat (GQA by repeat_interleave of k and v instead of SDPA's
enable_gqa), compile (torch.compile), bf16 (bfloat16 autocast). PRESET is a file name in config/
without .py.

Last logged run: dev/LOG.md, "## 2026-12-02: training step against llama2.c's model.py, every preset (bench_train)".
"""
import argparse
import importlib.util
import os
import re
import statistics
import sys
import time
from contextlib import nullcontext
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from configurator import load_config_file  # noqa: E402
from machine import peak_flops  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

KINDS = ("ours", "llama2c", "adamw", "muon", "naive", "repeat", "compile", "bf16")
SHAPE_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len",
              "tie_embeddings", "dropout")  # what a preset leaves out is model.py's default

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


def preset(name):
    path = os.path.join(ROOT, "config", f"{name}.py")
    if not os.path.isfile(path):
        names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "config"))
                   if f.endswith(".py") and "\ndim = " in open(os.path.join(ROOT, "config", f)).read())  # not finetune
        sys.exit(f"bench_train.py: no preset {name!r}; config/ has {', '.join(names)}")
    return load_config_file(path)


def load_llama2c(path):
    if not path or not os.path.isfile(path):
        sys.exit(f"bench_train.py: the llama2c variant needs --llama2c=PATH to llama2.c's model.py (got {path!r})")
    spec = importlib.util.spec_from_file_location("llama2c_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Variant:
    def __init__(self, spec, args):
        self.spec = spec
        m = re.fullmatch(r"([\w.]+):(\w+)(?:@([0-9.]+))?", spec)
        if not m or m.group(2) not in KINDS:
            sys.exit(f"bench_train.py: bad variant {spec!r}; expected PRESET:KIND[@DROPOUT], KIND one of "
                     f"{', '.join(KINDS)}")
        self.preset, kind = m.group(1), m.group(2)
        cfg = preset(self.preset)
        margs = ModelArgs(**{k: cfg[k] for k in SHAPE_KEYS if k in cfg})
        p = float(m.group(3)) if m.group(3) else margs.dropout
        margs.dropout = p
        self.seq, self.vocab = margs.max_seq_len, margs.vocab_size
        self.batch = max(1, args.tokens // self.seq)
        with torch.device("meta"):  # for the FLOP count (MFU) of whichever model runs
            self.flops = Transformer(margs).flops_per_token(self.seq)
        # the step's speed does not depend on the learning rates and betas: any values do
        opt_args = (0.1, 1e-3, (0.9, 0.95), "cpu")
        torch.manual_seed(0)
        if kind == "llama2c":
            l2c = load_llama2c(args.llama2c)
            fields = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len", "dropout")
            self.model = l2c.Transformer(l2c.ModelArgs(**{k: getattr(margs, k) for k in fields})).train()
            self.opt = [self.model.configure_optimizers(*opt_args)]
            self.loss = lambda x, y: (self.model(x, y), self.model.last_loss)[1]
        else:
            self.model = Transformer(margs).train()
            optimizer = kind if kind in ("adamw", "muon") else cfg.get("optimizer", "adamw")  # train.py's default
            self.opt = self.model.configure_optimizers(*opt_args, optimizer=optimizer)
            fwd = torch.compile(self.model) if kind == "compile" else self.model
            self.loss = lambda x, y: fwd(x, y)[1]
        self.patch = {"naive": sdpa_with_dropout(p), "repeat": sdpa_repeat_kv}.get(kind)
        self.dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        xys = [torch.randint(0, self.vocab, (self.batch, self.seq + 1)) for _ in range(4)]
        self.data = [(xy[:, :-1].contiguous(), xy[:, 1:].contiguous()) for xy in xys]
        self.k = 0
        t0 = time.perf_counter()
        self.steps(args.warmup)
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
                    loss = self.loss(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                for opt in self.opt:
                    opt.step()
                    opt.zero_grad(set_to_none=True)

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


def default_variants(llama2c):
    names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "config"))
                   if f.endswith(".py") and "\ndim = " in open(os.path.join(ROOT, "config", f)).read())  # not finetune
    kinds = ("ours", "llama2c") if llama2c else ("ours",)
    return ",".join(f"{n}:{k}" for n in names for k in kinds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=None, help="comma-separated PRESET:KIND[@DROPOUT] list (default: "
                    "every preset, ours and, with --llama2c, llama2.c's)")
    ap.add_argument("--llama2c", default=None, help="path to llama2.c's model.py (never committed here)")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per step (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (compile happens here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quiet", type=float, default=0, help="before each round wait (at most 5 min) until "
                    "CPU pressure (/proc/pressure/cpu some avg10) is below this %% (0: do not wait)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"{torch.backends.cpu.get_cpu_capability()}")
    variants = []
    for spec in (args.variants or default_variants(args.llama2c)).split(","):
        print(f"building {spec} ...", flush=True)
        variants.append(Variant(spec, args))
        print(f"  batch {variants[-1].batch} x {variants[-1].seq}, warm-up {args.warmup} steps: "
              f"{variants[-1].warmup_s:.1f}s", flush=True)
    if args.quiet:
        wait_for_quiet(args.quiet)
    peaks = {dt: peak_flops("cpu", dt) for dt in {v.dtype for v in variants}}
    r = discarded = 0
    while r < args.rounds:
        waited = wait_for_quiet(args.quiet) if args.quiet else 0.0
        before = cpu_pressure()
        shift = (r + discarded) % len(variants)  # rotate the order: no variant always runs first
        for v in variants[shift:] + variants[:shift]:
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
    print(f"{'variant':<28}{'batch':>10}{'tok/s':>10}{'min':>10}{'max':>10}{'vs base':>9}{'MFU':>7}{'warm-up s':>11}")
    base = {}
    for v in variants:
        med = statistics.median(v.rates)
        b = base.setdefault(v.preset, v)
        ratio = statistics.median(r / rb for r, rb in zip(v.rates, b.rates))
        print(f"{v.spec:<28}{f'{v.batch}x{v.seq}':>10}{med:>10,.0f}{min(v.rates):>10,.0f}{max(v.rates):>10,.0f}"
              f"{ratio:>8.2f}x{v.flops * med / peaks[v.dtype] * 100:>6.1f}%{v.warmup_s:>11.1f}")


if __name__ == "__main__":
    main()

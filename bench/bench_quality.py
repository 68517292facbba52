"""Quality per minute: train recipes for the same budget of training time and compare their curves.

    python bench/bench_quality.py --input ../shared/data/tinystories --minutes=10     # 10 minutes per recipe
    python bench/bench_quality.py --data_dir=data --recipes=llama2c,quickstart --minutes=3

Each recipe is train.py with a few settings, run as its own process with --max_minutes (training
time: evaluations are not counted, and the schedule ends exactly when the budget does). Every
evaluation covers --eval_tokens tokens of each split, so the curves of recipes with other batch
shapes are measured alike. The recipes: llama2.c's stories260K recipe as it is (the baseline), the
same model retuned for a CPU (where the quickstart's tuning started), each change on its own on top
of the retuned one, and the quickstart preset. Data: --data_dir with the shards every recipe's
vocabulary needs, or --input story files from which the bench prepares them (train_vocab,
pretokenize) in its out folder.

Writes to --out (default bench/out/quality): one train.py out_dir per recipe, quality.md (a table
per recipe: tokens seen, iterations, val bits per byte after each minute; then every evaluation)
and quality.png (val bits per byte against minutes and against tokens; needs matplotlib, which is
imported only here: without it the bench says so and writes the tables). Threads: as train.py
picks them, or with --jobs=N, N recipes at once, each pinned to its own core with one thread (a
2-core machine measures twice the recipes per hour, each on one core).

Last logged run: dev/LOG.md, "## 2026-12-02: quality per minute, 10 minutes per recipe (bench_quality)"
(the command as run is there).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from bench_train import cpu_pressure  # same folder: the CPU load a run shared the machine with

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = "config/stories260K.py"  # llama2.c's recipe for the 260K model, and the shape the changes start from
RETUNED = [BASE, "--learning_rate=4e-3", "--batch_size=16", "--max_seq_len=256", "--warmup_iters=30", "--min_lr=0"]
RECIPES = {  # name: (what it is, train.py arguments)
    "llama2c": ("llama2.c's stories260K recipe (batch 128 x 512, lr 1e-3, 1000 warm-up iterations)", [BASE]),
    "retuned": ("260K retuned: AdamW lr 4e-3, batch 16 x 256, warm-up 30, cosine to 0", RETUNED),
    "heads2": ("retuned + 2 heads of 32 instead of 8 of 8", RETUNED + ["--n_heads=2", "--n_kv_heads=2"]),
    "vocab2048": ("retuned + a 2048-token vocabulary", RETUNED + ["--vocab_size=2048"]),
    "muon": ("retuned + Muon for the block matrices (muon_lr 0.03)", RETUNED + ["--optimizer=muon", "--muon_lr=0.03"]),
    "wsd": ("retuned + WSD schedule (decay over the last 40%)", RETUNED + ["--lr_schedule=wsd", "--decay_frac=0.4"]),
    "dropout0": ("retuned + dropout 0 (the preset has 0.05)", RETUNED + ["--dropout=0"]),
    "bf16": ("retuned + bfloat16 autocast", RETUNED + ["--dtype=bfloat16"]),
    "quickstart": ("config/quickstart.py", ["config/quickstart.py"]),
}


def recipe_settings(args):
    """The settings a recipe's arguments set: its config files, then its --key=value (as literals)."""
    import ast
    sys.path.insert(0, ROOT)
    from configurator import load_config_file
    out = {}
    for a in args:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            try:
                out[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                out[key] = value
        else:
            out.update(load_config_file(os.path.join(ROOT, a)))
    return out


def prepare(inputs, vocab_sizes, data_dir):
    """train_vocab + pretokenize every vocabulary the recipes need (each step skips what is done)."""
    for v in sorted(vocab_sizes):
        for step in ("train_vocab", "pretokenize"):
            cmd = [sys.executable, os.path.join(ROOT, "tinystories.py"), step, f"--vocab_size={v}",
                   f"--data_dir={data_dir}", "--input", *inputs]
            subprocess.run(cmd, check=True)


def start(name, args, out, data_dir, minutes, eval_tokens, eval_every, core=None):
    """Start one recipe's training for `minutes`; core: pin it to that CPU with 1 thread (--jobs)."""
    out_dir = os.path.join(out, name)
    shutil.rmtree(out_dir, ignore_errors=True)  # a fresh run, never a continuation
    os.makedirs(out_dir)
    s = recipe_settings(args)
    batch_tokens = s["batch_size"] * s["max_seq_len"]
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *(a if a.startswith("--") else os.path.join(ROOT, a)
                                                             for a in args),
           f"--data_dir={data_dir}", f"--out_dir={out_dir}", f"--max_minutes={minutes}", "--max_iters=1000000000",
           "--compile=False", f"--eval_iters={max(1, eval_tokens // batch_tokens)}",
           f"--eval_interval={max(1, eval_every // (batch_tokens * s.get('gradient_accumulation_steps', 1)))}",
           "--log_interval=10"]
    env, pin = dict(os.environ), None
    if core is not None:
        env["OMP_NUM_THREADS"] = "1"
        if hasattr(os, "sched_setaffinity"):
            pin = lambda: os.sched_setaffinity(0, {core})  # noqa: E731
    print(f"== {name}: {' '.join(args)}" + (f" (core {core}, 1 thread)" if core is not None else ""), flush=True)
    log = open(os.path.join(out_dir, "log.txt"), "w")
    proc = subprocess.Popen(cmd, cwd=out_dir, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=pin)
    return name, s, proc, log, time.perf_counter()


def finish(run, out, minutes):
    """Wait for a started recipe; returns its evaluations [(iter, tokens, minutes, val bpb)]."""
    name, s, proc, log, t0 = run
    proc.wait()
    log.close()
    out_dir = os.path.join(out, name)
    if proc.returncode != 0:
        sys.exit(f"bench_quality.py: recipe {name} failed (exit {proc.returncode}); see {out_dir}/log.txt")
    tokens_per_iter = s["batch_size"] * s["max_seq_len"] * s.get("gradient_accumulation_steps", 1)
    rows = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            e = json.loads(line)
            if "val_bpb" in e:
                # the last iteration ends just past the budget: its evaluation is the budget's
                rows.append((e["iter"], e["iter"] * tokens_per_iter, min(e["train_s"] / 60, minutes), e["val_bpb"]))
    print(f"   {name}: {rows[-1][0]:,} iterations, {rows[-1][1]:,} tokens, val {rows[-1][3]:.4f} bits/byte, "
          f"{time.perf_counter() - t0:.0f} s wall (cpu pressure {cpu_pressure()}% at the end)", flush=True)
    return rows


def curve_at(rows, minute):
    """Val bits per byte of the last evaluation at or before `minute` of training (None before any)."""
    before = [r for r in rows if r[2] <= minute + 1e-9]
    return before[-1][3] if before else None


def write_tables(results, minutes, path):
    marks = [m for m in (1, 2, 3, 5, 10, 20, 30) if m < minutes] + [minutes]
    lines = ["| recipe | what | tokens seen | iterations | " + " | ".join(f"{m:g} min" for m in marks) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in marks) + " |"]
    for name, rows in results.items():
        last = rows[-1]
        cells = [f"{b:.3f}" if (b := curve_at(rows, m)) is not None else "" for m in marks]
        lines.append(f"| {name} | {RECIPES[name][0]} | {last[1]:,} | {last[0]:,} | " + " | ".join(cells) + " |")
    lines += ["", "| recipe | iteration | tokens | minutes | val bits/byte |", "| --- | --- | --- | --- | --- |"]
    for name, rows in results.items():
        lines += [f"| {name} | {it} | {tok:,} | {m:.2f} | {b:.4f} |" for it, tok, m, b in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines[:len(results) + 2]))


def write_plot(results, path):
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no {path} (pip install matplotlib); the tables are written")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for name, rows in results.items():
        a.plot([r[2] for r in rows], [r[3] for r in rows], marker=".", label=name)
        b.plot([r[1] / 1e6 for r in rows], [r[3] for r in rows], marker=".", label=name)
    a.set_xlabel("minutes of training")
    b.set_xlabel("million tokens")
    a.set_ylabel("val bits per byte")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated (default: all): "
                    + ", ".join(RECIPES))
    ap.add_argument("--minutes", type=float, default=10.0, help="training minutes per recipe")
    ap.add_argument("--data_dir", default=None, help="prepared shards (default: prepare from --input)")
    ap.add_argument("--input", nargs="+", default=None, metavar="PATH", help="story files or folders to prepare "
                    "the recipes' vocabularies and shards from (into OUT/data)")
    ap.add_argument("--eval_tokens", type=int, default=65536, help="tokens per split in each evaluation")
    ap.add_argument("--eval_every", type=int, default=1_000_000, help="training tokens between evaluations")
    ap.add_argument("--jobs", type=int, default=1, help="recipes trained at once, each pinned to its own core "
                    "with 1 thread (default 1: one at a time, with train.py's threads)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "quality"))
    args = ap.parse_args()
    names = args.recipes.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        sys.exit(f"bench_quality.py: unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if not 1 <= args.jobs <= len(cores):
        sys.exit(f"bench_quality.py: --jobs={args.jobs} must be between 1 and the {len(cores)} cores this process may use")
    if (args.data_dir is None) == (args.input is None):
        sys.exit("bench_quality.py: give --data_dir (prepared shards) or --input (story files to prepare)")
    os.makedirs(args.out, exist_ok=True)
    data_dir = args.data_dir
    if args.input:
        data_dir = os.path.join(args.out, "data")
        prepare(args.input, {recipe_settings(RECIPES[n][1])["vocab_size"] for n in names}, data_dir)
    results = {}
    for i in range(0, len(names), args.jobs):  # --jobs recipes at a time, each on its own core
        batch = names[i:i + args.jobs]
        runs = [start(n, RECIPES[n][1], args.out, os.path.abspath(data_dir), args.minutes, args.eval_tokens,
                      args.eval_every, core=cores[j] if args.jobs > 1 else None) for j, n in enumerate(batch)]
        for r in runs:
            results[r[0]] = finish(r, args.out, args.minutes)
    write_tables(results, args.minutes, os.path.join(args.out, "quality.md"))
    write_plot(results, os.path.join(args.out, "quality.png"))


if __name__ == "__main__":
    main()

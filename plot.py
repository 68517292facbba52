"""Plot training runs: train/val loss and val bits per byte against iterations, tokens and minutes.

    python plot.py out/                      # one run -> out/plot.png
    python plot.py out260K/ out/ -o cmp.png  # several side by side, one colour each

Reads each run's metrics.jsonl (written by train.py: a line per log interval and per evaluation).
Minutes are training time: train.py's training clock (train_s; for older runs the logged ms/iter
summed over the iterations between log lines), so evaluations and pauses between resumed sessions do
not count. A resumed run's later lines replace
the lines of the iterations it repeated. matplotlib is needed here only (pip install matplotlib).
"""
import argparse
import json
import os
import sys

from configurator import one_line_errors
from fileio import atomic_write


def load_run(folder):
    """{"train": [(iter, tokens, minutes, loss)], "val": [(iter, tokens, minutes, val_loss, val_bpb)]}."""
    path = os.path.join(folder, "metrics.jsonl")
    entries = []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    e = json.loads(line)
                    it = int(e["iter"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{path}: line {n} is not a train.py metrics record") from None
                if e.get("event") == "resume":  # what follows redoes the iterations after `it`
                    entries = [x for x in entries if x["iter"] <= it]
                else:
                    entries.append(e)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror} (is {folder} a train.py out_dir?)") from None
    logs = sorted((e for e in entries if "ms_per_iter" in e), key=lambda e: e["iter"])
    evals = sorted((e for e in entries if "val_loss" in e), key=lambda e: e["iter"])
    if not logs and not evals:
        raise ValueError(f"{path}: no log or evaluation lines yet")
    # tokens per iteration from any evaluation that records its tokens (iteration 0 says nothing)
    per_iter = next((e["tokens"] / e["iter"] for e in evals if e.get("tokens") and e["iter"]), None)
    minutes, t, prev = {0: 0.0}, 0.0, 0
    for e in logs:  # train.py records its training clock (train_s); older runs only ms/iter
        t = e["train_s"] / 60 if "train_s" in e else t + e["ms_per_iter"] * (e["iter"] - prev) / 60000
        minutes[e["iter"]] = t
        prev = e["iter"]
    for e in evals:
        if "train_s" in e:
            minutes[e["iter"]] = e["train_s"] / 60

    def at(it):  # training minutes at iteration it (linear between log lines)
        known = sorted(minutes)
        lo = max((k for k in known if k <= it), default=0)
        hi = min((k for k in known if k >= it), default=lo)
        if hi == lo:
            return minutes[lo] + (it - lo) * (minutes[lo] / lo if lo else 0.0)
        return minutes[lo] + (minutes[hi] - minutes[lo]) * (it - lo) / (hi - lo)

    tokens = (lambda it: it * per_iter) if per_iter else (lambda it: None)
    return {"train": [(e["iter"], tokens(e["iter"]), at(e["iter"]), e["loss"]) for e in logs],
            "val": [(e["iter"], tokens(e["iter"]), at(e["iter"]), e["val_loss"], e["val_bpb"]) for e in evals]}


def plot(runs, out):
    """runs: [(label, load_run(...))] -> a PNG at out with loss and bits/byte against 3 x axes."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no screen needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plot.py needs matplotlib: pip install matplotlib") from None
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), squeeze=False)
    xs = (("iterations", 0), ("tokens", 1), ("training minutes", 2))
    for c, (label, run) in enumerate(runs):
        colour = f"C{c % 10}"
        for col, (name, k) in enumerate(xs):
            train = [(p[k], p[3]) for p in run["train"] if p[k] is not None]
            val = [(p[k], p[3], p[4]) for p in run["val"] if p[k] is not None]
            ax_loss, ax_bpb = axes[0][col], axes[1][col]
            if train:
                ax_loss.plot(*zip(*train), color=colour, alpha=0.35, lw=1, label=f"{label} train")
            if val:
                vx, vl, vb = zip(*val)
                ax_loss.plot(vx, vl, color=colour, marker="o", ms=3, label=f"{label} val")
                ax_bpb.plot(vx, vb, color=colour, marker="o", ms=3, label=label)
            ax_loss.set_xlabel(name)
            ax_bpb.set_xlabel(name)
    axes[0][0].set_ylabel("loss (nats/token)")
    axes[1][0].set_ylabel("val bits per byte")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot train.py runs (metrics.jsonl): loss and bits per byte.")
    p.add_argument("runs", nargs="+", metavar="OUT_DIR", help="train.py out_dir folders")
    p.add_argument("-o", "--output", default=None, help="PNG file (default: OUT_DIR/plot.png of the first run)")
    a = one_line_errors(p).parse_args(argv)
    out = a.output or os.path.join(a.runs[0], "plot.png")
    try:
        runs = [(os.path.basename(os.path.normpath(r)) or r, load_run(r)) for r in a.runs]
        plot(runs, out)
    except (ValueError, OSError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

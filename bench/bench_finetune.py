"""Fine-tuning measured: Karpathy's stories260K fine-tuned on other stories (TinyStoriesV2, GPT-4 only) for a
few minutes with config/finetune.py, and its held-out loss before and after on that corpus and on the one it
was trained on (TinyStories V1: what it forgot).

    python bench/bench_finetune.py                                   # config/finetune.py as it is
    python bench/bench_finetune.py --minutes=3 --try lr1e-3:--learning_rate=1e-3 --try s512:--max_seq_len=512

Data (from ../shared/data, prepared under --out): the stories of TinyStoriesV2-GPT4-train.head-10k-lines.txt
and of TinyStories-train.head-2MiB.txt (V1), each split into a train file (the first 90%) and a held-out
*valid* file (the last 10%), pretokenized with tok512.model. Each --try NAME:ARGS (default: one, "preset")
is `train.py config/finetune.py --init_from=stories260K.bin --tokenizer=tok512.model ARGS` on the V2 train
part, in its own out_dir. The held-out loss is over every token of a valid split, in disjoint windows of the
model's context (512), in nats per token and bits per UTF-8 byte. The machine's load is read before and after
each run (a time budget buys fewer iterations on a busy machine).

Last logged run: dev/LOG.md, "## 2026-12-07: fine-tuning stories260K on TinyStoriesV2 (bench_finetune)".
"""
import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
import dataloader  # noqa: E402  (the repo's flat modules, from ROOT)
import tinystories  # noqa: E402
from pretrained import load_pretrained  # noqa: E402

SHARED = os.path.join(ROOT, "..", "shared", "data")
CORPORA = {"v2": "TinyStoriesV2-GPT4-train.head-10k-lines.txt", "v1": "TinyStories-train.head-2MiB.txt"}


def load():
    return f"{os.getloadavg()[0]:.2f}"


def prepare(out, tok):
    """{corpus: data_dir}: each corpus split 90/10 into train and *valid* story files, pretokenized with tok."""
    dirs = {}
    for name, file in CORPORA.items():
        stories = list(tinystories.iter_stories(os.path.join(SHARED, "tinystories", file)))
        cut = len(stories) * 9 // 10
        folder = os.path.join(out, "text", name)
        os.makedirs(folder, exist_ok=True)
        for part, chunk in (("train", stories[:cut]), ("valid", stories[cut:])):
            with open(os.path.join(folder, f"{name}-{part}.txt"), "w", encoding="utf-8") as f:
                f.writelines(f"{s}\n{tinystories.SEP}\n" for s in chunk)
        dirs[name] = os.path.join(out, f"data-{name}")
        files = [os.path.join(folder, f"{name}-{part}.txt") for part in ("train", "valid")]
        tinystories.pretokenize(512, files, data_dir=dirs[name], tokenizer=tok, workers=1)
        print(f"{name}: {cut} stories to train on, {len(stories) - cut} held out", flush=True)
    return dirs


@torch.no_grad()
def held_out(path, data_dir, context=512):
    """(nats per token, bits per byte, nats per token inside stories) of the model in path over data_dir's val
    split. Inside stories: BOS and EOS targets left out. Our shards end every story with EOS, which llama2.c's
    (stories260K's training data: BOS + story) do not have: that token alone costs stories260K much."""
    model = load_pretrained(path).model.eval()
    shards = dataloader.split_shards("val", 512, "tok512", data_dir)
    toks = torch.from_numpy(np.concatenate([np.asarray(dataloader.load_shard(p), dtype=np.int64) for p, _ in shards]))
    n = (len(toks) - 1) // context
    x, y = toks[:n * context].view(n, context), toks[1:n * context + 1].view(n, context)
    losses = torch.cat([F.cross_entropy(model(x[i:i + 16])[0].flatten(0, 1), y[i:i + 16].flatten(), reduction="none")
                        for i in range(0, n, 16)])
    inside = (y.flatten() != shards[0][1]["bos_id"]) & (y.flatten() != shards[0][1]["eos_id"])
    loss = losses.mean().item()
    return loss, loss / math.log(2) / dataloader.bytes_per_token(shards), losses[inside].mean().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "finetune"))
    ap.add_argument("--minutes", type=float, default=None, help="max_minutes (default: the preset's)")
    ap.add_argument("--try", dest="tries", action="append", default=None, metavar="NAME:ARGS",
                    help="a run named NAME with these train.py arguments (space-separated) after the preset's")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, tok = os.path.join(SHARED, "models", "stories260K.bin"), os.path.join(SHARED, "models", "tok512.model")
    dirs = prepare(a.out, tok)
    rows = [("stories260K.bin (before)", "", "", *held_out(model, dirs["v2"]), *held_out(model, dirs["v1"]))]
    for spec in a.tries or ["preset:"]:
        name, _, args = spec.partition(":")
        out_dir = os.path.join(a.out, name)
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "finetune.py"),
               f"--init_from={model}", f"--tokenizer={tok}", f"--data_dir={dirs['v2']}", f"--out_dir={out_dir}",
               "--overwrite=True", *([f"--max_minutes={a.minutes}"] if a.minutes else []), *args.split()]
        print(" ".join(cmd[1:]), f"(load {load()})", flush=True)
        t0, before = time.time(), load()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{name}: train.py failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        ckpt = os.path.join(out_dir, "ckpt.pt")
        saved = torch.load(ckpt, weights_only=True)
        done = f"{saved['iter_num']} iterations, {saved['train_seconds'] / 60:.1f} min"
        rows.append((name, done, f"{before} / {load()}, {time.time() - t0:.0f} s",
                     *held_out(ckpt, dirs["v2"]), *held_out(ckpt, dirs["v1"])))
    print("\n| run | trained (the checkpoint's) | load (1-min avg) before / after, wall | V2 loss | V2 bits/byte | "
          "V2 loss in stories | V1 loss | V1 bits/byte | V1 loss in stories |\n|---|---|---|---|---|---|---|---|---|")
    for name, trained, where, *losses in rows:
        print(f"| {name} | {trained} | {where} | " + " | ".join(f"{v:.4f}" for v in losses) + " |")


if __name__ == "__main__":
    main()

"""Quality per bit: held-out bits per byte of run.c's fp32, q8_0, q4 (q6 classifier), q4_q8 (the older q4,
q8_0 classifier) and q4 GPTQ files against llama.cpp's
F32, Q8_0, Q6_K, Q5_0, Q4_K_M and Q4_0 of the same weights, each with its size in bits per weight.

    python bench/bench_quant.py                                   stories260K
    python bench/bench_quant.py --checkpoint out/ckpt.pt          and a train.py checkpoint (repeatable)
    python bench/bench_quant.py --llama-cpp ~/llama.cpp/build/bin (llama-quantize of your own build)

Text: the last 300 stories of the shared tinystories-3000-stories.json (as bench_run.py's quality),
each tokenized by run.c (-m tokenize) with BOS in front; the same tokens go to both engines. A story
longer than the model's context is scored in windows of the context that overlap by one token, so
every token after BOS is scored once. Bits per byte: the summed -log2 p of every token after BOS over
the stories' UTF-8 bytes. Ours: run.c -m logits. llama.cpp's: llama-cpp-python's Llama(logits_all=True)
(the same llama.cpp source, requirements-llama.txt) on the GGUF that export.py --to_gguf writes (F32)
and llama-quantize (bench/llama_tools.py) makes of it. Bits per weight: tensor bytes x 8 / parameters
(the .bin's 256-byte header and the GGUF's metadata and tokenizer left out). The k-quants need rows
of 256: llama-quantize gives smaller rows another type, which the table names.
stories260K has no training shards for GPTQ to calibrate on: its q4 GPTQ is calibrated on 128 windows of
the shared TinyStories-train.head-2MiB.txt instead (not the held-out stories).
--classifier adds a second table: q4 layers with the classifier in fp32, q8_0, q6 or q4 (weights rounded
by binfile's writers, scored through run.c's fp32 path), whether a smaller classifier pays.

Last logged run: dev/LOG.md, "## 2026-12-07: the q6 classifier in real files: q4 (weight_type 4) against the older
q4_q8 (type 3) and llama.cpp (bench_quant)".
"""
import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: bench_run, llama_tools
import llama_tools  # noqa: E402
from bench_run import OUT, REPO, SHARED, f32_gguf, held_out_texts, markdown_table, sh, stories_model  # noqa: E402

LLAMA_QUANTS = ("Q8_0", "Q6_K", "Q5_0", "Q4_K_M", "Q4_0")  # and F32, export.py's own


def token_ids(model, tokenizer, texts, bos=1):
    """Each text's token ids by run.c's tokenizer, BOS first."""
    return [[bos] + [int(t) for t in sh([str(REPO / "run"), str(model), "-z", str(tokenizer), "-m", "tokenize",
                                         "-i", text]).stdout.split()] for text in texts]


def windows(ids, ctx):
    """ids in windows of at most ctx tokens, each starting with the last token of the one before: every
    token but the first is predicted in exactly one window."""
    step = ctx - 1
    return [ids[i:i + ctx] for i in range(0, max(len(ids) - 1, 1), step)]


def nll_bits(logits, ids):
    """Sum of -log2 p(ids[i + 1] | logits[i]) over a window (logits: (len(ids), vocab))."""
    L = np.asarray(logits, np.float64)[:len(ids) - 1]
    m = L.max(1, keepdims=True)
    logp = L - m - np.log(np.exp(L - m).sum(1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()) / math.log(2)


def bpb_ours(model, tokenizer, texts, seqs, ctx):
    """run.c's held-out bits per byte of texts (seqs: their token ids). One function on purpose: when
    run.c scores a text file itself (-m score), this is the only place to change."""
    out, bits = OUT / "quant_logits.bin", 0.0
    for ids in seqs:
        for w in windows(ids, ctx):
            sh([str(REPO / "run"), str(model), "-z", str(tokenizer), "-m", "logits", "-i", " ".join(map(str, w)),
                "-o", str(out)])
            bits += nll_bits(np.fromfile(out, np.float32).reshape(len(w), -1), w)
    return bits / sum(len(t.encode()) for t in texts)


def bpb_llama(gguf, texts, seqs, ctx):
    """llama.cpp's held-out bits per byte of texts, on the same token ids, through llama-cpp-python."""
    from llama_cpp import Llama
    # one thread for the batch too: its default, every core, spins at barriers beside a busy core
    llm = Llama(model_path=str(gguf), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True, n_threads=1,
                n_threads_batch=1, verbose=False)
    bits = 0.0
    for ids in seqs:
        for w in windows(ids, ctx):
            llm.reset()
            llm.eval(w)
            bits += nll_bits(llm.scores[:len(w)], w)
    llm.close()
    return bits / sum(len(t.encode()) for t in texts)


def stories260k_files():
    """stories260K as v3 fp32, q8_0, q4 and q4 GPTQ (calibrated on 128 windows of the shared training
    text's head), and its tokenizer (run.c's .bin, sentencepiece's .model for the GGUF)."""
    import copy

    import sentencepiece as spm
    from binfile import gptq_model, load_bin, model_export, pick_group_size, read_header
    from model import ffn_hidden_dim
    tok = SHARED / "models" / "tok512.bin"
    paths = {d: stories_model(d) for d in ("q8_0", "q4")}
    paths["fp32"], paths["q4 gptq"] = OUT / "stories260K_v3_fp32.bin", OUT / "stories260K_q4_gptq.bin"
    model = load_bin(SHARED / "models" / "stories260K.bin")
    if not paths["fp32"].exists():
        model_export(model, paths["fp32"], version=3, dtype="fp32")
    if not paths["q4 gptq"].exists() or read_header(paths["q4 gptq"])["weight_type"] != "q4":  # older: q4_q8
        sp = spm.SentencePieceProcessor(model_file=str(tok.with_suffix(".model")))
        text = (SHARED / "tinystories" / "TinyStories-train.head-2MiB.txt").read_text()[:1 << 20]
        ids = [i for story in text.split("<|endoftext|>") for i in [1] + sp.encode(story.strip())]
        n = model.args.max_seq_len
        starts = np.random.default_rng(0).integers(0, len(ids) - n, 128)
        rounded = copy.deepcopy(model)
        gs = pick_group_size(64, model.args.dim, ffn_hidden_dim(model.args))
        gptq_model(rounded, torch.tensor([ids[s:s + n] for s in starts]), gs)
        model_export(rounded, paths["q4 gptq"], version=3, dtype="q4", group_size=gs)
    return old_q4(paths, "stories260K"), (tok, tok.with_suffix(".model"))


def old_q4(paths, label):
    """paths' fp32, q8_0, q4 and q4 GPTQ files, and the fp32 weights as the older q4 (weight type 3: its
    classifier in q8_0, where q4's is q6) written to bench/out/<label>_q4_q8.bin beside them."""
    from binfile import load_bin, model_export
    out = dict(paths, q4_q8=OUT / f"{label}_q4_q8.bin")
    model_export(load_bin(paths["fp32"]), out["q4_q8"], version=3, dtype="q4_q8")
    return {d: out[d] for d in ("fp32", "q8_0", "q4_q8", "q4", "q4 gptq")}


def checkpoint_files(ckpt):
    """A train.py checkpoint's v3 files (bench_run.checkpoint_models: its GPTQ calibrates on its own
    training shards) and its tokenizer (run.c's .bin, sentencepiece's .model)."""
    import vocab
    from bench_run import checkpoint_models
    from tokenizer import Tokenizer
    paths, tok_model = checkpoint_models(ckpt)
    tok = tok_model.with_suffix(".bin")
    if not tok.exists():  # train_vocab writes the .model; run.c reads the .bin export.py writes of it
        tok = OUT / f"{Path(ckpt).parent.name}_{tok.name}"
        vocab.write_bin(Tokenizer(tok_model).vocab, tok)
    return old_q4(paths, Path(ckpt).parent.name), (tok, tok_model)


def quant_rows(name, paths, toks, tools, n_texts):
    """The rows of one model: each of our files and each llama.cpp file of the same weights."""
    from binfile import HEADER_BYTES, Q4_CLASSIFIER, load_bin, read_header
    tok, tok_model = toks
    texts = held_out_texts(n_texts)
    ctx = read_header(paths["fp32"])["max_seq_len"]
    seqs = token_ids(paths["fp32"], tok, texts)
    n_params = sum(p.numel() for p in load_bin(paths["fp32"]).parameters())  # a tied classifier once
    print(f"\n{name}: {n_params:,} parameters, {len(texts)} held-out stories, {sum(len(s) - 1 for s in seqs):,} "
          f"tokens, {sum(len(t.encode()) for t in texts):,} bytes, context {ctx}", flush=True)
    rows = []
    for d, path in paths.items():
        size = os.path.getsize(path) - HEADER_BYTES
        wt = read_header(path)["weight_type"]
        cls = Q4_CLASSIFIER.get(wt, wt)
        rows.append([name, "run.c", d, cls, size, bpb_ours(path, tok, texts, seqs, ctx)])
        print(rows[-1], flush=True)
    if tools:
        f32 = f32_gguf(paths["fp32"], tok_model, file_label(name))
        for q in ("F32",) + LLAMA_QUANTS:
            gguf = f32 if q == "F32" else llama_tools.quantize(tools, f32, OUT / f"{file_label(name)}_{q}.gguf", q)
            tensors = llama_tools.gguf_tensors(gguf)
            kinds = sorted({t for t, ne, _ in tensors.values() if len(ne) > 1})
            cls = tensors.get("output.weight", tensors["token_embd.weight"])[0]
            rows.append([name, "llama.cpp", f"{q} ({'+'.join(kinds)})", cls, sum(b for _, _, b in tensors.values()),
                         bpb_llama(gguf, texts, seqs, ctx)])
            print(rows[-1], flush=True)
    ref = rows[0][5]
    return [[m, eng, fmt, cls, f"{8 * size / n_params:.2f}", f"{size / 1e6:.3f}", f"{bpb:.4f}",
             f"{100 * (bpb - ref) / ref:+.2f}%"] for m, eng, fmt, cls, size, bpb in rows]


def q6_round(w, group_size):
    """w as a q6 classifier holds it (binfile's writer, dequantised): levels -31..31 times one fp32 scale per
    group, 6 + 32 / group_size bits a weight."""
    from binfile import dequantize_q6, quantize_q6
    return dequantize_q6(*quantize_q6(w, group_size), w.shape)


def classifier_variants(fp32_bin, name):
    """One model as fp32 .bin files that hold its weights already rounded: every layer matrix as our q4
    (round to nearest) and the classifier (tied: the embedding too) as fp32, q8_0, q6 or q4. Run
    through the same fp32 path, their losses differ by the classifier's format alone.
    Returns {format: (path, bits per weight of the whole model)}."""
    import copy

    from binfile import (CLASSIFIER, dequantize_q4, dequantize_q80, load_bin, model_export, pick_group_size,
                         quantize_q4, quantize_q80)
    from model import ffn_hidden_dim
    model = load_bin(fp32_bin)
    gs = pick_group_size(64, model.args.dim, ffn_hidden_dim(model.args))
    cls_gs = pick_group_size(64, model.args.dim, model.args.dim)  # a classifier row is dim long
    rounds = {"q8_0": lambda w: dequantize_q80(*quantize_q80(w, cls_gs), w.shape),
              "q4": lambda w: dequantize_q4(*quantize_q4(w, cls_gs), w.shape),
              "q6": lambda w: q6_round(w, cls_gs), "fp32": lambda w: w}
    bits = {"fp32": 32.0, "q8_0": 8 + 32 / cls_gs, "q6": 6 + 32 / cls_gs, "q4": 4 + 32 / cls_gs}
    out = {}
    for fmt, rnd in rounds.items():
        m = copy.deepcopy(model)
        total_bits, n = 0.0, 0
        with torch.no_grad():
            for pname, p in m.named_parameters():
                if pname in CLASSIFIER:
                    p.copy_(rnd(p))
                    total_bits += bits[fmt] * p.numel()
                elif p.dim() == 2:
                    p.copy_(dequantize_q4(*quantize_q4(p, gs), p.shape))
                    total_bits += (4 + 32 / gs) * p.numel()
                else:
                    total_bits += 32 * p.numel()
                n += p.numel()
        path = OUT / f"{file_label(name)}_q4_cls_{fmt}.bin"
        model_export(m, path, version=3, dtype="fp32")
        out[fmt] = (path, total_bits / n)
    return out


def classifier_rows(name, paths, toks, n_texts):
    """The classifier question: q4 layers with each classifier format, through run.c's fp32 path."""
    from binfile import read_header
    tok = toks[0]
    texts = held_out_texts(n_texts)
    ctx = read_header(paths["fp32"])["max_seq_len"]
    seqs = token_ids(paths["fp32"], tok, texts)
    rows = []
    for fmt, (path, bpw) in classifier_variants(paths["fp32"], name).items():
        bpb = bpb_ours(path, tok, texts, seqs, ctx)
        rows.append([name, f"q4 layers, {fmt} classifier", f"{bpw:.2f}", f"{bpb:.4f}"])
        print(rows[-1], flush=True)
    return rows


def file_label(name):
    """A model's name in bench/out/ file names: stories260K, or a checkpoint's folder (as checkpoint_models)."""
    return name if name == "stories260K" else Path(name).parent.name


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", action="append", default=[], metavar="CKPT", help="a train.py checkpoint too")
    p.add_argument("--no-stories260k", action="store_true", help="only the --checkpoint models")
    p.add_argument("--texts", type=int, default=300, help="how many held-out stories (the last of the 3000)")
    p.add_argument("--llama-cpp", default=None, metavar="DIR", help="a llama.cpp build's folder of tools")
    p.add_argument("--out", default=str(OUT / "quant_table.md"), help="where the table goes")
    p.add_argument("--classifier", action="store_true",
                   help="also: q4 layers with an fp32/q8_0/q6/q4 classifier (rounded weights, run.c's fp32 path)")
    a = p.parse_args()
    for c in a.checkpoint:
        if not Path(c).is_file():
            p.error(f"--checkpoint {c}: no such file")
    OUT.mkdir(parents=True, exist_ok=True)
    sh(["make", "-C", str(REPO), "run"])
    tools = llama_tools.find(a.llama_cpp)
    if importlib.util.find_spec("llama_cpp") is None:
        tools = None
        print("note: llama-cpp-python is not installed (pip install -r requirements-llama.txt): llama.cpp's rows "
              "are left out", file=sys.stderr)
    if tools is None:
        print(f"note: {llama_tools.missing_message(a.llama_cpp)}", file=sys.stderr)
    models = [] if a.no_stories260k else [("stories260K", *stories260k_files())]
    models += [(c, *checkpoint_files(c)) for c in a.checkpoint]
    head = ["model", "engine", "format (tensor types)", "classifier", "bits/weight", "weight MB",
            "held-out bits/byte", "vs fp32"]
    rows = [r for name, paths, toks in models for r in quant_rows(name, paths, toks, tools, a.texts)]
    table = markdown_table(head, rows)
    if a.classifier:
        crows = [r for name, paths, toks in models for r in classifier_rows(name, paths, toks, a.texts)]
        table += "\n\n" + markdown_table(["model", "weights", "bits/weight", "held-out bits/byte"], crows)
    print("\n" + table)
    from fileio import atomic_write
    atomic_write(a.out, lambda f: f.write((table + "\n").encode()))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

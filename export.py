"""export.py: the command line that moves models out of and into PyTorch: flat .bin files for run.c
(binfile.py), Hugging Face Llama directories (hf.py, no transformers needed) and GGUF files for
llama.cpp (gguf_file.py).

    python export.py OUT.bin --checkpoint=out/ckpt.pt [--version=3] [--dtype=fp32|bf16|q8_0|q4|q4_q8] [--group_size=64]
    python export.py OUT.bin --checkpoint=out/ckpt.pt --dtype=q4 --gptq=128   4-bit, calibrated on its training data
    python export.py OUT.bin --bin=IN.bin ...          re-export a .bin in another version
    python export.py OUT.bin --hf=DIR ...              import a Hugging Face Llama directory (and its tokenizer)
    python export.py --to_hf=DIR --checkpoint=...      write a directory LlamaForCausalLM and AutoTokenizer
                                                        load (from --checkpoint, --bin, --hf or --gguf)
    python export.py OUT.bin --gguf=IN.gguf            import a llama.cpp GGUF (Llama; f32, f16 or q8_0)
    python export.py --to_gguf=OUT.gguf --checkpoint=... [--dtype=fp32|f16|q8_0]   write one llama.cpp runs

OUT.bin gets the model's run.c tokenizer beside it (tok{vocab_size}.bin, where run.c looks) whenever
the tokenizer is known: the checkpoint's own (the copy train.py keeps beside it), the HF directory's own, the
one beside --bin, the GGUF's own, or --tokenizer.
"""
import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import dataloader
import gguf_file
import tokenizer as T
from binfile import Q4_CLASSIFIER, WEIGHT_TYPES, gptq_model, load_bin, model_export, pick_group_size, read_back, read_header
from checkpoint import checkpoint_tokenizer, load_checkpoint
from configurator import one_line_errors
from fileio import publish, temp_path
from hf import hf_export, hf_import
from model import ffn_hidden_dim
import vocab as V


def check_finite(model, source):
    """ValueError naming the first weight that holds NaN or inf: exported, it would only give NaN logits."""
    for name, w in model.state_dict().items():
        bad = int((~torch.isfinite(w)).sum())
        if bad:
            raise ValueError(f"{source}: {name} has {bad} NaN or infinite values (a diverged run?); "
                             "pass --allow_nonfinite to export it anyway")


def calibration_tokens(train_config: dict, vocab_size: int, n: int, seq_len: int) -> torch.Tensor:
    """(n, seq_len) windows at seeded random places in a checkpoint's training shards."""
    shards = [dataloader.load_shard(p) for p, _ in dataloader.split_shards(
        "train", vocab_size, train_config.get("vocab_source", "custom"), train_config.get("data_dir"))]
    shards = [t for t in shards if len(t) > seq_len]
    if not shards:
        raise ValueError(f"--gptq: the training shards hold no window of max_seq_len={seq_len} tokens")
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(n):
        t = shards[rng.integers(len(shards))]
        start = int(rng.integers(len(t) - seq_len))
        rows.append(np.asarray(t[start:start + seq_len], dtype=np.int64))
    return torch.from_numpy(np.stack(rows))


def model_tokenizer(a, model, model_id, ckpt_tokenizer, note):
    """The tokenizer.Tokenizer of the model being exported, or None (with a note) when it is not known:
    --tokenizer, else the checkpoint's own (checkpoint.checkpoint_tokenizer), the HF directory's, the
    GGUF's, or the run.c tokenizer beside --bin. ValueError when it is not the model's (identity or size)."""
    n = model.args.vocab_size
    path = a.tokenizer
    if path is None and a.checkpoint:
        path = ckpt_tokenizer
        if not path.is_file():
            note(f"no tokenizer written: {path} (the checkpoint's vocabulary) not found; pass --tokenizer=PATH")
            return None
    elif path is None and a.gguf:
        path = a.gguf
    elif path is None and a.hf:
        path = a.hf
        if not any(os.path.exists(os.path.join(a.hf, f)) for f in ("tokenizer.json", "tokenizer.model")):
            note(f"no tokenizer written: {a.hf} has no tokenizer.json or tokenizer.model")
            return None
    elif path is None:
        path = next((q for q in T.beside(a.bin, n) if q.is_file()), None)
        if path is None:
            note(f"no tokenizer written: none beside {a.bin}; pass --tokenizer=PATH")
            return None
    tok = T.Tokenizer(path)
    if tok.problem:
        note(f"no tokenizer written: run.c cannot encode like {path}: {tok.problem}")
        return None
    if tok.n_words < n and (a.hf or a.gguf or a.tokenizer):
        # Hugging Face models often have more embedding rows than tokens: the rest are unused tokens
        v = tok.vocab
        pad = n - len(v)
        v.pieces, v.scores, v.types, v.in_text = v.pieces + [b""] * pad, v.scores + [0.0] * pad, v.types + [V.UNUSED] * pad, \
            v.in_text + [False] * pad
        tok.n_words, tok.identity = n, V.identity(v)
    if tok.n_words != n:
        raise ValueError(f"tokenizer {path} has {tok.n_words} tokens, the model {n}")
    if model_id and tok.identity and model_id != tok.identity:
        raise ValueError(f"{path} is not the vocabulary the model was made with (identity {tok.identity.hex()[:12]}, "
                         f"the model's {model_id.hex()[:12]}): pass --tokenizer=PATH")
    return tok


def tokenizer_beside(out, tok):
    """Where OUT.bin's tokenizer goes (where run.c looks first), after checking that writing there loses
    nothing: a file already there must be this one, or the same vocabulary in our format."""
    dest = T.beside(out, tok.n_words)[0]
    if dest.exists() and dest.resolve() == tok.path.resolve():
        return None  # the model's tokenizer already sits there
    if dest.exists():
        try:
            old = V.read_bin(dest)
        except (OSError, ValueError):
            old = None
        if old is None or not old.checkable or V.identity(old) != tok.identity:
            # a vocabulary without identity (llama2.c's files): the same if it is the very file we would write
            with tempfile.TemporaryDirectory() as d:
                V.write_bin(tok.vocab, Path(d) / "tok.bin")
                if (Path(d) / "tok.bin").read_bytes() != dest.read_bytes():
                    raise ValueError(f"{dest} exists and holds another tokenizer: remove it, or export to another folder")
    return dest


def parse_args(argv):
    """The command line, checked: one line on stderr and exit status 1 for anything it cannot do."""
    p = argparse.ArgumentParser(prog="export.py", allow_abbrev=False,
                                description="Export models to .bin (v0..v3), a Hugging Face directory or a GGUF.")
    p.add_argument("out", nargs="?", help="output .bin file (its run.c tokenizer is written beside it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="train.py checkpoint (.pt)")
    src.add_argument("--bin", help="a .bin file of any version")
    src.add_argument("--hf", help="a Hugging Face Llama directory (with its tokenizer)")
    src.add_argument("--gguf", help="a llama.cpp GGUF file (llama architecture, f32/f16/q8_0, with its tokenizer)")
    p.add_argument("--to_hf", help="also (or only) write a Hugging Face directory here")
    p.add_argument("--to_gguf", help="also (or only) write a GGUF file for llama.cpp here (--dtype fp32, f16 or q8_0)")
    p.add_argument("--tokenizer", help="the model's tokenizer (.model, tokenizer.json, HF directory or run.c file), "
                   "when the source does not say")
    p.add_argument("--version", type=int, default=3, choices=(0, 1, 2, 3))
    p.add_argument("--dtype", choices=(*WEIGHT_TYPES, "f16"), default=None,
                   help="v3: fp32 (default), bf16, q8_0, q4 (weight type 4: a q6 classifier) or q4_q8 (type 3, "
                   "the older q4 with a q8_0 classifier); v0/v1 are fp32, v2 is q8_0; GGUF: fp32, f16 or q8_0")
    p.add_argument("--group_size", type=int, default=64)
    p.add_argument("--gptq", type=int, default=0, metavar="N",
                   help="q4: round by GPTQ instead of to nearest, calibrated on N windows (e.g. 128) of the "
                   "--checkpoint's training shards")
    p.add_argument("--allow_nonfinite", action="store_true",
                   help="export weights that hold NaN or inf (refused by default: a diverged run)")
    a = one_line_errors(p).parse_args(argv)
    if not (a.checkpoint or a.bin or a.hf or a.gguf):
        p.error("give a source: --checkpoint=CKPT.pt, --bin=IN.bin, --hf=DIR or --gguf=IN.gguf")
    if not (a.out or a.to_hf or a.to_gguf):
        p.error("give an output: OUT.bin, --to_hf=DIR and/or --to_gguf=OUT.gguf")
    if a.to_gguf and a.dtype not in (None, "fp32", "f16", "q8_0"):
        p.error(f"--to_gguf takes --dtype=fp32, f16 or q8_0, not {a.dtype}")
    if a.gptq < 0 or a.gptq and not (a.checkpoint and a.out and a.dtype in Q4_CLASSIFIER and a.version == 3):
        p.error(f"--gptq={a.gptq}: expected a number of windows >= 1, with --checkpoint (its training shards "
                "calibrate it) and a v3 OUT.bin of --dtype=q4 (or q4_q8)")
    if a.out and a.dtype == "f16":
        p.error(f"--dtype=f16 is for --to_gguf: a .bin takes {', '.join(WEIGHT_TYPES)}")
    return a


def load_source(a, note):
    """(model, its vocabulary identity or None, the checkpoint's training config or {}, the checkpoint's
    tokenizer file or None) of the source."""
    if a.checkpoint:
        model, ckpt = load_checkpoint(a.checkpoint)
        model_id = bytes.fromhex(ckpt["vocab_identity"]) if isinstance(ckpt.get("vocab_identity"), str) else None
        tok_path, old = (None, "") if a.tokenizer else checkpoint_tokenizer(a.checkpoint, ckpt)
        if old:
            note(old.removeprefix("note: "))
        return model, model_id, ckpt.get("config") or {}, tok_path
    if a.bin:
        return load_bin(a.bin), read_header(a.bin)["vocab_id"], {}, None
    if a.gguf:
        return gguf_file.gguf_import(a.gguf), None, {}, None
    return hf_import(a.hf), None, {}, None


def write_out_bin(a, model, tok, vocab_id, train_config):
    """OUT.bin (rounded by GPTQ on a copy when asked: --to_hf/--to_gguf still get the source's own weights)
    and the model's run.c tokenizer beside it."""
    if os.path.dirname(a.out):
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
    dest = tokenizer_beside(a.out, tok) if tok else None
    rounded = model
    if a.gptq:
        rounded = copy.deepcopy(model)
        gs = pick_group_size(a.group_size, model.args.dim, ffn_hidden_dim(model.args))
        seqs = calibration_tokens(train_config, model.args.vocab_size, a.gptq, model.args.max_seq_len)
        gptq_model(rounded, seqs, gs)
    model_export(rounded, a.out, a.version, a.dtype, a.group_size, vocab_id)
    print(f"wrote {a.out} (v{a.version}, {os.path.getsize(a.out):,} bytes)")
    if dest:  # read back as run.c's tokenizer file before it takes its name, like OUT.bin
        tmp = temp_path(dest)
        try:
            V.write_bin(tok.vocab, tmp)
            read_back(tmp, dest, V.read_bin)
            publish(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"wrote {dest} (its tokenizer, from {tok.path})")


def main(argv=None):
    a = parse_args(argv)
    try:
        notes = []  # said after the outputs are written: an error stays the only line
        model, model_id, train_config, ckpt_tokenizer = load_source(a, notes.append)
        if not a.allow_nonfinite:
            check_finite(model, a.checkpoint or a.bin or a.hf or a.gguf)
        tok = model_tokenizer(a, model, model_id, ckpt_tokenizer, notes.append)
        vocab_id = (tok.identity if tok else None) or model_id
        if a.to_gguf:  # everything llama.cpp could not hold is refused before anything is written
            if tok is None:
                raise ValueError(f"--to_gguf needs the model's tokenizer, which llama.cpp reads from the file "
                                 f"({notes.pop().removeprefix('no tokenizer written: ')})")
            gguf_plan = gguf_file.plan(model, a.dtype, tok.vocab)
        if a.out:
            write_out_bin(a, model, tok, vocab_id, train_config)
        if a.to_hf:
            hf_export(model, a.to_hf, tok.vocab if tok else None)
            print(f"wrote {a.to_hf}/config.json, model.safetensors" + (" and the tokenizer" if tok else ""))
        if a.to_gguf:
            if os.path.dirname(a.to_gguf):
                os.makedirs(os.path.dirname(a.to_gguf), exist_ok=True)
            gguf_file.write(a.to_gguf, gguf_plan)
            notes += gguf_plan[2]
            print(f"wrote {a.to_gguf} (GGUF {a.dtype or 'fp32'} with its tokenizer, {os.path.getsize(a.to_gguf):,} bytes)")
        for msg in notes:
            print(f"export.py: note: {msg}", file=sys.stderr)
    except (ValueError, OSError) as e:
        sys.exit(f"export.py: error: {e}")


if __name__ == "__main__":
    main()

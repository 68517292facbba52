"""Sample stories from a checkpoint written by train.py, or from a run.c .bin model.

    python sample.py --checkpoint=out/ckpt.pt
    python sample.py --checkpoint=out/ckpt.pt --start="Once upon a time" --num_samples=3 --temperature=0.8
    python sample.py --checkpoint=out/ckpt.pt --start=FILE:prompt.txt --temperature=0   # greedy
    python sample.py --checkpoint=out/model.bin                                       # a run.c model
    python sample.py --checkpoint=out/ckpt.pt --words="dog, run, happy" --features=Dialogue   # instruct

--words, --features and --summary build an instruct prompt in place of --start (instruct.prompt_text:
"Words: dog, run, happy\nFeatures: Dialogue\nStory:", each text as given), for a model trained on
TinyStoriesInstruct records; the story follows it and ends at EOS, as the records taught.

Every sample begins with BOS (where the vocabulary adds one) and the prompt, and ends at the end of
the story (EOS, a BOS that starts the next one, or the vocabulary's end-of-story token such as
<|end_story|>: end_token), after max_new_tokens tokens, or when the context is full. The tokenizer is
the model's own: for a checkpoint the copy of its run's vocabulary that train.py keeps beside it (an
older checkpoint: data/'s, by its vocab_source and vocab_size), for a .bin the run.c tokenizer beside
it, found as run.c finds it; --tokenizer overrides, and one whose
vocabulary identity differs from the model's is refused. The model must match its file exactly: a
missing, extra or misshapen weight is an error.
"""
import sys
import time
from contextlib import nullcontext

import torch

from binfile import load_bin, read_header
from checkpoint import checkpoint_tokenizer, load_checkpoint
from configurator import configure_or_exit
from fileio import regular_file
from instruct import prompt_text
from machine import use_free_cores
import tokenizer as T

defaults = dict(
    checkpoint="out/ckpt.pt",  # a train.py checkpoint or a run.c .bin model
    start="",  # prompt text, or FILE:path to read it from a file
    words="",  # instruct prompt: the words the story should use, e.g. "dog, run, happy" (in place of --start)
    features="",  # instruct prompt: its features, e.g. "Dialogue, BadEnding"
    summary="",  # instruct prompt: what the story is about
    num_samples=1,  # stories to write
    max_new_tokens=256,  # tokens per story at most
    temperature=1.0,  # sampling temperature (0: greedy)
    top_k=None,  # keep the k most likely tokens (None: all)
    top_p=0.9,  # keep the smallest set of tokens whose probability reaches top_p (1.0: all)
    seed=1337,  # the sampler's random seed
    device="cuda" if torch.cuda.is_available() else "cpu",
    dtype="float32",  # float32, bfloat16, float16 (autocast; the weights stay fp32)
    compile=False,  # torch.compile the model
    tokenizer=None,  # a tokenizer (.model, tokenizer.json, HF directory, run.c file) instead of the model's own
    end_token="auto",  # a story also ends at this token: auto (the vocabulary's, e.g. <|end_story|>), "" (none), or its text
)


def die(msg):
    print(f"sample.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def load_model(path, device, own_tokenizer=True):
    """(model, vocabulary identity or None, its tokenizer's path) of a train.py checkpoint
    or a run.c .bin model (told apart by content: a checkpoint is a zip or pickle file). A checkpoint's
    tokenizer is looked up only when own_tokenizer (else the path is None: --tokenizer names one)."""
    try:
        regular_file(path, "checkpoint")  # a FIFO would block the read
        with open(path, "rb") as f:
            head = f.read(2)
    except ValueError as e:
        die(str(e))
    except OSError as e:
        die(f"--checkpoint={path}: {e.strerror}")
    if head[:2] == b"PK" or head[:1] == b"\x80":
        try:
            model, ckpt = load_checkpoint(path, device)
        except ValueError as e:
            die(str(e))
        ident = ckpt.get("vocab_identity")
        tok_path = None
        if own_tokenizer:  # not when --tokenizer names one
            try:
                tok_path, old = checkpoint_tokenizer(path, ckpt)
            except ValueError as e:
                die(f"{e}; pass --tokenizer=PATH")
            if old:
                print(f"sample.py: {old}", file=sys.stderr)
        return model, bytes.fromhex(ident) if isinstance(ident, str) else None, tok_path and str(tok_path)
    try:
        model, h = load_bin(path), read_header(path)
    except (ValueError, OSError) as e:
        die(f"{path} is neither a train.py checkpoint (a zip or pickle file) nor a run.c .bin model ({e})")
    found = next((str(p) for p in T.beside(path, model.args.vocab_size) if p.is_file()), None)
    if found is None and own_tokenizer:  # not when --tokenizer names one
        die(f"no tokenizer for {path}: looked for {' and '.join(map(str, T.beside(path, model.args.vocab_size)))} "
            "(export.py writes it beside the model); pass --tokenizer=PATH")
    return model.to(device), h["vocab_id"], found


def main():
    cfg = configure_or_exit(defaults, prog="sample.py", none_types={"top_k": int, "tokenizer": str}, script=__file__)
    if cfg["temperature"] < 0 or not 0 < cfg["top_p"] <= 1 or (cfg["top_k"] is not None and cfg["top_k"] < 1):
        die(f"need --temperature >= 0, 0 < --top_p <= 1 and --top_k >= 1 (got {cfg['temperature']}, "
            f"{cfg['top_p']}, {cfg['top_k']})")
    if cfg["num_samples"] < 1 or cfg["max_new_tokens"] < 1:
        die("--num_samples and --max_new_tokens must be >= 1")
    if cfg["dtype"] not in ("float32", "bfloat16", "float16"):
        die(f"--dtype={cfg['dtype']!r}: expected float32, bfloat16 or float16")
    device = cfg["device"]
    if device == "cpu":
        use_free_cores()  # only the cores other processes leave free; OMP_NUM_THREADS wins
    model, model_id, own = load_model(cfg["checkpoint"], device, own_tokenizer=cfg["tokenizer"] is None)
    tok_path = cfg["tokenizer"] or own
    try:
        tok = T.Tokenizer(tok_path)
    except (OSError, ValueError) as e:
        die(f"{e} (the model's vocabulary; pass --tokenizer=PATH to use another)")
    if tok.n_words != model.args.vocab_size:
        die(f"tokenizer {tok_path} has {tok.n_words} tokens, the model {model.args.vocab_size}")
    try:
        T.check_identity(model_id, cfg["checkpoint"], tok, lambda msg: print(f"sample.py: {msg}", file=sys.stderr))
        stops = tok.stops(cfg["end_token"])
    except ValueError as e:
        die(f"--end_token: {e}" if "end token" in str(e) else str(e))

    start = cfg["start"]
    fields = {k: cfg[k] for k in ("words", "features", "summary") if cfg[k]}
    if fields and start:
        die("--start and --words/--features/--summary: give a prompt or the fields of an instruct prompt, not both")
    if fields:
        try:
            start = prompt_text(**fields)
        except ValueError as e:
            die(f"--words/--features/--summary: {e}")
    elif start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            die(f"--start={cfg['start']}: {e.strerror}")
    try:
        ids = tok.prompt(start)
    except ValueError as e:
        die(f"--start: {e}")
    if len(ids) >= model.args.max_seq_len:
        die(f"--start is {len(ids)} tokens, the context holds {model.args.max_seq_len}")

    torch.manual_seed(cfg["seed"])
    if cfg["compile"]:
        model.compile()
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg["dtype"]]
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    amp = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    x = torch.tensor([ids], dtype=torch.long, device=device)
    n_tokens, t0 = 0, time.perf_counter()
    for i in range(cfg["num_samples"]):
        try:
            with amp:
                y = model.generate(x, cfg["max_new_tokens"], temperature=cfg["temperature"], top_k=cfg["top_k"],
                                   top_p=cfg["top_p"], stop_tokens=stops)
        except ValueError as e:  # non-finite logits: a diverged checkpoint
            die(f"{cfg['checkpoint']}: {e}")
        new = y[0, len(ids):].tolist()
        story = new[:next((k for k, t in enumerate(new) if t in stops), len(new))]
        n_tokens += len(new)
        print(tok.decode(ids + story))
        if i + 1 < cfg["num_samples"]:
            print("---------------")
    print(f"achieved {n_tokens / (time.perf_counter() - t0):.1f} tok/s", file=sys.stderr)


if __name__ == "__main__":
    main()

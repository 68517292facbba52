"""
bench/bench_tokenize.py: encoding speed on one core, in stories/s: sentencepiece against our byte-level
BPE (vocab.encode), with and without its word cache, and against the encoder of an older commit.

    python bench/bench_tokenize.py [--repeats 7] [--baseline c9603e0]

The text is every story of the shared TinyStories files (../shared/data/tinystories, about 7,000),
encoded one story at a time in this one process, one thread (what a pretokenize worker does), without
BOS/EOS. Encoders:
    sentencepiece   tok512.model and the Llama 2 tokenizer.model (../shared/data/models), sp.encode
    ours            two byte-level BPE tokenizer.json files in GPT-2's shape (<|endoftext|>, ByteLevel
                    pre-tokenizer), trained here with the `tokenizers` library: 4,096 tokens on the
                    shared stories, and a GPT-2-sized one, 50,257 tokens (50,000 merges), on the shared
                    stories four times over plus this Python's standard library sources (the stories
                    alone run out of pairs at ~13,000 tokens); each encoded with the word cache, with it
                    off (vocab.CACHED_CHARS = 0), and by vocab.py of --baseline (git show REV:vocab.py)
    tokenizers      the `tokenizers` library on the same files, Tokenizer.encode one story at a time,
                    RAYON_NUM_THREADS=1 (for reference)
Every run starts from a freshly read tokenizer and encodes the stories twice: the 1st pass starts with
an empty word cache (and builds the encoder's tables), as a pretokenize worker's first chunks do; the 2nd
pass finds every word cached, the steady state of a worker deep into the 2M stories, where a few words
per story are new (an upper bound for it); encoders that keep nothing between stories (ours with no
cache, the old one) run one pass, which stands for both. Runs are interleaved (every encoder once per round, the order
rotated each round); the table gives medians over rounds, and each encoder's ids are checked to equal
the `tokenizers` library's (ours) on every story. Scratch files: bench/out/tokenize/.

Last logged run: dev/LOG.md, "## 2026-12-07: encoding speed with any tokenizer (bench_tokenize)".
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before tokenizers loads: one core for every encoder
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import tinystories as ts  # noqa: E402  (flat scripts: the repo root is not a package)
import tokenizer as T  # noqa: E402
import vocab  # noqa: E402

SHARED = Path(os.environ.get("STORYLLAMA_SHARED", REPO.parent / "shared" / "data"))
OUT = REPO / "bench" / "out" / "tokenize"


def train_byte_level(path, size, texts):
    """A GPT-2-shaped byte-level BPE tokenizer.json of size tokens, trained on texts (made once, kept)."""
    if path.is_file():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    assert tok.get_vocab_size() == size, f"only {tok.get_vocab_size()} tokens: too little text for {size}"
    tok.save(str(path))
    return path


def old_vocab(rev):
    """vocab.py as it was at git revision rev, loaded as its own module."""
    src = subprocess.run(["git", "show", f"{rev}:vocab.py"], cwd=REPO, capture_output=True, check=True).stdout
    path = OUT / f"vocab_{rev}.py"
    path.write_bytes(src)
    spec = importlib.util.spec_from_file_location(f"vocab_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encoders(files, baseline):
    """{name: (make, encode)}: make() reads a fresh tokenizer outside the timing, encode(it, text) -> ids."""
    from sentencepiece import SentencePieceProcessor
    from tokenizers import Tokenizer
    old = old_vocab(baseline)
    out = {}
    for name in ("tok512.model", "tokenizer.model"):
        path = SHARED / "models" / name
        out[f"sentencepiece {name}"] = (lambda p=path: SentencePieceProcessor(model_file=str(p)),
                                        lambda sp, s: sp.encode(s))
    for label, path in files.items():
        out[f"ours {label}, cache"] = (lambda p=path: T.Tokenizer(p).vocab, vocab.encode)
        out[f"ours {label}, no cache"] = (lambda p=path: T.Tokenizer(p).vocab, uncached)
        out[f"ours {label}, {baseline}"] = (lambda p=path: T.Tokenizer(p).vocab, old.encode)
        out[f"tokenizers {label}"] = (lambda p=path: Tokenizer.from_file(str(p)),
                                      lambda t, s: t.encode(s, add_special_tokens=False).ids)
    return out


def uncached(v, text):
    """vocab.encode with the word cache off: no word is short enough to be remembered."""
    keep = vocab.CACHED_CHARS
    vocab.CACHED_CHARS = 0
    try:
        return vocab.encode(v, text)
    finally:
        vocab.CACHED_CHARS = keep


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds (every encoder once per round)")
    parser.add_argument("--baseline", default="c9603e0", help="git revision whose vocab.py is timed too")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    stories = [s for f in sorted((SHARED / "tinystories").iterdir()) for s in ts.iter_stories(f)]
    code = [f.read_text(errors="replace") for f in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
            if "site-packages" not in f.parts]
    files = {"4,096": train_byte_level(OUT / "bytelevel4096.json", 4096, stories),
             "50,257": train_byte_level(OUT / "bytelevel50257.json", 50257, stories * 4 + code)}
    todo = encoders(files, args.baseline)
    n_bytes = sum(len(s.encode()) for s in stories)
    print(f"machine: {os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}, "
          f"load average {os.getloadavg()[0]:.1f} at start; {len(stories):,} stories, {n_bytes / 1e6:.1f} MB")
    times, ids = {name: [] for name in todo}, {}
    for r in range(args.repeats):
        names = list(todo)
        names = names[r % len(names):] + names[:r % len(names)]
        for name in names:
            make, encode = todo[name]
            it = make()
            t0 = time.perf_counter()
            got = [encode(it, s) for s in stories]
            t1 = time.perf_counter()
            if name.endswith((", no cache", ", " + args.baseline)):
                times[name].append((t1 - t0, t1 - t0))  # nothing carries over: a 2nd pass is the 1st again
            else:
                again = [encode(it, s) for s in stories]
                times[name].append((t1 - t0, time.perf_counter() - t1))
                assert again == got
            ids.setdefault(name, got)
        print(f"round {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    for label in files:  # ours must give the reference library's ids, or its speed means nothing
        for name in todo:
            if name.startswith(f"ours {label},"):
                assert ids[name] == ids[f"tokenizers {label}"], f"{name}: other ids than the tokenizers library"
    print(f"load average {os.getloadavg()[0]:.1f} at the end; median of {args.repeats} interleaved rounds")
    print("| encoder | tokens | bytes/token | stories/s, 1st pass | MB/s | 1st pass min-max s | stories/s, 2nd pass |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in times.items():
        first, second = statistics.median(t for t, _ in runs), statistics.median(t for _, t in runs)
        n_tok = sum(map(len, ids[name]))
        print(f"| {name} | {n_tok:,} | {n_bytes / n_tok:.2f} | {len(stories) / first:,.0f} | {n_bytes / first / 1e6:.2f} | "
              f"{min(t for t, _ in runs):.2f}-{max(t for t, _ in runs):.2f} | {len(stories) / second:,.0f} |")
    print(json.dumps({name: [[round(t, 3) for t in r] for r in runs] for name, runs in times.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()

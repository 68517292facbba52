"""
dataloader.py: where a vocabulary's files live, the token shard format, and the training batches.

train.py and sample.py import this file alone; tinystories.py (which makes the shards) uses its
shard writer helpers, so the format is defined here once for both sides.

The vocabulary rule (the only place it is written; run.c's find_tokenizer restates the .bin half):
    vocab_source="custom", vocab_size=N   data/tok{N}.model (run.c: tok{N}.bin), shards in data/tok{N}/
    vocab_source="llama2" (32000 tokens)  data/tokenizer.model (llama2.c's name; run.c: tokenizer.bin),
                                          shards in data/llama2/
    vocab_source=NAME (any other name)    the first of data/NAME.model, NAME.json (a Hugging Face
                                          tokenizer.json), NAME.gguf, NAME.bin (run.c's file), shards in data/NAME/
data/ is $STORYLLAMA_DATA or the repo's data/ unless a data_dir is given. A tokenizer file given by
path (pretokenize --tokenizer) names its shards' folder by vocab_name_of: tok512.model -> tok512/.
Shards of TinyStoriesInstruct records (dataset="instruct") go beside the stories': data/tok{N}-instruct/.

Shard file (.bin, little-endian): a 256-byte header, then n_tokens uint16 token ids:
    off 0  8 bytes magic b"STORYTOK" | 8 u32 version=1 | 12 u32 vocab_size | 16 u32 bos_id
    20 u32 eos_id | 24 u64 n_tokens | 32 u64 n_stories | 40 u64 n_bytes | 48 32 bytes tokenizer
    sha256 | 80 32 bytes vocabulary identity (vocab.identity; zero: unknown, as in older shards) |
    112..255 zero
Every story is BOS, its tokens, EOS. n_bytes counts the UTF-8 bytes of the story texts (for
bits-per-byte); n_tokens counts BOS and EOS too. The header lets the reader refuse shards made
with another vocabulary instead of training on garbage: by the identity, which is the same for one
vocabulary in any file format, else by the tokenizer file's sha256.
Version 2, a shard of instruct records with a loss mask: every record is BOS, its prompt's tokens,
its story's tokens, EOS (n_stories counts records, n_bytes their stories' bytes); the header is
version 1's with version=2, 112 u64 n_targets (tokens whose mask bit is 1) | 120 u32 longest_prompt
(the most tokens of a record's BOS + prompt) | 124..255 zero; after the tokens, the mask: one bit a
token (np.packbits: the first token in the high bit of the first byte), 1 on the story's tokens and
EOS, 0 on BOS and the prompt. Batches makes the targets of mask-0 tokens -1, which the loss ignores.
Version 1 files are unchanged, and a reader of version 1 alone refuses version 2 by its version.

    shards = split_shards("train", 512)            # checked once
    batches = Batches(shards, batch_size, max_seq_len, seed)
    x, y = batches[g]                              # global batch g, a pure function of (seed, g, data)
    for x, y in iter_batches("train", batch_size, max_seq_len, 512): ...   # one rank's stream
"""
import hashlib
import itertools
import json
import os
import re
import struct
from pathlib import Path

import numpy as np

from fileio import regular_file

REPO = Path(__file__).resolve().parent
LLAMA2_VOCAB = 32000  # tokens in Meta's Llama 2 vocabulary
TOKENIZER_SUFFIXES = (".model", ".json", ".gguf", ".bin")  # vocab_source=NAME: data/NAME + the first that exists
NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a vocabulary name is one plain folder name
HEADER_SIZE = 256
HEADER_FMT = "<8sIIIIQQQ32s32s"  # magic, version, vocab, bos, eos, n_tokens, n_stories, n_bytes, sha256, identity
MAGIC = b"STORYTOK"
VERSION = 1  # a shard of stories
MASKED = 2  # the version of a shard with a loss mask (instruct records)
MASK_FMT = "<QI"  # at offset 112 of a version-2 header: n_targets, longest_prompt
DATASETS = ("stories", "instruct")  # what a shard holds: plain stories, or TinyStoriesInstruct records


class DataError(ValueError):
    """Bad input or state: the message names the file or flag and says what was expected."""


# -----------------------------------------------------------------------------
# the vocabulary rule

def default_data_dir(data_dir=None):
    return Path(data_dir or os.environ.get("STORYLLAMA_DATA") or REPO / "data")


def check_vocab(vocab_size, vocab_source="custom"):
    """DataError unless (vocab_source, vocab_size) names a vocabulary."""
    if not isinstance(vocab_source, str) or not NAME_CHARS.fullmatch(vocab_source) or vocab_source.endswith(".tmp"):
        raise DataError(f"vocab_source={vocab_source!r}: expected 'custom', 'llama2' or a vocabulary name "
                        "(letters, digits, '.', '_', '-': data/NAME.model or .json, .gguf, .bin)")
    if vocab_source == "llama2" and vocab_size != LLAMA2_VOCAB:
        raise DataError(f"vocab_size={vocab_size}: the Llama 2 vocabulary (vocab_source=llama2) has "
                        f"{LLAMA2_VOCAB} tokens")
    if vocab_size <= 0:
        raise DataError(f"vocab_size={vocab_size}: a vocabulary needs a positive size")


def _vocab_name(vocab_size, vocab_source):
    check_vocab(vocab_size, vocab_source)
    return f"tok{vocab_size}" if vocab_source == "custom" else vocab_source


def vocab_name_of(tokenizer):
    """The vocabulary name of a tokenizer file given by path, which names its shards' folder: the file's
    stem (tok512.model and tok512.bin: tok512), or the folder's name for a Hugging Face directory or the
    tokenizer.json inside one."""
    p = Path(tokenizer).resolve()
    name = p.name if p.is_dir() else p.parent.name if p.name == "tokenizer.json" else p.stem
    if not NAME_CHARS.fullmatch(name):  # e.g. spaces or non-ASCII letters in a file name
        name = "tok-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return name


def shard_dir(vocab_size, vocab_source="custom", data_dir=None, dataset="stories"):
    """The folder of a vocabulary's token shards: data/tok{N}/, data/llama2/ or data/NAME/, with
    "-instruct" after the name for the shards of instruct records."""
    if dataset not in DATASETS:
        raise DataError(f"dataset={dataset!r}: expected {' or '.join(map(repr, DATASETS))}")
    suffix = "-instruct" if dataset == "instruct" else ""
    return default_data_dir(data_dir) / (_vocab_name(vocab_size, vocab_source) + suffix)


def tokenizer_path(vocab_size, vocab_source="custom", data_dir=None):
    """The tokenizer file of a vocabulary: data/tok{N}.model, data/tokenizer.model (Llama 2), or for a
    NAME the first of data/NAME.model, .json, .gguf, .bin that exists (data/NAME.json when none does)."""
    data = default_data_dir(data_dir)
    if vocab_source == "llama2":
        check_vocab(vocab_size, vocab_source)
        return data / "tokenizer.model"
    name = _vocab_name(vocab_size, vocab_source)
    if vocab_source == "custom":
        return data / f"{name}.model"
    found = [data / (name + s) for s in TOKENIZER_SUFFIXES if (data / (name + s)).is_file()]
    return found[0] if found else data / f"{name}.json"


def smallest_vocab(n_special=0):
    """The fewest tokens train_vocab can make: unk/BOS/EOS, 256 byte-fallback pieces, the special
    tokens and one merge."""
    return 3 + 256 + n_special + 1


def prepare_commands(vocab_size, vocab_source="custom", data_dir=None, dataset="stories"):
    """The commands that make a vocabulary's shards, with the user's data_dir kept."""
    check_vocab(vocab_size, vocab_source)
    if vocab_source == "custom" and vocab_size < smallest_vocab():
        return (f"nothing can: train_vocab makes vocabularies of at least {smallest_vocab()} tokens "
                "(3 control + 256 byte-fallback + 1), choose a larger vocab_size")
    where = f" --data_dir={data_dir}" if data_dir else ""
    vocab = f"--vocab_size={vocab_size}" if vocab_source == "custom" else f"--vocab_source={vocab_source}"
    which = " --dataset=instruct" if dataset == "instruct" else ""
    if vocab_source not in ("custom", "llama2"):  # a named vocabulary: the user's stories and its tokenizer
        tok = tokenizer_path(vocab_size, vocab_source, data_dir)
        tok = tok if tok.is_file() else "TOKENIZER_FILE"
        return (f"python tinystories.py pretokenize{which} --tokenizer={tok} --input YOUR_STORIES{where} "
                f"(the shards go to a folder named after the file: {vocab_source}/ for {vocab_source}.model, .json or "
                f".bin; for GPT-2's or GPT-Neo's tokenizer, python tinystories.py download_tokenizer gpt2{where} "
                "first), or pass --data_dir=FOLDER where they already are")
    steps = [f"python tinystories.py download{which}{where}"]
    if vocab_source == "llama2":
        model = tokenizer_path(vocab_size, vocab_source, data_dir)
        steps.append(f"put Meta's Llama 2 tokenizer.model at {model}")
    else:
        steps.append(f"python tinystories.py train_vocab {vocab}{which}{where}")
    steps.append(f"python tinystories.py pretokenize {vocab}{which}{where}")
    return "; ".join(steps)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -----------------------------------------------------------------------------
# the shard format

def pack_header(vocab_size, bos_id, eos_id, n_tokens, n_stories, n_bytes, tokenizer_sha256, identity=None,
                mask=None):
    """The 256-byte header of a shard (tokenizer_sha256 as a hex string, identity as bytes or None);
    mask=(n_targets, longest_prompt) for a version-2 shard, whose loss mask follows its tokens."""
    raw = struct.pack(HEADER_FMT, MAGIC, MASKED if mask else VERSION, vocab_size, bos_id, eos_id, n_tokens,
                      n_stories, n_bytes, bytes.fromhex(tokenizer_sha256), identity or bytes(32))
    return (raw + (struct.pack(MASK_FMT, *mask) if mask else b"")).ljust(HEADER_SIZE, b"\0")


def mask_bytes(n_tokens):
    """The size of a version-2 shard's loss mask: a bit a token."""
    return (n_tokens + 7) // 8


def read_header(path):
    """The header of a shard as a dict; DataError when it is not a complete storyllama shard or a
    field is one no pretokenize run writes (everything the batches and bits per byte rely on)."""
    path = Path(path)
    try:
        size = regular_file(path)  # a directory named like a shard; a FIFO would block the read
    except ValueError as e:
        raise DataError(f"{e}, expected a token shard; re-run pretokenize") from None
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) < HEADER_SIZE or raw[:8] != MAGIC:
        raise DataError(f"{path}: not a storyllama token shard (bad magic); re-run pretokenize")
    magic, version, vocab, bos, eos, n_tokens, n_stories, n_bytes, sha, ident = struct.unpack_from(HEADER_FMT, raw)
    if version not in (VERSION, MASKED):
        raise DataError(f"{path}: shard format version {version}, this code reads versions {VERSION} and {MASKED}")
    masked = version == MASKED
    n_targets, longest = struct.unpack_from(MASK_FMT, raw, 112) if masked else (n_tokens, 0)
    want = HEADER_SIZE + 2 * n_tokens + (mask_bytes(n_tokens) if masked else 0)
    if size != want:
        raise DataError(f"{path}: {size} bytes, the header says {want} (truncated?); re-run pretokenize")
    # every story is BOS, its tokens, EOS and holds some text: so 2 * n_stories <= n_tokens, n_bytes > 0;
    # every record's BOS is no target and its EOS is one, and its story holds a token
    problem = (f"vocab_size={vocab} (ids are uint16)" if not 0 < vocab <= 1 << 16 else
               f"bos_id={bos}, eos_id={eos} for a {vocab}-token vocabulary" if max(bos, eos) >= vocab else
               f"n_stories={n_stories} for {n_tokens} tokens" if 2 * n_stories > n_tokens or (n_tokens and not n_stories)
               else f"n_bytes=0 for {n_tokens} tokens" if n_tokens and not n_bytes else
               f"n_targets={n_targets}, longest_prompt={longest} for {n_stories} records of {n_tokens} tokens"
               if masked and not (2 * n_stories <= n_targets <= n_tokens - n_stories and 0 < longest <= n_tokens)
               else "")
    if problem:
        raise DataError(f"{path}: damaged or forged header: {problem}; re-run pretokenize")
    return {"vocab_size": vocab, "bos_id": bos, "eos_id": eos, "n_tokens": n_tokens,
            "n_stories": n_stories, "n_bytes": n_bytes, "tokenizer_sha256": sha.hex(),
            "identity": ident if any(ident) else None, "masked": masked, "n_targets": n_targets,
            "longest_prompt": longest}


def load_shard(path):
    """The tokens of a shard as a read-only uint16 memmap."""
    n = read_header(path)["n_tokens"]
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_SIZE, shape=(n,))


def load_mask(path):
    """The loss mask of a version-2 shard as a read-only memmap of its packed bits (uint8), or None
    for a version-1 shard (every token a target)."""
    h = read_header(path)
    if not h["masked"]:
        return None
    n = h["n_tokens"]
    return np.memmap(path, dtype=np.uint8, mode="r", offset=HEADER_SIZE + 2 * n, shape=(mask_bytes(n),))


def mask_bits(packed, positions):
    """The mask bits (0 or 1) of the tokens at positions (an int array), from packed bits."""
    return (packed[positions >> 3] >> (7 - (positions & 7))) & 1


def split_shards(split, vocab_size, vocab_source="custom", data_dir=None, tokenizer=None, dataset="stories"):
    """[(path, header)] of a split, after checking every shard matches the vocabulary asked for
    and the tokenizer file that goes with it: `tokenizer` (a run's own copy, or a model's), else the
    data folder's (when that file is there). Shards and tokenizer are compared by vocabulary identity
    when both carry one (so tok512.model and its run.c tok512.bin both fit), else by the file's sha256.
    dataset="instruct": the shards of instruct records (shard_dir)."""
    if split not in ("train", "val"):
        raise DataError(f"split={split!r}: expected 'train' or 'val'")
    folder = shard_dir(vocab_size, vocab_source, data_dir, dataset)
    paths = sorted(folder.glob(f"{split}_*.bin"))
    if not paths:
        raise DataError(f"no {split} shards in {folder} for vocab_source={vocab_source} vocab_size={vocab_size}; "
                        f"{_no_shards_advice(split, folder, vocab_size, vocab_source, data_dir, dataset)}")
    model = Path(tokenizer) if tokenizer else tokenizer_path(vocab_size, vocab_source, data_dir)
    want = _fingerprint(model) if model.exists() else None
    out = []
    for p in paths:
        h = read_header(p)
        if h["vocab_size"] != vocab_size:
            raise DataError(f"{p}: made with a {h['vocab_size']}-token vocabulary, but vocab_size="
                            f"{vocab_size}; re-run pretokenize or fix vocab_size")
        if want and not _same_vocabulary(h, *want):
            mine = f"vocabulary {want[1].hex()[:12]}..." if want[1] and h["identity"] else f"sha256 {want[0][:12]}..."
            raise DataError(f"{p}: made with another tokenizer ({_shard_vocab(h)}) than {model} ({mine}); "
                            f"{_repretokenize(folder, model, data_dir, dataset)}")
        if out and not _same_vocabulary(h, out[0][1]["tokenizer_sha256"], out[0][1]["identity"]):
            raise DataError(f"{p}: made with another tokenizer than {out[0][0]}; re-run pretokenize")
        check_tokens(p, h)
        out.append((p, h))
    return out


def _fingerprint(model):
    """(sha256 hex or None, vocabulary identity or None) of a tokenizer file or Hugging Face folder."""
    from tokenizer import read_vocab  # here: the data commands' worker processes never need it
    from vocab import identity
    try:
        ident = identity(read_vocab(model)[0])
    except (OSError, ValueError) as e:
        raise DataError(f"{model}: not a readable tokenizer ({e})") from None
    return (file_sha256(model) if model.is_file() else None), ident


def _same_vocabulary(h, sha, ident):
    """Whether a shard header was made with this vocabulary: by identity when both sides carry one,
    else by the tokenizer file's sha256."""
    if ident and h["identity"]:
        return ident == h["identity"]
    return sha is None or h["tokenizer_sha256"] == sha


def _shard_vocab(h):
    return f"vocabulary {h['identity'].hex()[:12]}..." if h["identity"] else f"sha256 {h['tokenizer_sha256'][:12]}..."


def _no_shards_advice(split, folder, vocab_size, vocab_source, data_dir, dataset):
    """What to do about a split without shards: a val split that is missing beside train shards means the
    corpus was too small for the 1-in-VAL_BUCKETS hold-out, not that nothing was prepared."""
    if split == "val" and any(folder.glob("train_*.bin")):
        return ("the stories were too few for a validation split (1 in 100 is held out by hash, unless an input "
                "file has 'valid' in its name): pretokenize again with more stories, or add a *valid* file to --input")
    return f"prepare them with: {prepare_commands(vocab_size, vocab_source, data_dir, dataset)}"


def _repretokenize(folder, model, data_dir, dataset):
    """The pretokenize command that remakes the shards in folder with the tokenizer file model, naming
    the story files its manifest records (or YOUR_STORIES)."""
    try:
        with open(folder / "manifest.json") as f:
            inputs = [str(i[0]) for i in json.load(f)["signature"]["inputs"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        inputs = []
    shown = " ".join(inputs[:3]) + (f" ... ({len(inputs)} files)" if len(inputs) > 3 else "") or "YOUR_STORIES"
    return (f"give the tokenizer they were made with, or make shards with this one: python tinystories.py pretokenize"
            f"{' --dataset=instruct' * (dataset == 'instruct')} --tokenizer={model}"
            f"{f' --data_dir={data_dir}' if data_dir else ''} --input {shown}")


def check_tokens(path, header):
    """DataError unless every token id in the shard is below its vocab_size, and a loss mask has as
    many 1 bits as the header says and none past the last token: one pass over the memmap at load
    (about 10 GB/s from the page cache), so a damaged shard is refused before training starts instead
    of failing an embedding lookup thousands of iterations in."""
    tokens = load_shard(path)
    if len(tokens) and int(tokens.max()) >= header["vocab_size"]:
        at = int(np.argmax(tokens >= header["vocab_size"]))
        raise DataError(f"{path}: token id {int(tokens[at])} at position {at} is outside the "
                        f"{header['vocab_size']}-token vocabulary: a damaged shard; re-run pretokenize")
    packed = load_mask(path)
    if packed is not None:
        ones = sum(int(np.unpackbits(packed[i:i + (1 << 24)]).sum()) for i in range(0, len(packed), 1 << 24))
        spare = int(packed[-1]) & ((1 << (-len(tokens) % 8)) - 1) if len(packed) else 0  # bits past the end
        if ones != header["n_targets"] or spare:
            raise DataError(f"{path}: its loss mask has {ones} targets, the header says {header['n_targets']}"
                            f"{' (and bits past the last token)' if spare else ''}: a damaged shard; "
                            "re-run pretokenize")


def bytes_per_token(shards):
    """UTF-8 bytes of story text per token that is a target (BOS/EOS included; in a masked shard the
    story's tokens and EOS) in shards, for bits per byte: bpb = loss_in_nats / ln(2) / bytes_per_token."""
    return sum(h["n_bytes"] for _, h in shards) / sum(h["n_targets"] for _, h in shards)


def split_bytes_per_token(split, vocab_size, vocab_source="custom", data_dir=None, dataset="stories"):
    return bytes_per_token(split_shards(split, vocab_size, vocab_source, data_dir, dataset=dataset))


# -----------------------------------------------------------------------------
# batches

class Batches:
    """
    Global batch number g as a pure function of (seed, g) and the data; a map-style dataset, so
    torch's DataLoader can spread batches over worker processes.

    Windows are max_seq_len+1 tokens inside one shard. Default: a shard holds n // L windows
    side by side (L = max_seq_len+1), shifted by a random offset in [0, n % L] that changes every
    epoch; bos_aligned: one window starting at every BOS that has L tokens after it (such
    windows can run into the next story). An epoch is a seeded random permutation of all
    windows; batch g takes positions g * batch_size ... of the endless stream of epochs. Rank r
    of world_size takes the global batches k * world_size + r (k = 0, 1, ...), so within an
    epoch no window is given twice, to any rank or DataLoader worker.

    Shards with a loss mask (version 2, instruct records): the target of a token whose mask bit is 0
    (BOS, a prompt) is -1, which the loss ignores; the windows are the same. Every window must hold
    a target, so max_seq_len must exceed the longest prompt.
    """

    def __init__(self, shards, batch_size, max_seq_len, seed, bos_aligned=False):
        if batch_size < 1 or max_seq_len < 1 or seed < 0:
            raise DataError(f"batch_size={batch_size}, max_seq_len={max_seq_len}, seed={seed}: "
                            "need batch_size, max_seq_len >= 1 and seed >= 0")
        self.paths = [str(p) for p, _ in shards]
        self.batch_size, self.L = batch_size, max_seq_len + 1
        longest = max((h["longest_prompt"], str(p)) for p, h in shards) if shards else (0, "")
        if longest[0] >= max_seq_len:  # a window of BOS and prompt tokens alone would have no target
            raise DataError(f"max_seq_len={max_seq_len}: {longest[1]} holds a record whose BOS and prompt are "
                            f"{longest[0]} tokens; windows must be longer, so that each holds a token of a story")
        self.seed = seed
        self.bos_aligned = bos_aligned
        self._mm = None
        lengths = np.array([h["n_tokens"] for _, h in shards], dtype=np.int64)
        if bos_aligned:
            # story starts that have a whole window after them, in global (concatenated) order
            starts = [np.flatnonzero(self._tokens(i)[: max(n - self.L + 1, 0)] == h["bos_id"])
                      for i, ((_, h), n) in enumerate(zip(shards, lengths))]
            self.counts = np.array([len(s) for s in starts], dtype=np.int64)
            self.bos_starts = np.concatenate(starts)
            self.slack = np.zeros(len(shards), dtype=np.int64)
        else:
            self.counts = lengths // self.L
            self.slack = lengths - self.counts * self.L  # room to shift the window grid
        self.offsets = np.cumsum(self.counts) - self.counts  # first global window of each shard
        self.n_windows = int(self.counts.sum())
        if self.n_windows == 0:
            where = f"{Path(self.paths[0]).parent}/{Path(self.paths[0]).name.split('_')[0]}_*.bin" if self.paths else "the data"
            raise DataError(f"{where} hold {int(lengths.sum()):,} tokens in {sum(h['n_stories'] for _, h in shards):,} "
                            f"stories, no window of max_seq_len+1={self.L} tokens"
                            + (" that starts at a story" if bos_aligned else "")
                            + ": pretokenize more stories into this split (a *valid* file in --input is the val "
                            "split), or lower max_seq_len")
        self._epochs = {}

    def __getstate__(self):  # DataLoader workers (spawn) reopen the memmaps themselves
        state = dict(self.__dict__)
        state["_mm"] = None
        return state

    def _tokens(self, i):
        return self._memmaps()[i][0]

    def _memmaps(self):
        """[(tokens, packed loss mask or None)] of every shard, opened once per process."""
        if self._mm is None:
            self._mm = [(load_shard(p), load_mask(p)) for p in self.paths]
        return self._mm

    def _epoch(self, e):
        if e not in self._epochs:
            if len(self._epochs) >= 2:  # a batch rarely spans more than two epochs
                self._epochs.pop(min(self._epochs))
            rng = np.random.default_rng([self.seed, int(e)])
            self._epochs[e] = (rng.permutation(self.n_windows), rng.integers(0, self.slack + 1))
        return self._epochs[e]

    def windows(self, g):
        """(shard index, start token) of the batch_size windows of global batch g."""
        pos = g * self.batch_size + np.arange(self.batch_size)
        epoch, idx = pos // self.n_windows, pos % self.n_windows
        shard = np.empty(self.batch_size, dtype=np.int64)
        start = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epoch):
            perm, shifts = self._epoch(e)
            sel = epoch == e
            w = perm[idx[sel]]  # global window numbers
            s = np.searchsorted(self.offsets, w, side="right") - 1
            shard[sel] = s
            if self.bos_aligned:
                start[sel] = self.bos_starts[w]
            else:
                start[sel] = shifts[s] + (w - self.offsets[s]) * self.L
        return shard, start

    def __getitem__(self, g):
        # torch is imported here, not at the top: tinystories.py's commands and their worker
        # processes, which use this file's shard helpers, then start without it
        import torch

        shard, start = self.windows(g)
        rows = np.empty((self.batch_size, self.L), dtype=np.int64)
        targets = np.ones((self.batch_size, self.L), dtype=bool)  # False: the loss ignores this token
        cols = np.arange(self.L)
        for s in np.unique(shard):
            sel = shard == s
            tokens, packed = self._memmaps()[s]
            rows[sel] = tokens[start[sel, None] + cols]
            if packed is not None:
                targets[sel] = mask_bits(packed, start[sel, None] + cols).astype(bool)
        x, y = torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(np.where(targets, rows, -1)[:, 1:].copy())
        return x, y


def stream(batches, device="cpu", rank=0, world_size=1, start=0, num_workers=0):
    """
    Endless (x, y) int64 batches on device for rank `rank` of `world_size`: its batches number
    start, start+1, ..., which are the global batches k * world_size + rank. num_workers > 0 gives
    the very same batches in the same order from DataLoader worker processes.
    """
    if not 0 <= rank < world_size:
        raise DataError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
    if start < 0 or num_workers < 0:
        raise DataError(f"start={start}, num_workers={num_workers}: must be >= 0")
    return _stream(batches, device, rank, world_size, start, num_workers)  # checked now, not at next()


def _stream(batches, device, rank, world_size, start, num_workers):
    import torch  # imported where batches are made, see Batches.__getitem__

    device = torch.device(device)
    numbers = itertools.count(start * world_size + rank, world_size)
    if num_workers == 0:
        source = (batches[g] for g in numbers)
    else:
        # batch_size=None: the dataset already returns whole batches; the sampler hands out
        # batch numbers round-robin and the loader returns them in order.
        source = torch.utils.data.DataLoader(batches, batch_size=None, sampler=numbers,
                                             num_workers=num_workers, pin_memory=device.type == "cuda")
    for x, y in source:
        if device.type == "cuda":  # pinned memory lets the copy overlap with compute
            x = x.pin_memory().to(device, non_blocking=True)
            y = y.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            x, y = x.to(device), y.to(device)
        yield x, y


def iter_batches(split, batch_size, max_seq_len, vocab_size, vocab_source="custom", data_dir=None,
                 device="cpu", num_workers=0, seed=1337, rank=0, world_size=1, start=0,
                 bos_aligned=False, dataset="stories"):
    """
    Endless (x, y) int64 batches of shape (batch_size, max_seq_len) on device, y = x shifted by
    one token, for one rank; see Batches for the sampling. Batch k (counting from 0) depends only
    on (seed, rank, world_size, split, k, data), so a run resumes exactly by passing
    start=<batches already consumed>.
    """
    shards = split_shards(split, vocab_size, vocab_source, data_dir, dataset=dataset)
    batches = Batches(shards, batch_size, max_seq_len, seed, bos_aligned)
    return stream(batches, device, rank, world_size, start, num_workers)

"""
tinystories.py: the TinyStories data commands, from the download to the token shards.

    python tinystories.py download [--dataset v1|v2|all|instruct] [--source URL_OR_PATH] [--max_mb N (a slice)]
    python tinystories.py download_models [--models stories260K stories15M ...]   # llama2.c's models
    python tinystories.py download_tokenizer gpt2          # GPT-2's tokenizer as data/gpt2.json (gptneo: GPT-Neo's)
    python tinystories.py train_vocab --vocab_size=512
    python tinystories.py pretokenize --vocab_size=512      # --vocab_source=llama2: Llama 2's tokenizer
    python tinystories.py pretokenize --vocab_size=512 --dataset=instruct   # records, a loss mask: tok512-instruct/

Every command shows progress, and a second run with the same inputs does nothing and says so.
Files live in data/ (env STORYLLAMA_DATA or --data_dir to move it):
    TinyStories_all_data/data00.json...      V1 (GPT-3.5 + GPT-4), from TinyStories_all_data.tar.gz
    TinyStoriesV2-GPT4-{train,valid}.txt     V2 (GPT-4 only)
    TinyStoriesV2-GPT4-train.head-{N}MiB.txt  a slice of V2 train (see download), read when the whole is not here
    TinyStories-Instruct-{train,valid}.txt   TinyStoriesInstruct: records of fields and a story (instruct.py)
    tok{N}.model, tok{N}.vocab               a trained sentencepiece vocabulary
    gpt2.json, gptneo.json                   GPT-2's and GPT-Neo's tokenizers (download_tokenizer)
    tok{N}/, llama2/ or NAME/                token shards: {train,val}_0000.bin ..., manifest.json
    tok{N}-instruct/ (NAME-instruct/)        the shards of instruct records (with a loss mask), bad_records.txt
Where a vocabulary's files live, and the shard format, are dataloader.py's (train.py reads the
shards through it); the HTTP client is download.py's.

Story files: "<|endoftext|>"-separated text, JSON lists of objects with a "story" field (the
all_data shards), or JSON {"texts": [...]}; each plain or .gz/.xz compressed. See iter_stories.
"""
import argparse
import hashlib
import io
import itertools
import json
import lzma
import multiprocessing
import os
import re
import shutil
import sys
import tarfile
import time
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from configurator import one_line_errors
from dataloader import (HEADER_SIZE, LLAMA2_VOCAB, DataError, check_vocab, default_data_dir, file_sha256,
                        mask_bytes, pack_header, shard_dir, smallest_vocab, tokenizer_path, vocab_name_of)
from download import MAX_BYTES, fetch
from fileio import atomic_write, publish, regular_file
from hf_tokenizer import gpt2_tokenizer_json
import instruct
from tokenizer import Tokenizer
from vocab import BYTE_LEVEL

HF_BASE = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"
INSTRUCT_BASE = "https://huggingface.co/datasets/roneneldan/TinyStoriesInstruct/resolve/main/"
DATASET_FILES = {
    "v1": ["TinyStories_all_data.tar.gz"],
    "v2": ["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"],
    "instruct": ["TinyStories-Instruct-train.txt", "TinyStories-Instruct-valid.txt"],
}
V2_TRAIN = DATASET_FILES["v2"][0]
V2_SLICES = "TinyStoriesV2-GPT4-train.head-*MiB.txt"  # slices (download --max_mb=N): never the whole's name
SLICES = {"v2": V2_SLICES, "instruct": "TinyStories-Instruct-train.head-*MiB.txt"}  # of each train file
V1_DIR = "TinyStories_all_data"  # where the V1 archive is extracted, inside the data dir

SEP = "<|endoftext|>"
VAL_BUCKETS = 100  # without a *valid* file, 1 story in VAL_BUCKETS (by hash) is held out
MAX_VOCAB = 65535  # token ids are stored as uint16 (the spec's limit: 65535 tokens at most)


# -----------------------------------------------------------------------------
# reading stories

def _decompressed_blocks(path, size=1 << 20):
    """
    Yield the bytes of path in blocks, decompressing .gz and .xz (also multi-member files).
    Decompressing by hand rather than with gzip.open keeps every byte that can be recovered from
    a truncated file; the last block yielded is then None, to say the data stops early.
    """
    kind = path.suffix
    with open(path, "rb") as f:
        if kind not in (".gz", ".xz"):
            yield from iter(lambda: f.read(size), b"")
            return
        new = (lambda: zlib.decompressobj(wbits=31)) if kind == ".gz" else lzma.LZMADecompressor
        d, fresh = new(), True  # fresh: this decompressor has had no input yet
        try:
            while raw := f.read(size):
                while raw:
                    out = d.decompress(raw)
                    fresh = False
                    if out:
                        yield out
                    if d.eof:  # another member/stream may follow
                        raw = d.unused_data
                        d, fresh = new(), True
                    else:
                        raw = b""
            if not fresh and not d.eof:  # input ended before the end-of-stream marker
                yield None
        except (zlib.error, lzma.LZMAError) as e:
            raise DataError(f"{path}: cannot decompress: {e}") from None


def _where(path, offset):
    return f"byte {offset}" + (" of the decompressed data" if path.suffix in (".gz", ".xz") else "")


def iter_stories(path):
    """
    Yield the stories of one file as stripped, non-empty strings.
    Text files: stories are separated by "<|endoftext|>". Rule for truncated files: a story
    counts only when a separator follows it, so a text file must end with "<|endoftext|>"
    (whitespace after it is fine). Text after the last separator is a story cut off by a
    truncated file (or download) and is dropped with a note on stderr. The official files end
    with a separator, so nothing is lost from them.
    JSON files (.json, .json.gz, .json.xz) are parsed whole; a truncated one is a JSON error.
    Malformed input raises DataError naming the file and the byte, or line and column.
    """
    path = Path(path)
    try:
        regular_file(path)
    except ValueError as e:  # no such file, or not one (a directory, a FIFO)
        raise DataError(str(e)) from None
    inner = path.name[:-len(path.suffix)] if path.suffix in (".gz", ".xz") else path.name
    if inner.endswith(".json"):
        yield from _json_stories(path)
    else:
        yield from _text_stories(path)


def _text_stories(path):
    sep = SEP.encode()
    buf, offset = b"", 0  # offset: position of buf[0] in the (decompressed) byte stream
    stream_cut = False
    for block in _decompressed_blocks(path, 4 << 20):
        if block is None:
            stream_cut = True
            break
        parts = (buf + block).split(sep)
        for part in parts[:-1]:
            try:
                story = part.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: invalid UTF-8 at {_where(path, offset + e.start)}") from None
            if story:
                yield story
            offset += len(part) + len(sep)
        buf = parts[-1]
    if stream_cut:
        print(f"note: {path}: compressed data ends early (truncated file?)", file=sys.stderr)
    if buf.strip():
        print(f"note: {path}: dropped a cut-off last story ({len(buf)} bytes at {_where(path, offset)} "
              f"with no {SEP} after it)", file=sys.stderr)


def _json_stories(path):
    blocks = list(_decompressed_blocks(path))
    if blocks and blocks[-1] is None:
        raise DataError(f"{path}: compressed data ends early (truncated file?)")
    raw = b"".join(blocks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at {_where(path, e.start)}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(obj, dict) and isinstance(obj.get("texts"), list):
        items = obj["texts"]
        for i, story in enumerate(items):
            if not isinstance(story, str):
                raise DataError(f"{path}: texts[{i}] is not a string")
    elif isinstance(obj, list):
        items = []
        for i, item in enumerate(obj):
            if not (isinstance(item, dict) and isinstance(item.get("story"), str)):
                raise DataError(f"{path}: item {i} is not an object with a string \"story\" field")
            items.append(item["story"])
    else:
        raise DataError(f"{path}: expected a list of objects with a \"story\" field, "
                        "or an object {\"texts\": [...]}")
    for story in items:
        story = story.strip()
        if story:
            yield story


def is_valid_file(path):
    return "valid" in Path(path).name.lower()


def _hash_is_val(story):
    digest = hashlib.blake2b(story.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % VAL_BUCKETS == 0


def iter_split(files, bar=None, bad=None):
    """
    Yield (story, is_val) for every story of files, in order. With a list `bad`, the files hold
    instruct records (instruct.iter_records): yield ((prompt, story), is_val) for every good one and
    append "file:line: problem" to bad for every bad one. The validation split:
    - if some input file has "valid" in its name (the V2 download has one), exactly the stories
      of those files are the validation split;
    - otherwise a story is held out when blake2b-64 of its UTF-8 text is 0 mod VAL_BUCKETS (1%).
    Both depend only on the story (and its file), never on order, sharding or worker count, and
    duplicate stories always fall on the same side.
    A tqdm `bar` with a total in bytes is advanced through the input files, for an ETA.
    """
    files = [Path(f) for f in files]
    by_file = any(is_valid_file(f) for f in files)
    for f in files:
        in_valid_file = is_valid_file(f)
        left = f.stat().st_size if bar is not None else 0  # bytes not yet counted on the bar
        for item in iter_stories(f) if bad is None else _instruct_records(f, bad):
            story = item if bad is None else item[1]
            yield item, (in_valid_file if by_file else _hash_is_val(story))
            if bar is not None:
                step = min(left, len(story) + len(SEP))  # about the story's bytes in a text file
                bar.update(step)
                left -= step
        if bar is not None:
            bar.update(left)


def _instruct_records(path, bad):
    """(prompt, story) of every good record of an instruct file; each bad one named in bad."""
    try:
        regular_file(path)
    except ValueError as e:
        raise DataError(str(e)) from None
    if path.suffix != ".txt":
        raise DataError(f"{path}: instruct records are read from .txt files (<|endoftext|>-separated records)")
    for r in instruct.iter_records(path):
        if r.problem:
            bad.append(f"{path}:{r.line}: {r.problem}")
        else:
            yield instruct.prompt_of(r.fields), r.story


def input_files(data_dir, dataset="v1", inputs=None):
    """The story files a command reads: --input paths (files or folders) or the downloaded dataset."""
    data_dir = default_data_dir(data_dir)
    if inputs:
        files = []
        for p in map(Path, inputs):
            if p.is_dir():
                found = sorted(q for q in p.iterdir() if q.is_file() and
                               re.search(r"\.(txt|json)(\.gz|\.xz)?$", q.name))
                if not found:
                    raise DataError(f"--input {p}: folder has no .txt/.json(.gz/.xz) story files")
                files += found
            elif p.is_file():
                files.append(p)
            else:
                raise DataError(f"--input {p}: no such file or folder")
        return files
    if dataset == "v1":
        files = sorted((data_dir / V1_DIR).glob("*.json"))
    else:  # the whole train file, else the largest slice of it
        whole, valid = DATASET_FILES[dataset]
        slices = sorted(data_dir.glob(SLICES[dataset]), key=lambda p: p.stat().st_size)
        train = data_dir / whole if (data_dir / whole).is_file() else (slices or [None])[-1]
        files = [f for f in (train, data_dir / valid) if f and f.is_file()]
    if not files:
        raise DataError(f"no TinyStories {dataset} files in {data_dir}: run "
                        f"`python tinystories.py download --dataset={dataset}` first, or pass --input FILE")
    return files


# -----------------------------------------------------------------------------
# download

def _replace_dir(tmp_dir, out):
    """Put the finished folder tmp_dir in out's place: two renames (a folder cannot be renamed over one
    that holds files), the old folder kept aside until the new one is in place, then removed."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp_dir, out)
    shutil.rmtree(old, ignore_errors=True)


def extract_v1(archive, data_dir):
    """Unpack the all_data shards into data_dir/TinyStories_all_data, via a temp folder + rename."""
    final = data_dir / V1_DIR
    tmp = data_dir / f".{V1_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tqdm(tar.getmembers(), desc="extracting", unit="file"):
                tar.extract(member, tmp, filter="data")  # "data" filter: no paths escaping tmp
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive}: cannot extract: {e}; delete it and download again") from None
    _replace_dir(tmp, final)


def download(dataset="v1", data_dir=None, source=None, retries=3, max_mb=None):
    """max_mb=N (V2 and instruct): just the first N MiB of the train file (a Range request, or a local
    file's head), cut after its last whole story, saved as its SLICES name with N, never as the whole
    file; checked by its size only (the server's sha256 is the whole file's). The valid file comes whole."""
    data_dir = default_data_dir(data_dir)
    cut = None  # (file name, bytes) of the slice: its name fixes its size (N to 6 digits)
    if max_mb is not None:
        if dataset not in SLICES or not 0 < max_mb <= MAX_BYTES >> 20:
            raise DataError(f"--max_mb={max_mb}: only with --dataset=v2 (V1 is one .tar.gz archive), "
                            f"more than 0 and at most {MAX_BYTES >> 20} (MiB); --dataset=instruct takes it too")
        cut = SLICES[dataset].replace("*", f"{max_mb:g}"), max(1, int(float(f"{max_mb:g}") * (1 << 20)))
    data_dir.mkdir(parents=True, exist_ok=True)
    did = False
    for ds in (["v1", "v2"] if dataset == "all" else [dataset]):
        if ds == "v1" and (data_dir / V1_DIR).is_dir():
            continue  # extracted already; the archive itself is not needed any more
        for name in DATASET_FILES[ds]:
            save, head = cut if cut and name == DATASET_FILES[ds][0] else (name, None)
            if not (data_dir / save).is_file() and not (data_dir / name).is_file():  # the whole does too
                base = INSTRUCT_BASE if ds == "instruct" else HF_BASE
                fetch(name, data_dir, base, source, retries, head=head, save_as=save, cut_after=SEP.encode())
                did = True
        if ds == "v1":
            extract_v1(data_dir / DATASET_FILES["v1"][0], data_dir)
            did = True
    sliced = dataset if dataset in SLICES else "v2" if dataset == "all" else None
    used = input_files(data_dir, sliced)[0] if sliced else None
    print(f"{'done' if did else 'nothing to do'}: TinyStories {dataset} is in {data_dir}"
          + (f" (--dataset={sliced} reads {used.name})" if used else ""))


# Karpathy's tinyllamas (llama2.c's trained models) and Meta's Llama 2 tokenizer, for ./run.
# name: (where it comes from, sha256 or None, size in bytes). Hugging Face sends the sha256 of the
# big models itself; their sizes follow from their llama2.c v0 headers (checked by a test).
MODELS_BASE = "https://huggingface.co/karpathy/tinyllamas/resolve/main/"
LLAMA2C_BASE = "https://raw.githubusercontent.com/karpathy/llama2.c/master/"
MODEL_FILES = {
    "stories260K.bin": (MODELS_BASE + "stories260K/",
                        "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696", 1_056_540),
    "tok512.bin": (MODELS_BASE + "stories260K/",
                   "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312", 6_227),
    "stories15M.bin": (MODELS_BASE, None, 60_816_028),
    "stories42M.bin": (MODELS_BASE, None, 167_020_572),
    "stories110M.bin": (MODELS_BASE, None, 438_381_596),
    "tokenizer.bin": (LLAMA2C_BASE, "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361", 433_869),
    "tokenizer.model": (LLAMA2C_BASE, "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347", 499_723),
}
MODEL_SETS = {"stories260K": ["stories260K.bin", "tok512.bin"], "stories15M": ["stories15M.bin", "tokenizer.bin"],
              "stories42M": ["stories42M.bin", "tokenizer.bin"], "stories110M": ["stories110M.bin", "tokenizer.bin"],
              "llama2_tokenizer": ["tokenizer.model", "tokenizer.bin"]}


def download_models(names=None, data_dir=None, source=None, retries=3):
    """
    Fetch tinyllamas models into data/models/ (each with its run.c tokenizer beside it, so
    `./run data/models/stories15M.bin` needs no -z) and Meta's Llama 2 tokenizer.model to where
    the vocabulary rule puts it (data/tokenizer.model, for --vocab_source=llama2).
    """
    data_dir = default_data_dir(data_dir)
    names = list(names or MODEL_SETS)
    unknown = [n for n in names if n not in MODEL_SETS]
    if unknown:
        raise DataError(f"--models {' '.join(unknown)}: unknown; choose from {', '.join(MODEL_SETS)}")
    files = dict.fromkeys(f for n in names for f in MODEL_SETS[n])  # in order, once each
    did = False
    for name in files:
        folder = tokenizer_path(LLAMA2_VOCAB, "llama2", data_dir).parent if name.endswith(".model") \
            else data_dir / "models"
        base, sha, size = MODEL_FILES[name]
        dest = folder / name
        if dest.is_file() and dest.stat().st_size == size:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        fetch(name, folder, base, source, retries, sha256=sha)
        if dest.stat().st_size != size:
            got = dest.stat().st_size
            dest.unlink()
            raise DataError(f"{name}: {got} bytes, expected {size}: not llama2.c's file; deleted it")
        did = True
    where = f"{data_dir / 'models'}" + (" and the Llama 2 tokenizer.model in " + str(data_dir)
                                        if "tokenizer.model" in files else "")
    print(f"{'done' if did else 'nothing to do'}: {', '.join(names)} in {where}")
    if "stories260K" in names:
        print(f"try: make && ./run {data_dir / 'models' / 'stories260K.bin'}")


# GPT-2's and GPT-Neo's tokenizers from their Hugging Face repositories, saved as data/NAME.json (a
# tokenizer.json, where vocab_source=NAME finds it). name: (where from, whose, the files fetched): GPT-2's
# tokenizer.json itself; GPT-Neo publishes its vocabulary (GPT-2's) only as vocab.json and merges.txt,
# which hf_tokenizer.gpt2_tokenizer_json turns into a tokenizer.json. No sha256 is published for these
# (plain git files: the server's ETag is a git hash), so the result is checked by what it holds: GPT2_SHAPE.
TOKENIZER_FILES = {"gpt2": ("https://huggingface.co/openai-community/gpt2/resolve/main/", "GPT-2", ["tokenizer.json"]),
                   "gptneo": ("https://huggingface.co/EleutherAI/gpt-neo-125m/resolve/main/", "GPT-Neo",
                              ["vocab.json", "merges.txt"])}
GPT2_SHAPE = {"tokens": 50257, "merges": 50000, "end_id": 50256}  # 256 bytes + 50,000 merges + <|endoftext|>


def download_tokenizer(names, data_dir=None, source=None, retries=3):
    """Fetch GPT-2's or GPT-Neo's tokenizer as data/NAME.json, checked to be a byte-level BPE of GPT2_SHAPE
    whose BOS and EOS are <|endoftext|>; one that is not is deleted with a one-line error. The files come
    through NAME.download/ in data/, where an interrupted transfer resumes."""
    data_dir = default_data_dir(data_dir)
    unknown = [n for n in names if n not in TOKENIZER_FILES]
    if unknown:
        raise DataError(f"download_tokenizer {' '.join(unknown)}: unknown; choose from {', '.join(TOKENIZER_FILES)}")
    for name in dict.fromkeys(names):
        base, whose, files = TOKENIZER_FILES[name]
        dest, tmp = data_dir / f"{name}.json", data_dir / f".{name}.download"
        if dest.is_file():
            problem = _gpt2_shape_problem(dest)
            if problem:
                raise DataError(f"{dest} exists and is not {whose}'s tokenizer ({problem}): move it away first")
            print(f"nothing to do: {dest} is {whose}'s tokenizer")
            continue
        tmp.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (tmp / f).is_file():
                fetch(f, tmp, base, source, retries)
        if files != ["tokenizer.json"]:
            try:
                made = gpt2_tokenizer_json(*(tmp / f for f in files))
            except (OSError, ValueError) as e:
                shutil.rmtree(tmp)
                raise DataError(f"{' and '.join(files)} from {source or base}: {e}; deleted them") from None
            atomic_write(tmp / "tokenizer.json", json.dumps(made, ensure_ascii=False).encode())
        problem = _gpt2_shape_problem(tmp / "tokenizer.json")
        if problem:
            shutil.rmtree(tmp)
            raise DataError(f"{' and '.join(files)} from {source or base}: not {whose}'s tokenizer ({problem}); "
                            "deleted it")
        publish(tmp / "tokenizer.json", dest)
        shutil.rmtree(tmp)
        found = tokenizer_path(GPT2_SHAPE["tokens"], name, data_dir)
        print(f"wrote {dest} ({whose}'s tokenizer, {GPT2_SHAPE['tokens']:,} tokens); next: python tinystories.py "
              f"pretokenize --vocab_source={name}" + ("" if found == dest else f" (but {found} is found first: move it)"))


def _gpt2_shape_problem(path):
    """What makes the tokenizer file at path not GPT-2's vocabulary (GPT2_SHAPE), or "" when nothing does."""
    try:
        tok = Tokenizer(path)
    except (OSError, ValueError) as e:
        return str(e).replace(f"{path}: ", "")
    v, want = tok.vocab, GPT2_SHAPE
    got = {"tokens": len(v), "merges": len(v.merges), "end_id": v.pieces.index(b"<|endoftext|>")
           if b"<|endoftext|>" in v.pieces else -1}
    if got != want or not v.flags & BYTE_LEVEL or tok.bos_id != tok.eos_id or tok.bos_id != want["end_id"]:
        return (f"{got['tokens']:,} tokens, {got['merges']:,} merges, <|endoftext|> at {got['end_id']}, BOS {tok.bos_id}, "
                f"EOS {tok.eos_id}{'' if v.flags & BYTE_LEVEL else ', not byte-level'}; expected {want['tokens']:,} "
                f"byte-level tokens, {want['merges']:,} merges, <|endoftext|> at {want['end_id']} as BOS and EOS")
    return ""


# -----------------------------------------------------------------------------
# train_vocab

def _check_vocab_size(vocab_size, what=None):
    """DataError unless the vocabulary fits the shards; what names it (default: the --vocab_size flag)."""
    if vocab_size > MAX_VOCAB:
        raise DataError(f"{what or f'--vocab_size={vocab_size}'}: shards store token ids as uint16, "
                        f"so the vocabulary can have at most {MAX_VOCAB} tokens")


def _file_stamps(files):
    """[path, size, mtime] of each input file: a later run with the same stamps has the same inputs."""
    return [[str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files]


def _special_pieces(tok):
    """User-defined pieces: sentencepiece puts them after the control tokens, before the bytes."""
    sp = tok.sp_model
    out = []
    for i in range(tok.n_words):
        if sp.is_byte(i):
            break
        if not (sp.is_control(i) or sp.is_unknown(i)):
            out.append(sp.id_to_piece(i))
    return out


def _vocab_sample(files, max_stories, vocab_size, records):
    """The lines train_vocab learns from: those of the first max_stories training-split stories (records:
    of their prompts and stories; a count of the bad ones, on stderr)."""
    bad = [] if records else None  # the instruct records left out
    n = 0
    with tqdm(total=max_stories, desc="vocab sample", unit="story") as bar:
        for item, is_val in iter_split(files, bad=bad):
            if is_val:
                continue
            for line in ("\n".join(item) if records else item).split("\n"):
                if line.strip():
                    yield line
            n += 1
            bar.update()
            if n == max_stories:
                break
        bar.total = n  # fewer stories than the cap: the sample is complete, not cut short
        bar.refresh()
    print(f"training a {vocab_size}-token BPE vocabulary on {n} {'records' if records else 'stories'}")
    if bad:
        print(f"note: {len(bad):,} bad records left out of the sample, the first: {bad[0]} (pretokenize "
              "--dataset=instruct names them all)", file=sys.stderr)


def train_vocab(vocab_size, files, data_dir=None, max_stories=100_000, special_tokens=(), records=False):
    """
    Train data/tok{vocab_size}.model: sentencepiece BPE with byte fallback, digits split and
    identity normalization (llama2.c's choices), plus keeping runs of spaces (sentencepiece
    would squeeze them) so that decode(encode(story)) gives the story back exactly, and character_coverage 0.9999 so rare
    symbols go to byte fallback instead of eating a small vocabulary. The sample is the first
    max_stories training-split stories, files in the order given, each story fed as its lines.
    One trainer thread and no shuffling: the same input gives a byte-identical model anywhere.
    records: the files hold instruct records, each fed as its prompt's lines and its story's.
    """
    import sentencepiece as spm

    data_dir = default_data_dir(data_dir)
    special_tokens = list(special_tokens)
    _check_vocab_size(vocab_size)
    smallest = smallest_vocab(len(special_tokens))
    if vocab_size < smallest:
        raise DataError(f"--vocab_size={vocab_size}: must be at least {smallest} "
                        "(3 control + 256 byte-fallback tokens + special tokens + 1)")
    model = tokenizer_path(vocab_size, "custom", data_dir)
    record = model.with_suffix(".inputs.json")  # what the vocabulary was trained on, to know when it is current
    signature = {"inputs": _file_stamps(files), "max_stories": max_stories, "special_tokens": special_tokens}
    if model.is_file():
        try:
            done = json.loads(record.read_text())
        except (OSError, ValueError):
            done = None  # trained before the record was kept: kept when its special tokens fit
        old = Tokenizer(model)
        if old.n_words == vocab_size and _special_pieces(old) == special_tokens and done in (None, signature):
            print(f"nothing to do: {model} exists, " + ("trained on these inputs" if done else
                  "its training text not recorded (delete it to train again)"))
            return model
        why = "other special tokens" if done in (None, signature) else "was trained on other text or settings"
        print(f"{model} {'has ' if why.startswith('other') else ''}{why}: training it again")

    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_vocab_sample(files, max_stories, vocab_size, records), model_writer=proto,
            model_type="bpe", vocab_size=vocab_size,
            character_coverage=0.9999, split_digits=True, byte_fallback=True,
            allow_whitespace_only_pieces=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, user_defined_symbols=special_tokens,
            input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "failed"
        raise DataError(f"sentencepiece could not train a {vocab_size}-token vocabulary: {first}") from None
    data_dir.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))
    atomic_write(model.with_suffix(".vocab"), vocab.encode("utf-8"))
    atomic_write(model, proto.getvalue())  # a .model in place means training finished
    atomic_write(record, (json.dumps(signature, indent=1) + "\n").encode())  # after: a stale record retrains
    print(f"wrote {model} and {model.with_suffix('.vocab')}")
    return model


# -----------------------------------------------------------------------------
# pretokenize

_worker_tok = None  # the Tokenizer of a pretokenize worker process, loaded once per process


def _init_worker(model_path):
    global _worker_tok
    _worker_tok = Tokenizer(model_path)


def _encode_texts(tok, texts):
    if tok.sp_model:  # one thread: the parallelism is the worker processes (sentencepiece may default to all cores)
        return tok.sp_model.encode(texts, num_threads=1)
    return [tok.encode(t, bos=False, eos=False) for t in texts]


def _record_tokens(tok, records):
    """(prompt tokens, story tokens) of each (prompt, story): the prompt's tokens are those it has alone
    (what sample.py and run.c give it), the story's those that follow them in the tokens of prompt + " " +
    story, so the space after "Story:" is where any tokenizer puts it (sentencepiece's "▁Once", GPT-2's
    "ĠOnce"); when the two encodings disagree on the prompt's tokens, the story's alone."""
    heads = _encode_texts(tok, [p for p, _ in records])
    whole = _encode_texts(tok, [f"{p} {s}" for p, s in records])
    return heads, [w[len(h):] if list(w[:len(h)]) == list(h) else _encode_texts(tok, [s])[0]
                   for h, w, (_, s) in zip(heads, whole, records)]


def _encode_chunk(chunk):
    """[(story, is_val)] -> {"train"/"val": (uint16 tokens, n_stories, n_bytes, None)}, in input order;
    [((prompt, story), is_val)] (instruct records) -> the same with a loss mask: each record is BOS,
    its prompt's tokens, its story's tokens (_record_tokens), EOS, the mask True on the story's tokens
    and EOS, and n_bytes counts the stories' bytes."""
    tok = _worker_tok
    records = isinstance(chunk[0][0], tuple)
    texts = [s[1] if records else s for s, _ in chunk]
    if records:
        heads, ids = _record_tokens(tok, [s for s, _ in chunk])
    else:
        heads, ids = [[]] * len(chunk), _encode_texts(tok, texts)
    out = {}
    for split, want_val in (("train", False), ("val", True)):
        picked = [i for i, (_, v) in enumerate(chunk) if v == want_val]
        n_tokens = sum(len(heads[i]) + len(ids[i]) + 2 for i in picked)
        tokens = np.empty(n_tokens, dtype=np.uint16)
        mask = np.ones(n_tokens, dtype=bool) if records else None
        pos = 0
        for i in picked:
            h, n = len(heads[i]), len(ids[i])
            tokens[pos] = tok.bos_id
            tokens[pos + 1:pos + 1 + h] = heads[i]
            tokens[pos + 1 + h:pos + 1 + h + n] = ids[i]
            tokens[pos + 1 + h + n] = tok.eos_id
            if records:
                mask[pos:pos + 1 + h] = False
            pos += h + n + 2
        n_bytes = sum(len(texts[i].encode("utf-8")) for i in picked)
        out[split] = (tokens, len(picked), n_bytes, mask)
    return out


class ShardWriter:
    """Appends tokens to {split}_0000.bin, {split}_0001.bin ... of about shard_tokens tokens each,
    each written as name.tmp with its header filled in at the end, then renamed into place. Tokens
    that come with a loss mask make version-2 shards: the mask, kept in memory, follows the tokens."""

    def __init__(self, out_dir, split, tok, tok_sha, shard_tokens):
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.fixed = (tok.n_words, tok.bos_id, tok.eos_id)
        self.tok_sha, self.identity = tok_sha, tok.identity
        self.shards = {}  # file name -> n_tokens
        self.f = None

    def add(self, tokens, n_stories, n_bytes, mask=None):
        if n_stories == 0:
            return
        if self.f is None:
            self.name = f"{self.split}_{len(self.shards):04d}.bin"
            self.tmp = self.out_dir / (self.name + ".tmp")
            self.f = open(self.tmp, "wb")
            self.f.write(bytes(HEADER_SIZE))
            self.counts = [0, 0, 0]  # tokens, stories, bytes
            self.masks, self.longest = [], 0  # the loss mask's pieces; the longest run of 0s (BOS + prompt)
        self.f.write(tokens.astype("<u2", copy=False).tobytes())
        if mask is not None:  # a piece starts at a BOS and ends at an EOS: no run of 0s crosses pieces
            self.masks.append(mask)
            self.longest = max(self.longest, int(np.diff(np.flatnonzero(np.r_[True, mask, True])).max()) - 1)
        self.counts = [self.counts[0] + len(tokens), self.counts[1] + n_stories, self.counts[2] + n_bytes]
        if self.counts[0] >= self.shard_tokens:
            self._finish()

    def _finish(self):
        mask = (int(sum(m.sum() for m in self.masks)), self.longest) if self.masks else None
        if mask:
            self.f.write(np.packbits(np.concatenate(self.masks)).tobytes())
        self.f.seek(0)
        self.f.write(pack_header(*self.fixed, *self.counts, self.tok_sha, self.identity, mask))
        self.f.close()
        self.f = None
        publish(self.tmp, self.out_dir / self.name)
        self.shards[self.name] = self.counts[0]

    def close(self):
        if self.f is not None:
            self._finish()
        return self.shards


def _batched(iterable, n):
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def pretokenize(vocab_size, files, data_dir=None, tokenizer=None, workers=None, shard_tokens=1 << 26,
                chunk_stories=512, vocab_source="custom", dataset="stories"):
    """
    Encode every story of files as BOS + tokens + EOS into uint16 shards in the vocabulary's folder
    (data/tok{N}/, data/llama2/ or data/NAME/; see dataloader.py). The tokenizer is any file
    tokenizer.Tokenizer reads (default: the vocabulary's own, by dataloader.py's rule). Stories are cut
    into chunks of chunk_stories in input order, encoded by `workers` processes and written in input order,
    so the shards are byte-identical for any worker count. Everything is written to a temp folder that
    replaces the old one. dataset="instruct": the files hold instruct records, encoded with a loss mask
    (_encode_chunk) into data/tok{N}-instruct/, and every bad record is named in its bad_records.txt.
    """
    data_dir = default_data_dir(data_dir)
    check_vocab(vocab_size, vocab_source)
    workers = workers or os.cpu_count()
    model = Path(tokenizer) if tokenizer else tokenizer_path(vocab_size, vocab_source, data_dir)
    _check_vocab_size(vocab_size, None if vocab_source == "custom" and not tokenizer else
                      f"tokenizer {model} has {vocab_size:,} tokens")
    tok = _shard_tokenizer(model, vocab_size, vocab_source, data_dir)
    tok_sha = file_sha256(model) if model.is_file() else hashlib.sha256(b"").hexdigest()
    files = [Path(f) for f in files]
    out = shard_dir(vocab_size, vocab_source, data_dir, dataset)
    if out.exists() and not (out / "manifest.json").is_file() and any(out.iterdir()):
        raise DataError(f"{out} holds files that are not token shards: pretokenize would replace it; "
                        "use another --vocab_source name (or --data_dir)")
    signature = {
        "tokenizer_sha256": tok_sha, "identity": tok.identity.hex() if tok.identity else None,
        "vocab_size": tok.n_words, "shard_tokens": shard_tokens, "dataset": dataset,
        "val_rule": f"valid files, else blake2b-64 % {VAL_BUCKETS} == 0",
        "inputs": _file_stamps(files),
    }
    if _up_to_date(out, signature):
        print(f"nothing to do: {out} is up to date with these inputs and {model.name}")
        return out

    tmp_dir = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    writers = {s: ShardWriter(tmp_dir, s, tok, tok_sha, shard_tokens) for s in ("train", "val")}
    t0 = time.time()
    stats = {"train": [0, 0, 0], "val": [0, 0, 0]}  # tokens, stories, bytes

    bad = [] if dataset == "instruct" else None  # "file:line: problem" of each bad record

    def write(result):
        for split, (tokens, n_stories, n_bytes, mask) in result.items():
            writers[split].add(tokens, n_stories, n_bytes, mask)
            stats[split] = [a + b for a, b in zip(stats[split], (len(tokens), n_stories, n_bytes))]

    try:
        _encode_files(files, model, workers, chunk_stories, write, bad)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # the previous shards stay as they were
        raise
    shards = {**writers["train"].close(), **writers["val"].close()}
    seconds = time.time() - t0
    if stats["train"][1] + stats["val"][1] == 0:
        shutil.rmtree(tmp_dir)
        raise DataError(f"no {'good records' if bad is not None else 'stories'} found in {', '.join(map(str, files))}"
                        + (f" ({len(bad)} bad, the first {bad[0]})" if bad else ""))
    if bad:
        atomic_write(tmp_dir / "bad_records.txt", "".join(b + "\n" for b in bad).encode())
    manifest = {"signature": signature, "shards": shards, "stats": stats, "seconds": round(seconds, 3),
                **({"bad_records": len(bad)} if bad is not None else {})}
    atomic_write(tmp_dir / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    _replace_dir(tmp_dir, out)
    _report(out, stats, len(shards), seconds, workers, bad)
    if tokenizer:
        _keep_tokenizer(tok, vocab_size, vocab_source, data_dir)
    return out


def _keep_tokenizer(tok, vocab_size, vocab_source, data_dir):
    """After pretokenize --tokenizer=PATH: put the tokenizer where train.py looks for the vocabulary's
    (dataloader.tokenizer_path) when none is there, so that a run on these shards keeps its vocabulary
    in its checkpoints. A sentencepiece or run.c file is copied as it is; any other (a GGUF's vocabulary,
    a tokenizer.json, which may need the configs beside it) is written as run.c's tokenizer file."""
    home = tokenizer_path(vocab_size, vocab_source, data_dir)
    if vocab_source == "llama2" or home.is_file():
        return
    suffix = {"sentencepiece": ".model", "bin": ".bin"}.get(tok.kind, ".bin")
    if vocab_source == "custom" and suffix != ".model":
        print(f"note: train.py reads this vocabulary's tokenizer from {home}, a sentencepiece model; "
              f"{tok.path} is not one", file=sys.stderr)
        return
    dest = home.with_suffix(suffix)
    try:
        if tok.kind in ("sentencepiece", "bin"):
            atomic_write(dest, tok.path.read_bytes())
        else:
            tok.export(dest)
    except (OSError, ValueError) as e:
        print(f"note: the tokenizer was not kept as {dest} ({e}): train.py will name none", file=sys.stderr)
        return
    print(f"kept the tokenizer as {dest}, where train.py finds this vocabulary's")


def _report(out, stats, n_shards, seconds, workers, bad):
    """What pretokenize did, on stdout; what it left out or could not make, on stderr."""
    for split in ("train", "val"):
        t, s, b = stats[split]
        print(f"{split}: {s:,} {'stories' if bad is None else 'records'}, {t:,} tokens, {b / max(t, 1):.2f} "
              f"{'story ' if bad is not None else ''}bytes/token")
    if bad:
        print(f"note: {len(bad):,} bad record{'s' if len(bad) > 1 else ''} left out, each named in "
              f"{out / 'bad_records.txt'}; the first: "
              + "; ".join(bad[:3]), file=sys.stderr)
    if stats["val"][1] == 0:
        print(f"note: the validation split is empty (too few stories for 1 in {VAL_BUCKETS} to be held out): "
              "train.py needs one; add a file with 'valid' in its name to --input, or more stories", file=sys.stderr)
    n_stories = stats["train"][1] + stats["val"][1]
    print(f"wrote {n_shards} shards to {out} in {seconds:.1f}s "
          f"({n_stories / seconds:,.0f} {'stories' if bad is None else 'records'}/s, {workers} workers)")


def _shard_tokenizer(model, vocab_size, vocab_source, data_dir):
    """The Tokenizer of the file `model` for pretokenize, or DataError saying what to do."""
    if not model.exists():
        raise _missing_tokenizer(model, vocab_source, vocab_size, data_dir)
    try:
        tok = Tokenizer(model)
    except (OSError, ValueError) as e:
        raise DataError(f"tokenizer {model}: {e}") from None
    if tok.n_words != vocab_size:
        raise DataError(f"tokenizer {model} has {tok.n_words} tokens, but --vocab_size={vocab_size}")
    if tok.bos_id < 0 or tok.eos_id < 0:
        raise DataError(f"tokenizer {model} has no {'BOS' if tok.bos_id < 0 else 'EOS'} token: every story in a "
                        "shard is BOS, its tokens, EOS")
    return tok


def _missing_tokenizer(model, vocab_source, vocab_size, data_dir):
    """The DataError for a vocabulary's tokenizer file that is not there (data_dir: resolved), saying
    what makes it."""
    where = f" --data_dir={data_dir}" if data_dir != default_data_dir() else ""
    hint = (f"run `python tinystories.py train_vocab --vocab_size={vocab_size}{where}` first"
            if vocab_source == "custom" else "put Meta's Llama 2 tokenizer.model there, or pass --tokenizer PATH"
            if vocab_source == "llama2" else f"run `python tinystories.py download_tokenizer {vocab_source}{where}` "
            "first, or pass --tokenizer PATH" if vocab_source in TOKENIZER_FILES
            else "put the tokenizer file there, or pass --tokenizer PATH")
    return DataError(f"tokenizer {model} not found: {hint}")


def _up_to_date(out, signature):
    """Whether out holds the shards of a run with this signature (same tokenizer, inputs and settings),
    every one of them whole."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    masked = signature["dataset"] == "instruct"  # the shards end with a loss mask
    return bool(manifest) and manifest.get("signature") == signature and all(
        (out / name).is_file() and (out / name).stat().st_size == HEADER_SIZE + 2 * n + masked * mask_bytes(n)
        for name, n in manifest["shards"].items())


def _encode_files(files, model, workers, chunk_stories, write, bad=None):
    """Encode the stories of files with the tokenizer file `model`, chunk_stories at a time on `workers`
    processes, and hand each chunk's result to write in input order. With a list `bad`, the files hold
    instruct records (iter_split)."""
    def progress():
        return tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True,
                    unit_divisor=1024, desc="pretokenize")

    if workers == 1:
        _init_worker(str(model))
        with progress() as bar:
            for chunk in _batched(iter_split(files, bar, bad), chunk_stories):
                write(_encode_chunk(chunk))
        return
    # fork: workers start at once and need no importable __main__ (spawn fails for stdin scripts); a
    # ProcessPoolExecutor, unlike multiprocessing.Pool, raises instead of hanging when a worker dies
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(str(model),)) as pool:
        pool.submit(int).result()  # forks every worker now, before tqdm starts its thread
        pending = deque()  # bounded, in input order: memory stays flat, output stays ordered
        try:
            with progress() as bar:
                for chunk in _batched(iter_split(files, bar, bad), chunk_stories):
                    pending.append(pool.submit(_encode_chunk, chunk))
                    if len(pending) >= 2 * workers:
                        write(pending.popleft().result())
                while pending:
                    write(pending.popleft().result())
        except BrokenProcessPool:
            raise DataError("a pretokenize worker process died (out of memory?); try fewer --workers") from None


# -----------------------------------------------------------------------------
# command line

def make_parser():
    """The command line: one subcommand per data step."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--data_dir", default=None, help="data folder (default: $STORYLLAMA_DATA or data/)")

    def inputs(p):
        p.add_argument("--dataset", choices=["v1", "v2", "instruct"], default="v1", help="which downloaded TinyStories "
                       "to read (default v1); instruct: its records (or --input's), shards with a loss mask")
        p.add_argument("--input", nargs="+", default=None, metavar="PATH",
                       help="read these story files or folders instead (.txt/.json, .gz/.xz; instruct: .txt)")

    def fetching(p, where):
        p.add_argument("--source", default=None, metavar="URL_OR_PATH",
                       help=f"{where} instead of Hugging Face's (default: $STORYLLAMA_SOURCE)")
        p.add_argument("--retries", type=int, default=3, help="resume an interrupted transfer this often")

    p = sub.add_parser("download", allow_abbrev=False, help="fetch TinyStories (resumable, verified, extracted)", description="fetch TinyStories (resumable, verified, extracted)")
    common(p)
    fetching(p, "mirror URL, local folder or local file")
    p.add_argument("--dataset", choices=["v1", "v2", "all", "instruct"], default="v1",
                   help="v1: TinyStories_all_data.tar.gz; v2: the GPT-4 train/valid text files; all: both; "
                        "instruct: TinyStories-Instruct-{train,valid}.txt (roneneldan/TinyStoriesInstruct)")
    p.add_argument("--max_mb", type=float, nargs="?", const=100.0, metavar="N", help="v2 and instruct: the train "
                   "file's first N MiB (100 if N is left out), cut after its last whole story, as its name with "
                   ".head-{N}MiB.txt (TinyStoriesV2-GPT4-train.head-100MiB.txt); the valid file comes whole")

    p = sub.add_parser("download_models", allow_abbrev=False, help="fetch llama2.c's trained models and the Llama 2 tokenizer",
                       description="fetch llama2.c's trained tinyllamas models (with their run.c tokenizers) "
                                   "into data/models/ and Meta's Llama 2 tokenizer.model into data/")
    common(p)
    fetching(p, "mirror URL or local folder holding the files by name")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help=f"which (default all): {' '.join(MODEL_SETS)}")

    p = sub.add_parser("download_tokenizer", allow_abbrev=False, help="fetch GPT-2's or GPT-Neo's tokenizer as data/NAME.json",
                       description="fetch GPT-2's (gpt2: tokenizer.json) or GPT-Neo's (gptneo: vocab.json and "
                                   "merges.txt) tokenizer from its Hugging Face repository as the tokenizer.json "
                                   "data/NAME.json, where --vocab_source=NAME finds it")
    common(p)
    fetching(p, "mirror URL (a repository's resolve/main/), local folder holding the files, or gpt2's tokenizer.json")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"which: {' '.join(TOKENIZER_FILES)}")

    p = sub.add_parser("train_vocab", allow_abbrev=False, help="train a sentencepiece BPE vocabulary: data/tok{N}.model", description="train a sentencepiece BPE vocabulary: data/tok{N}.model")
    common(p)
    inputs(p)
    p.add_argument("--vocab_size", type=int, help="(required) checked after parsing, so that a misspelt flag is named")
    p.add_argument("--max_stories", type=int, default=100_000,
                   help="train on the first this many training stories (default 100000)")
    p.add_argument("--special_tokens", nargs="*", default=[], metavar="TOKEN",
                   help="extra unsplittable tokens, e.g. '<|start_story|>' '<|end_story|>'")

    p = sub.add_parser("pretokenize", allow_abbrev=False, help="encode stories into uint16 token shards", description="encode stories into uint16 token shards")
    common(p)
    inputs(p)
    p.add_argument("--vocab_source", default=None, metavar="NAME",
                   help="custom: data/tok{N}.model (the default with --vocab_size); llama2: Meta's 32000-token "
                        "data/tokenizer.model; NAME: data/NAME.model, .json, .gguf or .bin; shards go to data/NAME/")
    p.add_argument("--vocab_size", type=int, default=None,
                   help="N for data/tok{N}.model (custom); for others it is the tokenizer's, checked if given")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="any tokenizer file (sentencepiece .model, tokenizer.json or its folder, GGUF, run.c .bin); "
                        "shards go to data/<its name>/ (tok512.model: data/tok512/) unless --vocab_source says")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--shard_tokens", type=int, default=1 << 26, help="tokens per shard file (about)")
    return parser


def _pretokenize_vocab(args):
    """(vocab_source, vocab_size) of the pretokenize command line: --vocab_size=N alone is custom tok{N};
    a --tokenizer file alone names its vocabulary (dataloader.vocab_name_of) and gives its size."""
    source, size = args.vocab_source, args.vocab_size
    if source is None and args.tokenizer is not None and size is None:
        source = vocab_name_of(args.tokenizer)
    source = source or "custom"
    if size is None and source == "llama2":
        size = LLAMA2_VOCAB
    if size is None and source != "custom":
        path = Path(args.tokenizer) if args.tokenizer else tokenizer_path(1, source, args.data_dir)
        if not path.exists():
            raise _missing_tokenizer(path, source, size, default_data_dir(args.data_dir))
        try:
            size = Tokenizer(path).n_words
        except (OSError, ValueError) as e:
            raise DataError(f"tokenizer {path}: {e}") from None
    if size is None:
        raise DataError("pretokenize needs --vocab_size=N (data/tok{N}.model), --vocab_source=llama2 or NAME, "
                        "or --tokenizer=PATH")
    return source, size


def main(argv=None):
    parser = make_parser()
    args = one_line_errors(parser).parse_args(argv)
    if args.command == "train_vocab" and args.vocab_size is None:
        print("tinystories.py train_vocab: error: the following arguments are required: --vocab_size", file=sys.stderr)
        return 2
    try:
        if args.command == "download":
            download(args.dataset, args.data_dir, args.source, args.retries, args.max_mb)
        elif args.command == "download_models":
            download_models(args.models, args.data_dir, args.source, args.retries)
        elif args.command == "download_tokenizer":
            download_tokenizer(args.names, args.data_dir, args.source, args.retries)
        elif args.command == "train_vocab":
            files = input_files(args.data_dir, args.dataset, args.input)
            train_vocab(args.vocab_size, files, args.data_dir, args.max_stories, args.special_tokens,
                        records=args.dataset == "instruct")
        else:
            if args.workers is not None and args.workers < 1:
                raise DataError(f"--workers={args.workers}: must be >= 1")
            vocab_source, vocab_size = _pretokenize_vocab(args)
            files = input_files(args.data_dir, args.dataset, args.input)
            pretokenize(vocab_size, files, args.data_dir, args.tokenizer, args.workers, args.shard_tokens,
                        vocab_source=vocab_source, dataset="instruct" if args.dataset == "instruct" else "stories")
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a download resumes when you run the same command again)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

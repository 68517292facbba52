"""vocab.py: a model's vocabulary in plain Python: the Vocab, its identity, the BPE encoder and decoder
that run.c mirrors step for step, and the two files read without a tokenizer library: sentencepiece's
.model (a small protobuf reader) and run.c's tokenizer file, ours and llama2.c's, both ways.

tokenizer.py reads a vocabulary from any file (also tokenizer.json through hf_tokenizer.py, and a
GGUF through gguf_meta.py, which build Vocabs from here) and is its command line. docs/formats.md has
the tokenizer file's byte layout; in short:

    storyllama tokenizer file (version 1, little-endian)
    0  u32 magic "SLTK" | 4 i32 version = 1 | 8 i32 vocab_size | 12 i32 bos_id | 16 i32 eos_id
    20 i32 unk_id | 24 i32 end_id | 28 i32 n_merges | 32 i32 n_classes | 36 u8 prefix | 37 u8 flags
    38..63 zero | 64 32 bytes identity (sha256, see identity()) | 96..127 zero
    128 per token: u8 type, u8 in_text, f32 score, i32 len, len bytes
    then n_merges x (i32 left, i32 right, i32 result), in rank order
    then n_classes x u32 (first code point | class << 24), ascending: the byte-level split's classes

    llama2.c's tokenizer file: i32 max_token_length, then per token f32 score, i32 len, len bytes;
    BOS and EOS written as "\\n<s>\\n" and "\\n</s>\\n" (its quirk, kept so the files are identical)

Token text is what run.c matches and prints: sentencepiece's whitespace marker U+2581 as a plain
space, byte-level (GPT-2) tokens as the bytes they stand for, <0xHH> byte pieces as spelled.
"""
import functools
import hashlib
import heapq
import re
import struct
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from fileio import MAX_FIELD, atomic_write

# token types: sentencepiece's numbering, which GGUF uses too
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# where a dummy space goes in front of the text (sentencepiece's add_dummy_prefix and HF's variants)
PREFIX_NONE = 0
PREFIX_TEXT = 1    # sentencepiece: before the whole text, always
PREFIX_FIRST = 2   # HF Metaspace prepend_scheme=first: the text's first segment, unless it starts with a space
PREFIX_EVERY = 3   # HF Metaspace always, ByteLevel add_prefix_space: each segment not starting with a space
PREFIX_ALWAYS = 4  # HF Prepend("▁") normalizer: each segment between raw special tokens, always
# flags
COLLAPSE = 1       # sentencepiece's remove_extra_whitespaces: leading/trailing spaces go, runs become one
BYTE_FALLBACK = 2  # a character the vocabulary lacks becomes its <0xHH> byte pieces
BYTE_LEVEL = 4     # GPT-2 byte-level BPE: the text is split by GPT-2's rule, then merged byte by byte
ADD_BOS = 8        # a prompt starts with BOS
FUSE_UNK = 16      # consecutive unknown characters become one <unk>
IGNORE_MERGES = 32 # a word that is one token is that token, whatever the merges say
SPLIT_SPACES = 64  # HF Metaspace split=true: every space starts a new word
ALL_FLAGS = 127

MAGIC = 0x4B544C53  # b"SLTK" read as a little-endian u32
VERSION = 1
HEADER_BYTES = 128
END_PIECES = (b"<|end_story|>", b"<|endoftext|>")  # an end-of-story token besides EOS, the first one present
# Unicode White_Space: the \s of the regex engine (Oniguruma) Hugging Face tokenizers split with
WHITESPACE = frozenset([9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
                        0x202F, 0x205F, 0x3000])
SPLIT_OTHER, SPLIT_LETTER, SPLIT_NUMBER = 0, 1, 2  # character classes of GPT-2's split (\p{L}, \p{N})
# The encoder remembers the ids of up to CACHED_WORDS words (of at most CACHED_CHARS characters) per
# vocabulary that cuts text into words (byte-level, or a word per space): stories repeat a few thousand
# words (the ~7,000 shared stories: 9,300, 1.6 MB), so BPE runs once per word instead of once per
# occurrence. Full, it holds at most ~35 MB (65,536 random 64-letter words), and then starts over.
CACHED_WORDS, CACHED_CHARS = 1 << 16, 64


@dataclass
class Vocab:
    """One vocabulary, whatever file it came from. Ids are list positions."""
    pieces: list           # bytes: the token text (see the module docstring)
    scores: list           # float: merge priority of sentencepiece BPE (higher first); -rank for HF BPE
    types: list            # NORMAL .. BYTE
    in_text: list          # bool: matched as one token wherever its text appears in a prompt
    bos: int = -1          # -1: none
    eos: int = -1
    unk: int = -1
    end: int = -1          # end-of-story token (END_PIECES); generation stops at bos, eos and end
    prefix: int = PREFIX_NONE
    flags: int = 0
    merges: list = field(default_factory=list)   # (left, right, result) by rank; empty: merge by score
    classes: list = field(default_factory=list)  # byte-level: u32 (code point | class << 24), ascending
    checkable: bool = True  # False for llama2.c files: their types are guessed, so no identity

    def __len__(self):
        return len(self.pieces)


def find_end(pieces, types):
    """The end-of-story token of a vocabulary: the first of END_PIECES that is a special token, or -1."""
    for want in END_PIECES:
        for i, (p, t) in enumerate(zip(pieces, types)):
            if p == want and t in (CONTROL, USER_DEFINED):
                return i
    return -1


def identity(v):
    """The vocabulary's identity: sha256 of its size, BOS, EOS and every token's type and text, in id order.

    The same vocabulary gives the same 32 bytes from a .model, a tokenizer.json and our file (scores,
    merges and normalisation are how text is cut, not what an id means, so they stay out: a tokenizer
    converted to Hugging Face and back keeps its identity). None for llama2.c files (types unknown)."""
    if not v.checkable:
        return None
    h = hashlib.sha256(b"storyllama vocabulary\0" + struct.pack("<iii", len(v), v.bos, v.eos))
    for p, t in zip(v.pieces, v.types):
        h.update(struct.pack("<Bi", t, len(p)) + p)
    return h.digest()


# -----------------------------------------------------------------------------
# sentencepiece .model files: read with a small protobuf reader (the Python package exposes no token types)

def _varint(b, pos):
    value = shift = 0
    while True:
        if pos >= len(b) or shift > 63:
            raise ValueError("truncated varint")
        x = b[pos]
        pos += 1
        value |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return value, pos


def _proto(b):
    """{field number: [values]} of a protobuf message: varints as ints, others as bytes."""
    out, pos = {}, 0
    while pos < len(b):
        key, pos = _varint(b, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(b, pos)
        elif wire in (1, 2, 5):
            n = {1: 8, 5: 4}.get(wire)
            if n is None:
                n, pos = _varint(b, pos)
            if pos + n > len(b):
                raise ValueError("truncated field")
            value, pos = b[pos:pos + n], pos + n
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(key >> 3, []).append(value)
    return out


def _first(m, field, kind, default):
    """The first value of a field of a _proto message, which must be of kind (int for a varint, bytes
    for the rest); a hostile file can put any wire type under any field number."""
    v = m.get(field, [default])[0]
    if not isinstance(v, kind):
        raise ValueError(f"field {field} is not a {'varint' if kind is int else 'length or fixed-size value'}")
    return v


def read_sentencepiece(path):
    """A sentencepiece .model -> Vocab. ModelProto: 1 pieces (1 text, 2 score, 3 type), 2 trainer_spec
    (3 model_type, 24 treat_whitespace_as_suffix, 35 byte_fallback), 3 normalizer_spec (2 precompiled
    charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces; both default true)."""
    from sentencepiece import SentencePieceProcessor

    try:
        sp = SentencePieceProcessor(model_file=str(path))
        m = _proto(Path(path).read_bytes())
        if not all(isinstance(p, bytes) for p in m.get(1, [])):
            raise ValueError("a piece is not a message")
        pieces = [_proto(p) for p in m.get(1, [])]
        trainer = _proto(_first(m, 2, bytes, b""))
        norm = _proto(_first(m, 3, bytes, b""))
        text = [_first(p, 1, bytes, b"").replace("\u2581".encode(), b" ") for p in pieces]
        scores = [struct.unpack("<f", _first(p, 2, bytes, bytes(4)))[0] for p in pieces]
        types = [_first(p, 3, int, NORMAL) for p in pieces]
        collapse, fallback, dummy = _first(norm, 4, int, 1), _first(trainer, 35, int, 0), _first(norm, 3, int, 1)
        kind, charsmap, suffix = _first(trainer, 3, int, 1), _first(norm, 2, bytes, b""), _first(trainer, 24, int, 0)
    except (RuntimeError, OSError, ValueError, IndexError, struct.error) as e:
        # sentencepiece's own message is a multi-line C++ status; keep the first line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
        raise ValueError(f"{path}: not a sentencepiece model ({reason})") from None
    if len(text) != sp.vocab_size() or any(t not in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) for t in types):
        raise ValueError(f"{path}: not a sentencepiece model (bad pieces)")
    flags = ADD_BOS | COLLAPSE * bool(collapse) | BYTE_FALLBACK * bool(fallback)
    v = Vocab(text, scores, types, [t == USER_DEFINED for t in types], sp.bos_id(), sp.eos_id(), sp.unk_id(),
              find_end(text, types), PREFIX_TEXT if dummy else PREFIX_NONE, flags)
    problem = ("it is not a BPE model (unigram and others are not implemented by run.c)" if kind != 2
               else "its normalization rule is not identity" if charsmap
               else "it treats whitespace as a suffix" if suffix else "")
    return v, problem


# -----------------------------------------------------------------------------
# run.c's tokenizer files: ours and llama2.c's

def byte_value(piece):
    m = re.fullmatch(rb"<0x([0-9A-F]{2})>", piece)
    return int(m.group(1), 16) if m else -1


def read_bin(path):
    """A run.c tokenizer file (ours, or llama2.c's with its types guessed as run.c does) -> Vocab."""
    data = Path(path).read_bytes()
    bad = lambda what: ValueError(f"{path}: {what}")  # noqa: E731
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == MAGIC:
        if len(data) < HEADER_BYTES:
            raise bad(f"truncated: {len(data)} bytes, the header alone needs {HEADER_BYTES}")
        version, n, bos, eos, unk, end, n_merges, n_classes, prefix, flags = struct.unpack_from("<8iBB", data, 4)
        if version != VERSION:
            raise bad(f"tokenizer file version {version}, this code reads version {VERSION}")
        if not 0 < n < MAX_FIELD or not all(-1 <= i < n for i in (bos, eos, unk, end)):
            raise bad(f"vocab_size={n} or a special id (bos {bos}, eos {eos}, unk {unk}, end {end}) out of range")
        if prefix > PREFIX_ALWAYS or flags & ~ALL_FLAGS or not 0 <= n_merges < MAX_FIELD or not 0 <= n_classes <= 0x110000:
            raise bad(f"prefix={prefix}, flags={flags}, n_merges={n_merges} or n_classes={n_classes} out of range")
        if data[38:64] != bytes(26) or data[96:128] != bytes(32):
            raise bad("header bytes 38..63 and 96..127 must be zero")
        pos, pieces, scores, types, in_text = HEADER_BYTES, [], [], [], []
        for i in range(n):
            if pos + 10 > len(data):
                raise bad(f"truncated in token {i}")
            t, m, s, k = struct.unpack_from("<BBfi", data, pos)
            if not NORMAL <= t <= BYTE or m > 1 or not 0 <= k <= len(data) - pos - 10:
                raise bad(f"token {i}: type {t}, in_text {m} or length {k} out of range")
            pieces.append(data[pos + 10:pos + 10 + k])
            scores.append(s), types.append(t), in_text.append(bool(m))
            pos += 10 + k
        if len(data) - pos != 12 * n_merges + 4 * n_classes:
            raise bad(f"size {len(data)} bytes does not match its {n} tokens, {n_merges} merges and {n_classes} classes")
        merges = [struct.unpack_from("<3i", data, pos + 12 * r) for r in range(n_merges)]
        classes = list(struct.unpack_from(f"<{n_classes}I", data, pos + 12 * n_merges))
        v = Vocab(pieces, scores, types, in_text, bos, eos, unk, end, prefix, flags, merges, classes)
        check(v, path)
        if data[64:96] == bytes(32):
            v.checkable = False  # converted from a llama2.c file: the types were guessed
        elif data[64:96] != identity(v):
            raise bad("its identity does not match its tokens (a corrupted or edited file)")
        return v
    # llama2.c's format
    if len(data) < 4 or struct.unpack_from("<i", data)[0] < 0:
        raise bad("not a tokenizer file (neither storyllama's magic nor llama2.c's max_token_length)")
    pos, pieces, scores = 4, [], []
    while pos < len(data):
        if pos + 8 > len(data):
            raise bad(f"truncated in token {len(pieces)}")
        s, k = struct.unpack_from("<fi", data, pos)
        if not 0 <= k <= len(data) - pos - 8:
            raise bad(f"token {len(pieces)} has length {k}, past the end of the file")
        pieces.append(data[pos + 8:pos + 8 + k])
        scores.append(s)
        pos += 8 + k
    n = len(pieces)
    types = [BYTE if byte_value(p) >= 0 else UNKNOWN if i == 0 else CONTROL if i <= 2 else NORMAL
             for i, p in enumerate(pieces)]
    # remove_extra_whitespaces is not stored: a vocabulary trained with it has no piece of 2+ spaces only
    collapse = not any(len(p) >= 2 and p.strip(b" ") == b"" for p, t in zip(pieces, types) if t == NORMAL)
    flags = ADD_BOS | COLLAPSE * collapse | BYTE_FALLBACK * (BYTE in types)
    v = Vocab(pieces, scores, types, [False] * n, 1 if n > 1 else -1, 2 if n > 2 else -1, 0, -1, PREFIX_TEXT, flags,
              checkable=False)
    return v


def check(v, path):
    """ValueError unless v is a vocabulary run.c can use (the checks run.c makes too)."""
    n = len(v)
    for r, (a, b, c) in enumerate(v.merges):
        if not (0 <= a < n and 0 <= b < n and 0 <= c < n) or v.pieces[a] + v.pieces[b] != v.pieces[c]:
            raise ValueError(f"{path}: merge {r} ({a}, {b} -> {c}) does not join two tokens into a third")
    if v.flags & BYTE_LEVEL and v.flags & (BYTE_FALLBACK | COLLAPSE):
        raise ValueError(f"{path}: a byte-level vocabulary has no byte fallback or whitespace collapsing")
    starts = [c & 0xFFFFFF for c in v.classes]
    if bool(v.flags & BYTE_LEVEL) != bool(v.classes) or starts[:1] not in ([], [0]):
        raise ValueError(f"{path}: byte-level vocabularies (only) need the character classes, from code point 0")
    if any(c >> 24 > SPLIT_NUMBER for c in v.classes) or starts != sorted(set(starts)) or starts[-1:] > [0x10FFFF]:
        raise ValueError(f"{path}: character classes out of order or out of range")


def write_bin(v, path, legacy=False):
    """Write v as a run.c tokenizer file (atomically): ours, or llama2.c's when legacy."""
    if legacy:
        if v.flags & BYTE_LEVEL:
            raise ValueError(f"{path}: llama2.c's tokenizer format cannot hold a byte-level vocabulary")
        pieces = [b"\n<s>\n" if i == v.bos else b"\n</s>\n" if i == v.eos else p for i, p in enumerate(v.pieces)]
        out = [struct.pack("<i", max(len(p) for p in pieces))]
        out += [struct.pack("<fi", s, len(p)) + p for p, s in zip(pieces, v.scores)]
    else:
        head = struct.pack("<I8iBB", MAGIC, VERSION, len(v), v.bos, v.eos, v.unk, v.end, len(v.merges),
                           len(v.classes), v.prefix, v.flags)
        out = [head.ljust(64, b"\0") + (identity(v) or bytes(32)) + bytes(32)]  # zeros: unknown
        out += [struct.pack("<BBfi", t, m, s, len(p)) + p for p, s, t, m in zip(v.pieces, v.scores, v.types, v.in_text)]
        out += [struct.pack("<3i", *m) for m in v.merges]
        out.append(struct.pack(f"<{len(v.classes)}I", *v.classes))
    atomic_write(path, b"".join(out))  # a crash never leaves a half-written tokenizer next to a model
    return Path(path)


@functools.lru_cache(maxsize=1)
def split_classes():
    """GPT-2's split classes of every code point, from this Python's Unicode database, as Vocab.classes."""
    out, last = [], None
    for cp in range(0x110000):
        cat = unicodedata.category(chr(cp))[0]
        c = SPLIT_LETTER if cat == "L" else SPLIT_NUMBER if cat == "N" else SPLIT_OTHER
        if c != last:
            out.append(cp | c << 24)
            last = c
    return tuple(out)


# -----------------------------------------------------------------------------
# the encoder (run.c's encode() does exactly these steps)

def _tables(v):
    """Lookups an encoder needs, built once per Vocab."""
    t = getattr(v, "_tables", None)
    if t is None:
        normal = {}
        for i, (p, ty) in enumerate(zip(v.pieces, v.types)):
            if ty == NORMAL and p:
                normal.setdefault(p, i)  # the first of duplicate pieces wins
        byte_id = [-1] * 256
        for i, (p, ty) in enumerate(zip(v.pieces, v.types)):
            b = byte_value(p) if ty == BYTE else -1
            if b >= 0 and byte_id[b] < 0:
                byte_id[b] = i
        specials = {}
        for i, (p, m) in enumerate(zip(v.pieces, v.in_text)):
            if m and p:
                specials.setdefault(p, i)
        pattern = re.compile(b"|".join(re.escape(p) for p in sorted(specials, key=len, reverse=True))) if specials else None
        merges = {}
        for rank, (a, b, c) in enumerate(v.merges):
            merges.setdefault((a, b), (rank, c))
        split = (_gpt2_split(v.classes), _gpt2_split(v.classes, 128)) if v.flags & BYTE_LEVEL else None
        t = v._tables = (normal, byte_id, specials, pattern, merges, split, {})  # {}: the word cache
    return t


def _squeeze(v, text):
    """sentencepiece's whole-text normalisation: U+2581 is a space; with COLLAPSE, leading spaces go,
    runs of spaces become one and trailing spaces go (a literal U+2581 is a space to the pieces, but not
    to the collapsing); PREFIX_TEXT puts a dummy space in front of any non-empty text."""
    collapse = bool(v.flags & COLLAPSE)
    if collapse:
        text = text.lstrip(" ")
    if not text:
        return ""
    out, prev_space = [" "] if v.prefix == PREFIX_TEXT else [], collapse
    for ch in text:
        if ch == " ":
            if not prev_space:
                out.append(" ")
            prev_space = collapse
        else:
            out.append(" " if ch == "\u2581" else ch)
            prev_space = False
    s = "".join(out)
    return s.rstrip(" ") if collapse else s


def _gpt2_split(classes, limit=0x110000):
    """GPT-2's pre-tokenizer regex 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    for Python's re, which has no \\p{..}: letters and numbers are the ranges of the vocabulary's class
    table (whitespace taken out: it wins), \\s is Unicode White_Space (the \\s of the Oniguruma engine
    Hugging Face splits with; Python's own \\s differs). run.c's gpt2_word walks the same rule by hand.
    With limit, only the code points below it: the same words for text of those alone (limit=128: ASCII,
    most stories), from a regex several times faster than the one with every range."""
    def ranges(cls):
        out = []
        for k, c in enumerate(classes):
            lo = c & 0xFFFFFF
            hi = min((classes[k + 1] & 0xFFFFFF) - 1 if k + 1 < len(classes) else 0x10FFFF, limit - 1)
            if c >> 24 != cls:
                continue
            for w in sorted(x for x in WHITESPACE if lo <= x <= hi) + [hi + 1]:
                if lo < w:
                    out.append(f"\\U{lo:08x}-\\U{w - 1:08x}")
                lo = w + 1
        return "".join(out)

    ws = "".join(f"\\U{c:08x}" for c in sorted(WHITESPACE) if c < limit)
    letters, numbers = ranges(SPLIT_LETTER), ranges(SPLIT_NUMBER)
    runs = [f" ?[{x}]+" for x in (letters, numbers) if x]  # a table without letters (or numbers) has no such runs
    return re.compile("|".join(["'(?:s|t|re|ve|m|ll|d)", *runs, f" ?[^{ws}{letters}{numbers}]+", f"[{ws}]+(?![^{ws}])",
                                f"[{ws}]+"]))


def _bpe(v, word, ids):
    """Append the ids of one word (bytes): start from characters (bytes if byte-level), merge the best
    pair again and again (highest-scoring union, or lowest-ranked merge; leftmost on ties)."""
    normal, byte_id, _, _, merges, _, _ = _tables(v)
    if v.flags & IGNORE_MERGES and v.merges and word in normal:
        ids.append(normal[word])
        return
    # symbols: [start, length, id]; in rank mode a character the vocabulary lacks becomes its bytes
    # (byte fallback), else <unk> (fused with a neighbouring <unk> under FUSE_UNK), else nothing
    sym, i, n = [], 0, len(word)
    while i < n:
        k = 1 if v.flags & BYTE_LEVEL else _utf8_len(word, i)
        ch = word[i:i + k]
        if not v.merges:
            sym.append([i, k, -1])
        elif ch in normal:
            sym.append([i, k, normal[ch]])
        elif v.flags & BYTE_FALLBACK and all(byte_id[b] >= 0 for b in ch):
            sym.extend([i + j, 1, byte_id[b]] for j, b in enumerate(ch))
        elif v.unk >= 0:
            if v.flags & FUSE_UNK and sym and sym[-1][2] == v.unk and sym[-1][0] + sym[-1][1] == i:
                sym[-1][1] += k
            else:
                sym.append([i, k, v.unk])
        i += k
    nxt = list(range(1, len(sym))) + [-1]
    prev = list(range(-1, len(sym) - 1))
    heap = []

    def push(left):
        if left < 0 or nxt[left] < 0:
            return
        right = nxt[left]
        a, b = sym[left], sym[right]
        if v.merges:
            m = merges.get((a[2], b[2]))
            if m is not None:
                heapq.heappush(heap, (m[0], left, right, a[1] + b[1], m[1]))
        else:
            c = normal.get(word[a[0]:b[0] + b[1]])
            if c is not None:
                heapq.heappush(heap, (-v.scores[c], left, right, a[1] + b[1], c))

    for s in range(len(sym) - 1):
        push(s)
    while heap:
        _, left, right, length, c = heapq.heappop(heap)
        a, b = sym[left], sym[right]
        if a[1] == 0 or b[1] == 0 or nxt[left] != right or a[1] + b[1] != length:
            continue  # stale: one side was merged away since this pair was queued
        a[1], a[2], b[1] = length, c, 0
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        push(prev[left])
        push(left)
    s = 0 if sym else -1
    while s >= 0:
        start, length, c = sym[s]
        if v.merges:
            ids.append(c)
        elif word[start:start + length] in normal:
            ids.append(normal[word[start:start + length]])
        elif v.flags & BYTE_FALLBACK and all(byte_id[b] >= 0 for b in word[start:start + length]):
            ids.extend(byte_id[b] for b in word[start:start + length])
        elif v.unk >= 0:
            ids.append(v.unk)
        s = nxt[s]


def _utf8_len(b, i):
    """Length of the well-formed UTF-8 character at b[i], or 1 for a stray byte (as run.c's utf8_len)."""
    x = b[i]
    k = 1 if x < 0x80 else 2 if x >> 5 == 6 else 3 if x >> 4 == 14 else 4 if x >> 3 == 30 else 1
    if i + k > len(b) or any(c & 0xC0 != 0x80 for c in b[i + 1:i + k]):
        return 1
    return k


def encode(v, text):
    """Token ids of text (no BOS): whole-text normalisation, special tokens cut out (leftmost, longest
    first), the dummy prefix per segment, the pre-tokenizer's words, then BPE on each word (or the ids
    the word cache remembers for it)."""
    _, _, specials, pattern, _, split, cache = _tables(v)
    if not v.flags & BYTE_LEVEL:
        text = _squeeze(v, text)
    data, ids, pos = text.encode("utf-8"), [], 0
    cuts = [(m.start(), m.end()) for m in pattern.finditer(data)] if pattern else []
    cached = split is not None or v.flags & SPLIT_SPACES  # words, not whole texts: they repeat
    for start, end in cuts + [(len(data), len(data))]:
        seg = data[pos:start].decode("utf-8")
        if v.prefix in (PREFIX_FIRST, PREFIX_EVERY) and seg and seg[0] != " " and (pos == 0 or v.prefix == PREFIX_EVERY):
            seg = " " + seg
        elif v.prefix == PREFIX_ALWAYS and seg:
            seg = " " + seg
        if split is not None:
            words = split[seg.isascii()].findall(seg)
        elif v.flags & SPLIT_SPACES:
            words = re.findall(r" ?[^ ]+| ", seg)  # a word at every space (HF: MergedWithNext)
        else:
            words = [seg] if seg else []
        for w in words:
            got = cache.get(w)
            if got is None:
                got = []
                _bpe(v, w.encode("utf-8"), got)
                if cached and len(w) <= CACHED_CHARS:
                    if len(cache) >= CACHED_WORDS:
                        cache.clear()  # bounded memory; on stories the common words come back at once
                    cache[w] = got
            ids += got
        if end > start:
            ids.append(specials[data[start:end]])
        pos = end
    return ids


def decode(v, ids):
    """Text of ids: control tokens are dropped, <0xHH> pieces become their byte, and the dummy prefix's
    space comes off the first piece. A byte-typed token not spelled <0xHH> (a GGUF may say so) is its
    text, as run.c prints it."""
    out, first = bytearray(), True
    for i in ids:
        t = v.types[i]
        if t == CONTROL:
            continue
        b = byte_value(v.pieces[i]) if t == BYTE else -1
        p = bytes([b]) if b >= 0 else v.pieces[i]
        if first and v.prefix and not v.flags & BYTE_LEVEL and b < 0 and p.startswith(b" "):
            p = p[1:]
        out += p
        first = False
    return out.decode("utf-8", errors="replace")


# -----------------------------------------------------------------------------
# tokens as other formats spell them (tokenizer.json, GGUF)

def vocabulary(v):
    """A Vocab as plain values, for writers of other formats (GGUF):
    model "llama" (sentencepiece-style BPE, pieces with U+2581) or "gpt2" (byte-level BPE, pieces in
    GPT-2's byte-to-unicode alphabet); tokens (str), scores, types (1 normal, 2 unknown, 3 control,
    4 user-defined, 5 unused, 6 byte: GGUF's numbering), merges ("left right" strings in rank order;
    gpt2 needs them, llama merges by scores), bos_id, eos_id, unk_id, end_id (-1: none), add_bos,
    add_space_prefix, special_ids (every control and user-defined token), identity (hex)."""
    tokens = [spelling(v, i) for i in range(len(v))]
    return {"model": "gpt2" if v.flags & BYTE_LEVEL else "llama", "tokens": tokens, "scores": list(v.scores),
            "types": list(v.types), "merges": [f"{tokens[a]} {tokens[b]}" for a, b, _ in v.merges],
            "bos_id": v.bos, "eos_id": v.eos, "unk_id": v.unk, "end_id": v.end, "add_bos": bool(v.flags & ADD_BOS),
            "add_space_prefix": v.prefix != PREFIX_NONE,
            "special_ids": [i for i, t in enumerate(v.types) if t in (CONTROL, USER_DEFINED)],
            "identity": (identity(v) or b"").hex()}


@functools.lru_cache(maxsize=1)
def byte_alphabet():
    """GPT-2's printable stand-in for each byte (bytes_to_unicode): printable Latin-1 stays, the rest
    moves to U+0100 upwards in byte order."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(0x100, 0x200))
    return tuple(chr(b) if b in keep else chr(next(extra)) for b in range(256))


def spelling(v, i):
    """Token i as its vocabulary spells it: U+2581 for spaces, or GPT-2's alphabet for byte-level tokens."""
    p, t = v.pieces[i], v.types[i]
    if t != NORMAL:
        return p.decode("utf-8", errors="replace")
    if v.flags & BYTE_LEVEL:
        return "".join(byte_alphabet()[b] for b in p)
    return p.decode("utf-8", errors="replace").replace(" ", "\u2581")

"""gguf_meta.py: GGUF, llama.cpp's model file, up to its tensor data: the header, metadata and tensor
infos read from a hostile file (read_gguf) and written (header), and a vocabulary as its tokenizer.ggml.*
metadata both ways (tokenizer_kvs, read_vocab: a vocab.Vocab that encodes as llama.cpp does).
gguf_file.py puts a model's tensors in and takes them out; tokenizer.py reads a GGUF's tokenizer here.

The format (ggml's docs/gguf.md), little-endian:
    "GGUF" | u32 version 3 | u64 n_tensors | u64 n_kv
    n_kv x (string key, u32 value type, value)                       string: u64 length, UTF-8 bytes
    n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 tensor type, u64 offset)
    zero padding to general.alignment (default 32), then the data: each tensor at its offset from
    there, a multiple of the alignment, one after the other in the order of the infos
Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array (u32 element
type, u64 count, the elements), 10 u64, 11 i64, 12 f64. ne is in ggml's order, ne[0] the row length:
a PyTorch (out, in) matrix has ne = [in, out]. Tensor types here: 0 f32, 1 f16, 8 q8_0 (blocks of 32
values along a row, each an f16 scale d and 32 int8 q; the value is q * d).

Reading assumes a hostile file: every count and length is bounded by the bytes left before it is
used, and every problem is one ValueError line naming the file.
"""
import mmap
import os
import struct

import numpy as np

from fileio import MAX_FIELD, printable, quoted, regular_file
import vocab as V

MAGIC = b"GGUF"
VERSION = 3
ALIGN = 32  # general.alignment when the file does not say
STRING, ARRAY, U32, I32, F32, BOOL = 8, 9, 4, 5, 6, 7
# the fixed-size value types as struct (and numpy) formats; 8 string and 9 array are read by hand
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
INTS = (0, 1, 2, 3, 4, 5, 10, 11)
F32_T, F16_T, Q8_0_T = 0, 1, 8  # the tensor types read and written here
TYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 9: "q8_1", 10: "q2_K",
              11: "q3_K", 12: "q4_K", 13: "q5_K", 14: "q6_K", 15: "q8_K", 16: "iq2_xxs", 17: "iq2_xs", 18: "iq3_xxs",
              19: "iq1_s", 20: "iq4_nl", 21: "iq3_s", 22: "iq2_s", 23: "iq4_xs", 24: "i8", 25: "i16", 26: "i32",
              27: "i64", 28: "f64", 29: "iq1_m", 30: "bf16", 34: "tq1_0", 35: "tq2_0", 39: "mxfp4"}
QK = 32  # values per q8_0 block


def nbytes(ttype, ne):
    n = int(np.prod(ne, dtype=object))
    return {F32_T: 4 * n, F16_T: 2 * n, Q8_0_T: n // QK * (2 + QK)}[ttype]


def pad(n, align=ALIGN):
    return -(-n // align) * align


# -----------------------------------------------------------------------------
# writing

def _str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, value, elem=None):
    out = _str(key) + struct.pack("<I", vtype)
    if vtype == STRING:
        return out + _str(value)
    if vtype != ARRAY:
        return out + np.array(value, SCALARS[vtype]).tobytes()
    out += struct.pack("<IQ", elem, len(value))
    return out + (b"".join(map(_str, value)) if elem == STRING else np.asarray(value, SCALARS[elem]).tobytes())


def header(meta, tensors):
    """The bytes before the tensor data: metadata meta [(key, value type, value[, element type])] and
    the infos of tensors [(name, tensor type, ne)], each placed at the next multiple of ALIGN after the
    one before, padded to ALIGN (where the data starts)."""
    infos, offset = [], 0
    for name, ttype, ne in tensors:
        infos.append(_str(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype, offset))
        offset += pad(nbytes(ttype, ne))
    head = MAGIC + struct.pack("<IQQ", VERSION, len(tensors), len(meta)) + b"".join(_kv(*m) for m in meta)
    head += b"".join(infos)
    return head + bytes(pad(len(head)) - len(head))


# -----------------------------------------------------------------------------
# reading

def _say(what):
    """A message's label: what, or what() when it is a function (see _Reader)."""
    return what() if callable(what) else what


class _Reader:
    """A cursor over a file's bytes; every read is checked against the end first. Labels for messages
    ("what") are a string or a function making one: a function is called only when an error is raised,
    so that no label is built per element of an array (a key as long as the file, times every element,
    was quadratic)."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def bad(self, what):
        return ValueError(f"{self.path}: {_say(what)}")

    def need(self, n, what):
        if n > len(self.buf) - self.pos:
            raise self.bad(lambda: f"truncated: {_say(what)} at byte {self.pos} needs {n} "
                           f"bytes, the file has {len(self.buf) - self.pos} left")

    def unpack(self, fmt, what):
        self.need(struct.calcsize(fmt), what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return out if len(out) > 1 else out[0]

    def string(self, what):
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad(lambda: f"{_say(what)} is not UTF-8") from None

    def array_head(self, what):
        """(element type, count, bytes an element takes at least) of an array, the count checked against
        the bytes left and MAX_FIELD."""
        elem, n = self.unpack("<IQ", what)
        if elem == ARRAY:
            raise self.bad(lambda: f"{_say(what)} is an array of arrays (not supported)")
        if elem != STRING and elem not in SCALARS:
            raise self.bad(lambda: f"{_say(what)} is an array of unknown value type {elem}")
        size = 8 if elem == STRING else np.dtype(SCALARS[elem]).itemsize  # a string takes 8 bytes at least
        if n > (len(self.buf) - self.pos) // size:
            raise self.bad(lambda: f"truncated: {_say(what)} claims {n} elements, more than the "
                           f"{len(self.buf) - self.pos} bytes left can hold")
        if n >= MAX_FIELD:  # no reader uses an array this long (a vocabulary is below MAX_FIELD tokens)
            raise self.bad(lambda: f"{_say(what)} claims {n} elements (at most {MAX_FIELD - 1})")
        return elem, n, size

    def value(self, vtype, what):
        """(value, element type): a str, a number, a bool, a list of str or a numpy array."""
        if vtype == STRING:
            return self.string(what), None
        if vtype == ARRAY:
            elem, n, size = self.array_head(what)
            if elem == STRING:
                return [self.string(lambda: f"{_say(what)}[{i}]") for i in range(n)], elem
            arr = np.frombuffer(self.buf, SCALARS[elem], n, self.pos).copy()
            self.pos += n * size
            if elem == BOOL and arr.size and arr.max() > 1:
                raise self.bad(lambda: f"{_say(what)} holds a bool that is neither 0 nor 1")
            return arr, elem
        if vtype not in SCALARS:
            raise self.bad(lambda: f"{_say(what)} has unknown value type {vtype}")
        v = self.unpack(SCALARS[vtype], what)
        if vtype == BOOL:
            if v > 1:
                raise self.bad(lambda: f"{_say(what)} is a bool of value {v}, not 0 or 1")
            v = bool(v)
        return v, None

    def skip(self, vtype, what):
        """Step over a value nobody asked for, building nothing: a string or a fixed-size array by its
        length, an array of strings by walking the lengths alone (one 8-byte read each), so the time is
        linear in the bytes and no object is made per element."""
        if vtype == STRING:
            n = self.unpack("<Q", what)
            self.need(n, what)
            self.pos += n
        elif vtype == ARRAY:
            elem, n, size = self.array_head(what)
            if elem != STRING:
                self.pos += n * size
                return
            buf, pos, end, length = self.buf, self.pos, len(self.buf), struct.Struct("<Q").unpack_from
            for i in range(n):
                if pos + 8 > end:
                    break
                pos += 8 + length(buf, pos)[0]
                if pos > end:
                    break
            else:
                self.pos = pos
                return
            raise self.bad(lambda: f"truncated: {_say(what)}[{i}] runs past the end of the file ({end} bytes)")
        else:
            self.value(vtype, what)


def read_gguf(path, keys=()):
    """(metadata {key: (value type, value, element type)}, tensors {name: (type, ne, file offset)}, buffer):
    the header, metadata and tensor infos of a GGUF, each checked against the file; the buffer is the file,
    memory-mapped. Only the metadata keys named in keys (and general.alignment) are read into values: the
    others are stepped over unbuilt (_Reader.skip), so a huge array under a key nobody reads costs a walk
    over its bytes, not memory. ValueError in one line naming the file when anything is wrong."""
    path = os.fspath(path)
    size = regular_file(path)
    if size < 24:
        raise ValueError(f"{path}: truncated: {size} bytes, a GGUF header needs 24")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    r = _Reader(buf, path)
    if buf[:4] != MAGIC:
        raise r.bad(f"bad magic {bytes(buf[:4])!r}: not a GGUF file (expected b'GGUF')")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    r.pos = 24
    if version not in (2, 3):  # 2 and 3 differ only in that 3 may be big-endian, which shows up here
        raise r.bad(f"GGUF version {version} is not supported (2 or 3, little-endian)")
    # a key-value pair takes 13 bytes at least (a 1-byte key, a type, a u8), a tensor info 33 (a 1-byte name, 1 dim)
    if n_kv > (size - 24) // 13 or n_tensors > (size - 24) // 33:
        raise r.bad(f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in a file of {size} bytes")
    keys = set(keys) | {"general.alignment"}
    meta, seen = {}, set()
    for i in range(n_kv):
        key = r.string(lambda: f"metadata key {i}")
        if not key or key in seen:
            raise r.bad(f"metadata key {i} is {'empty' if not key else f'{quoted(key)} again'}")
        seen.add(key)
        vtype = r.unpack("<I", lambda: f"the type of {printable(key)}")
        if key in keys:
            meta[key] = (vtype, *r.value(vtype, lambda: printable(key)))
        else:
            r.skip(vtype, lambda: printable(key))
    align = meta.get("general.alignment", (U32, ALIGN, None))
    if align[0] != U32 or not 0 < align[1] <= 1 << 16 or align[1] & (align[1] - 1):
        raise r.bad(f"general.alignment must be a u32 power of two, got {align[1]!r}")
    align = align[1]
    infos = []
    for i in range(n_tensors):
        name = r.string(lambda: f"tensor name {i}")
        label = lambda: f"tensor {printable(name)}"  # noqa: E731
        n_dims = r.unpack("<I", label)
        if not 1 <= n_dims <= 4:
            raise r.bad(f"{label()} has {n_dims} dimensions (1 to 4)")
        ne = r.unpack(f"<{n_dims}Q", label)
        ne = (ne,) if n_dims == 1 else tuple(ne)
        ttype, offset = r.unpack("<IQ", label)
        infos.append((name, ne, ttype, offset))
    data = pad(r.pos, align)
    tensors = {}
    for name, ne, ttype, offset in infos:
        if name in tensors:
            raise r.bad(f"tensor {printable(name)} appears twice")
        if ttype not in TYPE_NAMES:
            raise r.bad(f"tensor {printable(name)} has unknown type {ttype}")
        if any(n < 1 for n in ne) or offset % align:
            raise r.bad(f"tensor {printable(name)} has shape {list(ne)} or offset {offset} out of range (offsets are "
                        f"multiples of {align})")
        if ttype in (F32_T, F16_T, Q8_0_T):
            if ttype == Q8_0_T and ne[0] % QK:
                raise r.bad(f"tensor {printable(name)} is q8_0 with rows of {ne[0]} values, not a multiple of {QK}")
            end = data + offset + nbytes(ttype, ne)
            if end > size:
                raise r.bad(f"tensor {printable(name)} ({TYPE_NAMES[ttype]} {list(ne)}) ends at byte {end}, past the "
                            f"end of the file ({size} bytes)")
        tensors[name] = (ttype, ne, data + offset)
    return meta, tensors, buf


def meta_value(meta, path, key, kind, default=None):
    """The value of key as kind ("int", "float", "str", "bool"), default when absent; ValueError when it has
    another type or, for ints, lies outside 0 .. MAX_FIELD."""
    if key not in meta:
        if default is None:
            raise ValueError(f"{path}: metadata key {key} missing")
        return default
    vtype, value, _ = meta[key]
    ok = {"int": vtype in INTS, "float": vtype in (6, 12), "str": vtype == STRING, "bool": vtype == BOOL}[kind]
    if not ok:
        raise ValueError(f"{path}: metadata key {key} is {'an array' if vtype == ARRAY else f'of type {vtype}'}, "
                         f"expected a single {kind}")
    if kind == "int" and not 0 <= value < MAX_FIELD:
        raise ValueError(f"{path}: {key}={value} out of range")
    if kind == "float" and not np.isfinite(value):
        raise ValueError(f"{path}: {key}={value} is not finite")
    if kind == "float":  # an f32 as its shortest decimal (1e-05, not 9.99999974738e-06): it re-exports the same
        return float(str(np.float32(value))) if vtype == F32 else float(value)
    return int(value) if kind == "int" else value


# -----------------------------------------------------------------------------
# the vocabulary in the metadata, both ways

def tokenizer_kvs(v):
    """The tokenizer's metadata, and what llama.cpp will do differently from the vocabulary's own rules."""
    voc = V.vocabulary(v)
    llama = voc["model"] == "llama"
    seen = {}
    for i, s in enumerate(voc["tokens"]):
        if s and seen.setdefault(s, i) != i:  # llama.cpp maps text to id one to one (empty ones it renames)
            raise ValueError(f"tokens {seen[s]} and {i} are both {s!r}: llama.cpp needs every token's text to differ")
    kv = [("tokenizer.ggml.model", STRING, voc["model"])]
    if not llama:
        kv.append(("tokenizer.ggml.pre", STRING, "gpt-2"))  # llama.cpp's name for GPT-2's split
    kv += [("tokenizer.ggml.tokens", ARRAY, voc["tokens"], STRING), ("tokenizer.ggml.scores", ARRAY, voc["scores"], F32),
           ("tokenizer.ggml.token_type", ARRAY, voc["types"], I32)]
    if not llama:
        kv.append(("tokenizer.ggml.merges", ARRAY, voc["merges"], STRING))
    # llama.cpp ends generation at EOS and at the eot token; run.c and sample.py end a story at BOS, EOS and
    # the end-of-story token: eot is that token, or BOS (llama2.c's models end each story with BOS)
    eot = next((i for i in (v.end, v.bos) if i >= 0 and i != v.eos), -1)
    for key, i in (("bos", v.bos), ("eos", v.eos), ("unknown", v.unk), ("eot", eot)):
        if i >= 0:
            kv.append((f"tokenizer.ggml.{key}_token_id", U32, i))
    kv += [("tokenizer.ggml.add_bos_token", BOOL, voc["add_bos"]), ("tokenizer.ggml.add_eos_token", BOOL, False)]
    if llama:
        # llama.cpp's llama tokenizer ignores remove_extra_whitespaces (its t5 one reads it): written for readers
        # of the file, ours included, to know what the vocabulary does
        kv += [("tokenizer.ggml.add_space_prefix", BOOL, voc["add_space_prefix"]),
               ("tokenizer.ggml.remove_extra_whitespaces", BOOL, bool(v.flags & V.COLLAPSE))]
    differs = []
    if v.flags & V.COLLAPSE:
        differs.append("it keeps runs of spaces that this tokenizer collapses")
    if llama and (v.prefix in (V.PREFIX_FIRST, V.PREFIX_EVERY) or v.flags & V.SPLIT_SPACES):
        differs.append("it puts the dummy space only at the start and after special tokens")
    if llama and v.merges:
        differs.append("it merges by score where this tokenizer has ranked merges")
    if not llama and v.prefix != V.PREFIX_NONE:
        differs.append("it adds no space in front of the text")
    if v.flags & (V.FUSE_UNK | V.IGNORE_MERGES):
        differs.append("it neither fuses unknown characters nor ignores merges")
    notes = [f"llama.cpp encodes some text differently: {'; '.join(differs)}"] if differs else []
    return kv, notes


# GGUF's tokenizer models: llama (sentencepiece-style BPE merging by score) and gpt2 (byte-level BPE,
# ranked merges); for gpt2 only GPT-2's own split ("gpt-2" in llama.cpp) is what our encoder does
GPT2_SPLIT = "gpt-2"
VOCAB_KEYS = [f"tokenizer.ggml.{k}" for k in ("model", "pre", "tokens", "token_type", "scores", "merges", "bos_token_id",
                                              "eos_token_id", "unknown_token_id", "add_bos_token", "add_space_prefix",
                                              "remove_extra_whitespaces")]  # what read_vocab reads


def read_vocab(path):
    """The tokenizer of a GGUF as a vocab.Vocab that encodes as llama.cpp does (runs of spaces
    collapse where tokenizer.ggml.remove_extra_whitespaces says so, which llama.cpp's llama tokenizer
    ignores). Absent keys take llama.cpp's defaults (llama: BOS 1, EOS 2, unknown 0, add BOS, add a space
    prefix; gpt2: none of these)."""
    meta = read_gguf(path, VOCAB_KEYS)[0]
    model = meta_value(meta, path, "tokenizer.ggml.model", "str")
    if model not in ("llama", "gpt2"):
        raise ValueError(f"{path}: tokenizer model {quoted(model)} is not supported (llama: sentencepiece-style BPE, "
                         "gpt2: byte-level BPE)")
    llama = model == "llama"
    pre = meta_value(meta, path, "tokenizer.ggml.pre", "str", "default")  # llama.cpp's default when absent
    if not llama and pre != GPT2_SPLIT:
        raise ValueError(f"{path}: tokenizer.ggml.pre {quoted(pre)} is not supported (byte-level BPE with GPT-2's split "
                         f"only: {GPT2_SPLIT!r})")
    tokens, pieces, types, scores = _token_table(meta, path, llama)
    n = len(tokens)
    merges = [] if llama else _merges(meta, path, tokens)

    def special(key, default):
        i = meta_value(meta, path, f"tokenizer.ggml.{key}_token_id", "int", default if llama and default < n else -1)
        if i >= n:
            raise ValueError(f"{path}: tokenizer.ggml.{key}_token_id={i} is outside the {n} tokens")
        return i

    bos, eos, unk = special("bos", 1), special("eos", 2), special("unknown", 0)
    in_text = [t == V.USER_DEFINED if llama else t in (V.CONTROL, V.USER_DEFINED, V.UNKNOWN) for t in types]
    flags = V.ADD_BOS if meta_value(meta, path, "tokenizer.ggml.add_bos_token", "bool", llama) else 0
    if llama:
        flags |= V.BYTE_FALLBACK * (V.BYTE in types)
        flags |= V.COLLAPSE * meta_value(meta, path, "tokenizer.ggml.remove_extra_whitespaces", "bool", False)
        # llama.cpp puts the space before the text and after every special token: before the whole text
        # (sentencepiece's rule) is the same thing when no token is cut out of the text
        prefix = (V.PREFIX_ALWAYS if any(in_text) else V.PREFIX_TEXT) if meta_value(
            meta, path, "tokenizer.ggml.add_space_prefix", "bool", True) else V.PREFIX_NONE
    else:
        flags |= V.BYTE_LEVEL
        prefix = V.PREFIX_NONE
    v = V.Vocab(pieces, scores, types, in_text, bos, eos, unk, V.find_end(pieces, types), prefix, flags, merges,
                list(V.split_classes()) if not llama else [])
    V.check(v, path)
    return v


def _array(meta, path, key, elems, required=False):
    """The array value of key (None when absent and not required), its elements of one of the types elems."""
    if key not in meta:
        if required:
            raise ValueError(f"{path}: metadata key {key} missing")
        return None
    vtype, value, elem = meta[key]
    if vtype != ARRAY or elem not in elems:
        raise ValueError(f"{path}: metadata key {key} is not an array of the expected type")
    return value


def _token_table(meta, path, llama):
    """(token strings, pieces, types, scores): the tokens as the metadata spells them (U+2581 for spaces,
    or GPT-2's alphabet for gpt2's normal tokens) and as vocab.Vocab holds them."""
    tokens = _array(meta, path, "tokenizer.ggml.tokens", (STRING,), True)
    n = len(tokens)
    if not 0 < n < MAX_FIELD:
        raise ValueError(f"{path}: {n} tokens")
    types = _array(meta, path, "tokenizer.ggml.token_type", (I32,))
    scores = _array(meta, path, "tokenizer.ggml.scores", (F32, I32))
    for key, a in (("token_type", types), ("scores", scores)):
        if a is not None and len(a) < n:
            raise ValueError(f"{path}: tokenizer.ggml.{key} has {len(a)} entries for {n} tokens")
    types = [V.NORMAL] * n if types is None else [int(t) for t in types[:n]]
    bad = next((i for i, t in enumerate(types) if not V.NORMAL <= t <= V.BYTE), None)
    if bad is not None:
        raise ValueError(f"{path}: token {bad} has type {types[bad]} (expected 1 to 6)")
    scores = [0.0] * n if scores is None else [float(s) for s in scores[:n]]
    alphabet = {c: b for b, c in enumerate(V.byte_alphabet())}
    pieces = []
    for i, (s, t) in enumerate(zip(tokens, types)):
        if llama:
            pieces.append(s.replace("\u2581", " ").encode("utf-8"))
        elif t == V.NORMAL:
            if not all(c in alphabet for c in s):
                raise ValueError(f"{path}: token {i} ({quoted(s)}) is a normal byte-level token not spelled in "
                                 "GPT-2's alphabet")
            pieces.append(bytes(alphabet[c] for c in s))
        else:
            pieces.append(s.encode("utf-8"))
    return tokens, pieces, types, scores


def _merges(meta, path, tokens):
    """gpt2's ranked merges [(left, right, result)] from their "left right" strings."""
    ids = {}
    for i, s in enumerate(tokens):
        ids.setdefault(s, i)
    merges = []
    for r, m in enumerate(_array(meta, path, "tokenizer.ggml.merges", (STRING,), True)):
        cut = m.find(" ", 1)
        a, b = (m[:cut], m[cut + 1:]) if cut > 0 else (m, "")
        if a not in ids or b not in ids or a + b not in ids:
            raise ValueError(f"{path}: merge {r} ({quoted(m)}) names a token the vocabulary lacks")
        merges.append((ids[a], ids[b], ids[a + b]))
    return merges

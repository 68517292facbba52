"""binfile.py: the .bin model file run.c reads, both ways: its header and layout, the weight encodings
(bf16, Q8_0, q6, q4 and GPTQ's q4 rounding), model_export to write one and read_header/load_bin to read one.

.bin versions (every one is read and written; docs/formats.md has the byte layouts):
  v0  llama2.c legacy: 7 x int32 header, fp32 weights in Meta's order plus the RoPE tables
  v1  llama2.c: 256-byte header with magic, fp32 weights in "v1 order" (norms first)
  v2  llama2.c: v1 with Q8_0 weights (int8 in groups with one fp32 scale each)
  v3  ours: v1 plus weight type (fp32, bf16, q8_0, q4 with a q6 classifier, or the older q4 with a
      q8_0 one), rope_theta, norm_eps and the vocabulary's identity; 64-byte aligned arrays

export.py is its command line; hf.py and gguf_file.py take its tensor order for their own shapes.
Reading assumes a hostile file: the header is checked (model.check_args: every reader's bounds; the sizes)
before anything of its size is allocated, and every problem is one ValueError line naming the file.
"""
import os
import struct
import sys

import numpy as np
import torch
from tqdm import tqdm

from fileio import atomic_write, regular_file
from model import ModelArgs, Transformer, build, check_args, f32, ffn_hidden_dim, rope_tables, unwrap

MAGIC = 0x616B3432  # "ak42" in little-endian bytes, llama2.c's magic
HEADER_BYTES = 256  # v1..v3 header size
ALIGN = 64  # v3: every array starts at a multiple of this file offset
# v3 header byte at offset 41. "q4_q8" (3) is the q4 that older exports wrote; "q4" (4) is what --dtype=q4 writes
WEIGHT_TYPES = {"fp32": 0, "bf16": 1, "q8_0": 2, "q4_q8": 3, "q4": 4}
QUANTISED = ("q8_0", "q4_q8", "q4")  # the types stored in groups of group_size with one fp32 scale each
# q4 files keep these in more bits (run.c: classifier_type): the logits lose the most to 4 bits (docs/export.md,
# q4 and GPTQ); 6 bits cost little more than 8 (docs/formats.md, weight type 4)
CLASSIFIER = ("tok_embeddings.weight", "output.weight")
Q4_CLASSIFIER = {"q4_q8": "q8_0", "q4": "q6"}  # q4 weight type -> how it stores CLASSIFIER (its layers: q4)
BYTES_PER_WEIGHT = {"fp32": 4, "bf16": 2, "q8_0": 1, "q6": 3 / 4, "q4": 1 / 2}  # by storage kind, scales apart
LEGACY_THETA, LEGACY_EPS = 10000.0, 1e-5  # what v0/v1/v2 readers (llama2.c's run.c) hard-code


# -----------------------------------------------------------------------------
# file layout shared by the writers and the readers


def tensor_order(h: dict) -> list:
    """[(name, shape)] in file order for header h; norms and RoPE tables are the 1-D/table entries."""
    L, dim, hidden = h["n_layers"], h["dim"], h["hidden_dim"]
    hs = dim // h["n_heads"]
    kv_dim = h["n_kv_heads"] * hs

    def per_layer(name, shape):
        return [(f"layers.{i}.{name}.weight", shape) for i in range(L)]

    att, ffn = per_layer("attention_norm", (dim,)), per_layer("ffn_norm", (dim,))
    wq, wk = per_layer("attention.wq", (dim, dim)), per_layer("attention.wk", (kv_dim, dim))
    wv, wo = per_layer("attention.wv", (kv_dim, dim)), per_layer("attention.wo", (dim, dim))
    w1, w2 = per_layer("feed_forward.w1", (hidden, dim)), per_layer("feed_forward.w2", (dim, hidden))
    w3 = per_layer("feed_forward.w3", (hidden, dim))
    emb, norm = ("tok_embeddings.weight", (h["vocab_size"], dim)), ("norm.weight", (dim,))
    if h["version"] == 0:  # Meta's order, the RoPE tables after the final norm
        rope = [("freq_cis_real", (h["max_seq_len"], hs // 2)), ("freq_cis_imag", (h["max_seq_len"], hs // 2))]
        order = [emb, *att, *wq, *wk, *wv, *wo, *ffn, *w1, *w2, *w3, norm, *rope]
    else:  # "v1 order": every norm first (they stay fp32 when the rest is quantised)
        order = [*att, *ffn, norm, emb, *wq, *wk, *wv, *wo, *w1, *w2, *w3]
    if not h["shared"]:
        order.append(("output.weight", (h["vocab_size"], dim)))
    return order


def layout(h: dict):
    """[(name, shape, kind, data_offset, scales_offset)], total file size. kind: fp32 | bf16 | q8_0 | q6 | q4."""
    version, wtype, gs = h["version"], h["weight_type"], h["group_size"]
    off = 28 if version == 0 else HEADER_BYTES
    align = ALIGN if version == 3 else 1
    entries = []
    for name, shape in tensor_order(h):
        n = int(np.prod(shape))
        kind = "fp32" if (len(shape) == 1 or name.startswith("freq_cis")) else wtype
        if kind in Q4_CLASSIFIER:
            kind = Q4_CLASSIFIER[kind] if name in CLASSIFIER else "q4"
        off = -(-off // align) * align
        data_off, scales_off = off, None
        off += int(n * BYTES_PER_WEIGHT[kind])  # q6 and q4: n is a multiple of group_size, itself of 4 or 2
        if kind in ("q8_0", "q6", "q4"):
            off = -(-off // align) * align
            scales_off = off
            off += 4 * (n // gs)
        entries.append((name, shape, kind, data_off, scales_off))
    return entries, off


def pick_group_size(requested: int, dim: int, hidden_dim: int) -> int:
    """Largest power of two <= requested dividing dim and hidden_dim (every matmul input length).

    llama2.c only checked dim, so its Q8_0 groups straddled rows of w2 when hidden_dim was not a
    multiple (stories260K: hidden_dim 172 = 4*43). A group of 1 would cost more than fp32: refuse.
    """
    if not isinstance(requested, int) or requested < 1:
        raise ValueError(f"group_size must be a positive integer, got {requested!r}")
    gs = 1 << (requested.bit_length() - 1)
    while gs > 1 and (dim % gs or hidden_dim % gs):
        gs //= 2
    if gs < 2:
        raise ValueError(f"no group_size >= 2 divides both dim={dim} and hidden_dim={hidden_dim}: "
                         f"use --dtype=fp32 or bf16")
    return gs


# -----------------------------------------------------------------------------
# weight encodings: Q8_0, q6 and q4 in groups with one fp32 scale each (q4 rounded to nearest, or by GPTQ);
# bf16 is torch's own rounding


def quantize_q80(w: torch.Tensor, group_size: int):
    """Flattened w -> (int8 q, fp32 scales): llama2.c's Q8_0, scale = max|w|/127 per group.

    Requantising a dequantised tensor gives back the same bytes: the group maximum dequantises to
    fl(127*s), and fl(fl(127*s)/127) == s for every s of the form fl(x/127) (checked exhaustively
    over all fp32 mantissas), so load -> export is byte-identical for q8 files too.
    """
    w = w.detach().to("cpu", torch.float32).reshape(-1, group_size)
    s = w.abs().amax(dim=1) / 127.0
    q = torch.round(w / s[:, None])  # llama2.c divides (not multiplies by 1/s): same bytes
    # an all-zero group has scale 0: q = 0, where llama2.c wrote the int8 cast of NaN
    q = torch.where(s[:, None] > 0, q, torch.zeros_like(q)).clamp(-127, 127).to(torch.int8)
    return q.reshape(-1), s


def dequantize_q80(q: torch.Tensor, s: torch.Tensor, shape) -> torch.Tensor:
    """int8 q, fp32 scales -> fp32 tensor of shape: q * s, the product run.c computes."""
    gs = q.numel() // s.numel()
    return (q.float().reshape(-1, gs) * s[:, None]).reshape(shape)


def quantize_q6(w: torch.Tensor, group_size: int):
    """Flattened w -> (uint8 packed, fp32 scales): 6-bit groups, scale = max|w|/31 per group, levels
    round-half-even(w / scale) in -31..31 stored + 32, 4 in 3 bytes: the little-endian 24-bit word
    v0 | v1 << 6 | v2 << 12 | v3 << 18 of 4 consecutive weights (group_size % 4 == 0).

    Requantising a dequantised tensor gives back the same bytes, as for Q8_0: fl(fl(31*s)/31) == s for
    every s of the form fl(x/31) (checked over all fp32 mantissas), and every level comes back.
    """
    w = w.detach().to("cpu", torch.float32).reshape(-1, group_size)
    s = w.abs().amax(dim=1) / 31.0
    q = torch.where(s[:, None] > 0, torch.round(w / s[:, None]), torch.zeros_like(w)).clamp(-31, 31)
    v = (q.to(torch.int32) + 32).reshape(-1, 4)
    word = v[:, 0] | (v[:, 1] << 6) | (v[:, 2] << 12) | (v[:, 3] << 18)
    packed = torch.stack([word & 255, (word >> 8) & 255, word >> 16], dim=1).to(torch.uint8)
    return packed.reshape(-1), s


def q6_levels(packed: torch.Tensor) -> torch.Tensor:
    """Packed 6-bit values -> their int32 levels v - 32, flattened: the int8 matrix run.c's expand_q6 makes."""
    b = packed.to(torch.int32).reshape(-1, 3)
    word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    return (torch.stack([(word >> k) & 63 for k in (0, 6, 12, 18)], dim=1) - 32).reshape(-1)


def dequantize_q6(packed: torch.Tensor, s: torch.Tensor, shape) -> torch.Tensor:
    """Packed 6-bit levels, fp32 scales -> fp32 tensor of shape: (v - 32) * s, what run.c's int8 copy gives."""
    return dequantize_q80(q6_levels(packed), s, shape)


def _q4_levels(w: torch.Tensor, k: float):
    """Groups w (rows) quantised with scale = m / k, m the group's value of largest magnitude (the
    first on ties): (levels -8..7, scales, squared errors)."""
    m = w.gather(1, w.abs().argmax(dim=1, keepdim=True))
    s = torch.where(m != 0, m / k, torch.zeros_like(m))  # an all-zero group: scale +0, every level 0
    q = torch.where(s != 0, torch.round(w / s), torch.zeros_like(w)).clamp(-8, 7)
    return q, s, ((q * s - w) ** 2).sum(1, keepdim=True)


def _q4_pick(w: torch.Tensor):
    """Per group the better of two scales: m / -8 (m on level -8) or m / 7 (m on level 7, the other
    side reaching 8 steps), whichever has the smaller squared error; -8 on ties."""
    q, s, err = _q4_levels(w, -8.0)
    q7, s7, err7 = _q4_levels(w, 7.0)
    take = err7 < err
    return torch.where(take, q7, q), torch.where(take, s7, s)


def quantize_q4(w: torch.Tensor, group_size: int):
    """Flattened w -> (uint8 packed nibbles, fp32 scales): 4-bit groups with one scale each.

    Levels -8..7 times the group's scale (_q4_pick). Byte j of a group holds level + 8 of weight j in
    its low nibble and of weight j + group_size/2 in its high one. Requantising dequantised weights
    gives back the same bytes: the groups are stored in the form that _q4_pick finds for their own
    dequantised values (the same values: at m / 7 the largest magnitude can sit on level 7 and -7,
    and which one is m decides the scale's sign), and where that form has other values, at m / -8,
    whose extreme is exactly -8 * scale, so that it picks itself back with zero error.
    """
    w = w.detach().to("cpu", torch.float32).reshape(-1, group_size)
    q, s = _q4_pick(w)
    q2, s2 = _q4_pick(q * s)
    q8, s8, _ = _q4_levels(w, -8.0)
    same = (q2 * s2 == q * s).all(1, keepdim=True)
    q, s = torch.where(same, q2, q8), torch.where(same, s2, s8)
    q = q.to(torch.int32) + 8
    half = group_size // 2
    packed = (q[:, :half] | (q[:, half:] << 4)).to(torch.uint8)
    return packed.reshape(-1), s.reshape(-1)


def dequantize_q4(packed: torch.Tensor, s: torch.Tensor, shape) -> torch.Tensor:
    """Packed nibbles, fp32 scales -> fp32 tensor of shape: (q - 8) * s, the product run.c computes."""
    b = packed.to(torch.int32).reshape(s.numel(), -1)
    q = torch.cat([b & 15, b >> 4], dim=1) - 8
    return (q.float() * s[:, None]).reshape(shape)


def gptq_q4(w: torch.Tensor, h: torch.Tensor, group_size: int, damp: float = 0.01) -> torch.Tensor:
    """w (rows, cols) -> its q4 values (dequantised), chosen by GPTQ (Frantar et al., 2022) instead of
    rounding each weight to nearest: the columns are rounded in order, and each column's rounding error
    is pushed onto the columns not yet rounded, in the proportions that keep X @ w.T closest to its old
    value, where h = X^T X of the layer's inputs X. A group's scale is _q4_pick's for its weights as
    they stand when its first column comes up. Blocks of whole groups defer the updates of the later
    columns to one matrix product per block."""
    w, h = w.detach().to("cpu", torch.float64).clone(), h.to("cpu", torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0  # an input that was always 0: its weights never mattered
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(cols, dtype=h.dtype)  # against a singular h
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # h^-1 = u^T u
    out, block = torch.empty_like(w), group_size * max(1, 128 // group_size)
    for c0 in range(0, cols, block):
        c1 = min(c0 + block, cols)
        err = torch.empty(rows, c1 - c0, dtype=w.dtype)
        for c in range(c0, c1):
            if c % group_size == 0:
                s = _q4_pick(w[:, c:c + group_size].float())[1].double()
            q = torch.where(s != 0, torch.round(w[:, c:c + 1] / s), torch.zeros_like(s)).clamp(-8, 7) * s
            out[:, c:c + 1] = q
            e = (w[:, c:c + 1] - q) / u[c, c]
            w[:, c:c1] -= e * u[c:c + 1, c:c1]
            err[:, c - c0:c - c0 + 1] = e
        w[:, c1:] -= err @ u[c0:c1, c1:]
    return out.float()


def gptq_model(model, tokens: torch.Tensor, group_size: int):
    """Every matrix of model except the token embeddings and the classifier (q6 or q8_0 in q4 files) replaced, in
    place, by its GPTQ q4 values, calibrated on one forward pass of tokens (B, T) through the fp32 model.
    The export then stores those values (requantising them finds them again, but for the rare group whose
    extreme weight moved off the scale's end, which takes the nearest q4 values)."""
    h = {}  # name -> X^T X of that matrix's inputs
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n + ".weight" not in CLASSIFIER}

    def keep(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            h[name] = h.get(name, 0) + x.T @ x
        return hook
    hooks = [m.register_forward_hook(keep(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(tokens), 16):
                model(tokens[i:i + 16])
    finally:
        for k in hooks:
            k.remove()
    with torch.no_grad():
        for n, m in tqdm(linears.items(), desc="gptq", unit="matrix", disable=not sys.stderr.isatty()):
            m.weight.copy_(gptq_q4(m.weight, h.pop(n), group_size))


# -----------------------------------------------------------------------------
# writers


def _header(model, version, dtype, group_size) -> dict:
    """The header fields for model in the given format, or ValueError when it cannot hold it."""
    args = model.args
    if version not in (0, 1, 2, 3):
        raise ValueError(f"version must be 0, 1, 2 or 3, got {version!r}")
    allowed = {0: ("fp32",), 1: ("fp32",), 2: ("q8_0",), 3: tuple(WEIGHT_TYPES)}[version]
    dtype = allowed[0] if dtype is None else dtype
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is not possible in version {version} (it takes {'|'.join(allowed)}; "
                         f"version 3 takes {'|'.join(WEIGHT_TYPES)})")
    if version < 3:
        for name, legacy in (("rope_theta", LEGACY_THETA), ("norm_eps", LEGACY_EPS)):
            if f32(getattr(args, name)) != f32(legacy):
                raise ValueError(f"{name}={getattr(args, name)} cannot be stored in version {version} "
                                 f"(its readers assume {legacy}): use --version=3")
    sd = model.state_dict()
    hidden = ffn_hidden_dim(args)
    h = dict(version=version, dim=args.dim, hidden_dim=hidden, n_layers=args.n_layers, n_heads=args.n_heads,
             n_kv_heads=args.n_kv_heads or args.n_heads, vocab_size=args.vocab_size, max_seq_len=args.max_seq_len,
             shared=bool(torch.equal(sd["tok_embeddings.weight"], sd["output.weight"])),
             weight_type=dtype, group_size=0, rope_theta=f32(args.rope_theta), norm_eps=f32(args.norm_eps))
    if dtype in QUANTISED:
        h["group_size"] = pick_group_size(group_size, args.dim, hidden)
        if h["group_size"] != group_size:
            print(f"export: group_size {group_size} -> {h['group_size']} so that it divides dim={args.dim} "
                  f"and hidden_dim={hidden}", file=sys.stderr)
        if Q4_CLASSIFIER.get(dtype) == "q6" and h["group_size"] % 4:
            raise ValueError(f"group_size {h['group_size']}: q4's q6 classifier packs 4 weights in 3 bytes, so it needs "
                             f"a multiple of 4 dividing dim={args.dim} and hidden_dim={hidden} (use --dtype=q4_q8 or q8_0)")
    return h


def pack_header(h: dict, vocab_id=None) -> bytes:
    vocab = h["vocab_size"] if (h["shared"] or h["version"] > 0) else -h["vocab_size"]
    params = struct.pack("<7i", h["dim"], h["hidden_dim"], h["n_layers"], h["n_heads"], h["n_kv_heads"],
                         vocab, h["max_seq_len"])
    if h["version"] == 0:
        return params
    b = struct.pack("<Ii", MAGIC, h["version"]) + params + struct.pack("<B", int(h["shared"]))
    if h["version"] >= 2:
        b += struct.pack("<i", h["group_size"])
    if h["version"] == 3:
        b += struct.pack("<Bff", WEIGHT_TYPES[h["weight_type"]], h["rope_theta"], h["norm_eps"])
        b = b.ljust(64, b"\0") + (vocab_id or bytes(32))  # bytes 64..95: the vocabulary's identity (0: unknown)
    return b.ljust(HEADER_BYTES, b"\0")


def model_export(model, path, version=3, dtype=None, group_size=64, vocab_id=None):
    """Write model to path as .bin version 0|1|2|3 (atomically; the model is never modified).

    dtype: None picks the version's only/first type; v0 and v1 take fp32, v2 q8_0, v3 fp32|bf16|q8_0|q4_q8|q4.
    group_size (quantised): the largest power of two <= it that divides dim and hidden_dim (q4: a multiple of 4).
    vocab_id (v3): the 32-byte identity of the model's vocabulary (tokenizer.identity), None: unknown.
    """
    model = unwrap(model)
    h = _header(model, version, dtype, group_size)
    entries, total = layout(h)
    sd = model.state_dict()
    hs = h["dim"] // h["n_heads"]
    cos, sin = rope_tables(hs, h["max_seq_len"], model.args.rope_theta) if version == 0 else (None, None)

    def write(f):
        f.write(pack_header(h, vocab_id))
        for name, shape, kind, data_off, scales_off in entries:
            if name.startswith("freq_cis"):
                w = cos if name == "freq_cis_real" else sin
            else:
                w = sd[name].detach().to("cpu", torch.float32)
            f.write(b"\0" * (data_off - f.tell()))
            if kind == "fp32":
                f.write(w.contiguous().numpy().tobytes())
            elif kind == "bf16":  # .to(bfloat16) rounds to nearest even, as the format says
                f.write(w.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
            else:
                q, s = {"q8_0": quantize_q80, "q6": quantize_q6, "q4": quantize_q4}[kind](w, h["group_size"])
                f.write(q.numpy().tobytes())
                f.write(b"\0" * (scales_off - f.tell()))
                f.write(s.numpy().tobytes())
        assert f.tell() == total, (f.tell(), total)
        f.flush()
        _check_written(f.name, path, h)  # before atomic_write's rename: a refused file never takes path's name

    atomic_write(path, write)


def read_back(tmp, path, read):
    """read(tmp) of a file just written at tmp, before it is renamed to path (export's last step, so that
    a file our readers refuse never takes path's name): its result, or the reader's ValueError, naming path."""
    try:
        return read(tmp)
    except ValueError as e:
        msg = str(e).replace(os.fspath(tmp), os.fspath(path)).removeprefix(f"{os.fspath(path)}: ")
        raise ValueError(f"{path}: not written: reading it back, our reader refuses it: {msg}") from None


def _check_written(tmp, path, h):
    """ValueError naming path unless the file at tmp reads back, through read_header and the bounds
    (the checks run.c restates), as the header h it was written from."""
    back = read_back(tmp, path, read_header)
    differs = [k for k in h if (f32(back[k]) != f32(h[k]) if k in ("rope_theta", "norm_eps") else back[k] != h[k])]
    if differs:
        raise ValueError(f"{path}: not written: its {differs[0]} reads back as {back[differs[0]]!r}, not {h[differs[0]]!r}")


# -----------------------------------------------------------------------------
# readers


def header_args(h: dict) -> ModelArgs:
    """The ModelArgs of a header read_header parsed."""
    return ModelArgs(dim=h["dim"], n_layers=h["n_layers"], n_heads=h["n_heads"], n_kv_heads=h["n_kv_heads"],
                     vocab_size=h["vocab_size"], hidden_dim=h["hidden_dim"], max_seq_len=h["max_seq_len"],
                     norm_eps=h["norm_eps"], rope_theta=h["rope_theta"], tie_embeddings=h["shared"])


def _sane(h: dict) -> str:
    """'' when the header's fields make a model within every reader's bounds (model.check_args), else what is wrong."""
    try:
        check_args(header_args(h))
    except ValueError as e:
        return str(e)
    return ""


def _min_size(h: dict) -> int:
    """A lower bound of the file size h implies, in O(1): every weight, no alignment padding. Checked
    before layout, whose list has 9 entries per layer (a flipped bit in n_layers: 150M of them)."""
    dim, hidden, hs = h["dim"], h["hidden_dim"], h["dim"] // h["n_heads"]
    kv_dim = h["n_kv_heads"] * hs
    m = h["n_layers"] * (2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim)  # matrix weights
    m += h["vocab_size"] * dim * (1 if h["shared"] else 2)
    scales = 4 * (m // max(h["group_size"], 1))  # quantised types: one fp32 per group
    kind = "q4" if h["weight_type"] in Q4_CLASSIFIER else h["weight_type"]  # the classifier's more bits left out
    weights = int(m * BYTES_PER_WEIGHT[kind]) + (scales if kind in QUANTISED else 0)
    norms = (2 * h["n_layers"] + 1) * dim
    return (28 if h["version"] == 0 else HEADER_BYTES) + weights + 4 * norms


def read_header(path) -> dict:
    """Parse and check the header of a .bin file; ValueError naming the file when it is not one."""
    path = os.fspath(path)
    size = regular_file(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < 28:
        raise ValueError(f"{path}: truncated: {size} bytes, too short for any .bin header")
    names = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")
    magic = struct.unpack_from("<I", head, 0)[0]
    if magic != MAGIC:  # v0 has no magic: accept only a header that makes sense
        h = dict(zip(names, struct.unpack_from("<7i", head, 0)), version=0, weight_type="fp32", group_size=0,
                 rope_theta=LEGACY_THETA, norm_eps=LEGACY_EPS)
        h["shared"] = h["vocab_size"] > 0
        h["vocab_size"] = abs(h["vocab_size"])
        if _sane(h):
            raise ValueError(f"{path}: bad magic 0x{magic:08x}: not a .bin model (expected magic 0x{MAGIC:08x} "
                             f"or a legacy v0 header; as v0: {_sane(h)})")
    else:
        if len(head) < HEADER_BYTES:
            raise ValueError(f"{path}: truncated: {size} bytes, the header alone needs {HEADER_BYTES}")
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2, 3):
            raise ValueError(f"{path}: unknown version {version} (this reader knows 0, 1, 2, 3)")
        h = dict(zip(names, struct.unpack_from("<7i", head, 8)), version=version, weight_type="fp32",
                 group_size=0, rope_theta=LEGACY_THETA, norm_eps=LEGACY_EPS)
        shared = head[36]
        if shared not in (0, 1):
            raise ValueError(f"{path}: shared_classifier byte is {shared}, expected 0 or 1")
        h["shared"] = bool(shared)
        if version == 2:
            h["weight_type"], h["group_size"] = "q8_0", struct.unpack_from("<i", head, 37)[0]
        if version == 3:
            h["group_size"], wt, theta, eps = struct.unpack_from("<iBff", head, 37)
            types = {v: k for k, v in WEIGHT_TYPES.items()}
            if wt not in types:
                raise ValueError(f"{path}: unknown weight_type {wt} (0 fp32, 1 bf16, 2 q8_0, 3 q4_q8, 4 q4)")
            # the shortest decimal that is this f32 (1e-05, not 9.99999974738e-06), so it re-exports the same
            h["weight_type"] = types[wt]
            h["rope_theta"], h["norm_eps"] = float(str(np.float32(theta))), float(str(np.float32(eps)))
            if types[wt] not in QUANTISED and h["group_size"] != 0:
                raise ValueError(f"{path}: group_size={h['group_size']} but weight_type is {types[wt]} (expected 0)")
            h["vocab_id"] = head[64:96] if head[64:96] != bytes(32) else None
        if _sane(h):
            raise ValueError(f"{path}: header field {_sane(h)}")
        if h["weight_type"] in QUANTISED:
            gs, cls = h["group_size"], Q4_CLASSIFIER.get(h["weight_type"])
            whole = {"q8_0": (2, ", even"), "q6": (4, ", a multiple of 4")}.get(cls, (1, ""))  # q4 pairs, q6 fours
            if gs < 1 or gs % whole[0] or h["dim"] % gs or h["hidden_dim"] % gs:
                raise ValueError(f"{path}: group_size={gs} must be positive{whole[1]} and divide "
                                 f"dim={h['dim']} and hidden_dim={h['hidden_dim']} (re-export from the checkpoint)")
    h.setdefault("vocab_id", None)
    if size < _min_size(h):
        raise ValueError(f"{path}: truncated: {size} bytes, the v{h['version']} header implies at least {_min_size(h)}")
    _, expected = layout(h)
    if size < expected:
        raise ValueError(f"{path}: truncated: {size} bytes, the v{h['version']} header implies {expected}")
    if size != expected:
        raise ValueError(f"{path}: size {size} bytes does not match the {expected} the v{h['version']} header implies")
    return h


def load_bin(path) -> Transformer:
    """Read a .bin of any version into a Transformer (eval mode, fp32 weights exactly as stored: q8_0, q6 and
    q4 dequantised)."""
    h = read_header(path)
    entries, _ = layout(h)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    sd = {}
    for name, shape, kind, off, soff in entries:
        n = int(np.prod(shape))
        if name.startswith("freq_cis"):
            continue  # recomputed from rope_theta: the same bytes (llama2.c used the same formula)
        if kind == "fp32":
            w = torch.from_numpy(np.frombuffer(data, np.float32, n, off).copy())
        elif kind == "bf16":
            u16 = np.frombuffer(data, np.uint16, n, off).astype(np.uint32) << 16
            w = torch.from_numpy(u16.view(np.float32))
        else:
            s = torch.from_numpy(np.frombuffer(data, np.float32, n // h["group_size"], soff).copy())
            if kind == "q8_0":
                w = dequantize_q80(torch.from_numpy(np.frombuffer(data, np.int8, n, off).copy()), s, shape)
            else:
                packed = torch.from_numpy(np.frombuffer(data, np.uint8, int(n * BYTES_PER_WEIGHT[kind]), off).copy())
                w = (dequantize_q6 if kind == "q6" else dequantize_q4)(packed, s, shape)
        sd[name] = w.reshape(shape)
    del data
    if h["shared"]:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return build(header_args(h), sd)

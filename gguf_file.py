"""gguf_file.py: a Transformer as a GGUF, llama.cpp's model file, both ways: plan + write (gguf_export)
turn a model and its tokenizer into a GGUF that llama.cpp runs as its "llama" architecture (tensors
f32, f16 or q8_0); gguf_import reads a Llama GGUF of those tensor types back into a Transformer.
export.py's --to_gguf and --gguf call them. The file's layout and its tokenizer metadata are
gguf_meta.py's.
"""
import numpy as np
import torch

from binfile import read_back, tensor_order
from fileio import atomic_write, printable, quoted
from gguf_meta import (ALIGN, F32, F32_T, F16_T, Q8_0_T, QK, STRING, TYPE_NAMES, U32, header, meta_value, nbytes, pad,
                       read_gguf, read_vocab, tokenizer_kvs)
from model import ModelArgs, build, check_args, ffn_hidden_dim, unwrap

DTYPES = {"fp32": (F32_T, 0), "f16": (F16_T, 1), "q8_0": (Q8_0_T, 7)}  # --dtype: tensor type, general.file_type
# the metadata's names of ModelArgs' fields (for messages)
META_NAMES = {"dim": "llama.embedding_length", "n_layers": "llama.block_count", "n_heads": "llama.attention.head_count",
              "n_kv_heads": "llama.attention.head_count_kv", "max_seq_len": "llama.context_length",
              "hidden_dim": "llama.feed_forward_length", "norm_eps": "llama.attention.layer_norm_rms_epsilon",
              "rope_theta": "llama.rope.freq_base"}


def tensor_names(n_layers, tied):
    """Our weight names -> llama.cpp's, in file order (w1 is ffn_gate, w3 ffn_up, w2 ffn_down)."""
    m = {"tok_embeddings.weight": "token_embd.weight"}
    for i in range(n_layers):
        for ours, theirs in (("attention_norm", "attn_norm"), ("attention.wq", "attn_q"), ("attention.wk", "attn_k"),
                             ("attention.wv", "attn_v"), ("attention.wo", "attn_output"), ("ffn_norm", "ffn_norm"),
                             ("feed_forward.w1", "ffn_gate"), ("feed_forward.w3", "ffn_up"),
                             ("feed_forward.w2", "ffn_down")):
            m[f"layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    m["norm.weight"] = "output_norm.weight"
    if not tied:
        m["output.weight"] = "output.weight"
    return m


# -----------------------------------------------------------------------------
# f16 and q8_0

def quantize_q8_0(w: torch.Tensor) -> np.ndarray:
    """Rows a multiple of 32 long -> q8_0 blocks, (n/32, 34) bytes: d = f16(max|w| / 127) per block, q =
    round(w / d) with d as stored (ggml divides by the unrounded scale: one step off now and then),
    clamped to +-127. Dequantised values quantise back to the same bytes: max|q*d| / 127 is d again."""
    x = w.detach().to("cpu", torch.float32).reshape(-1, QK)
    d = (x.abs().amax(1) / 127).to(torch.float16)
    s = d.float()[:, None]
    q = torch.where(s > 0, torch.round(x / torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(x))
    out = np.empty((x.shape[0], 2 + QK), np.uint8)
    out[:, :2] = d.numpy().view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.clamp(-127, 127).to(torch.int8).numpy().view(np.uint8)
    return out


def dequantize_q8_0(blocks: np.ndarray, shape) -> torch.Tensor:
    """(n/32, 34) q8_0 bytes -> fp32 tensor of shape: q * d, the product llama.cpp computes."""
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return torch.from_numpy(blocks[:, 2:].view(np.int8).astype(np.float32) * d).reshape(shape)


def _encode(ttype, w):
    if ttype == F32_T:
        return w.contiguous().numpy().tobytes()
    if ttype == F16_T:
        return w.to(torch.float16).numpy().tobytes()
    return quantize_q8_0(w).tobytes()


# -----------------------------------------------------------------------------
# writing

def plan(model, dtype, vocab):
    """What gguf_export writes: (metadata, [(name, tensor type, ne, fp32 tensor)], notes), or ValueError
    when llama.cpp could not hold the model as asked. Nothing is written; export.py checks before writing."""
    dtype = dtype or "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"a GGUF takes --dtype=fp32, f16 or q8_0, not {dtype}")
    model = unwrap(model)
    a, sd = model.args, model.state_dict()
    if vocab is None:
        raise ValueError("a GGUF needs the model's tokenizer (llama.cpp reads it from the file): pass --tokenizer=PATH")
    if len(vocab) != a.vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab)} tokens, the model {a.vocab_size}")
    ttype, file_type = DTYPES[dtype]
    n_kv, hidden = a.n_kv_heads or a.n_heads, ffn_hidden_dim(a)
    tied = bool(torch.equal(sd["tok_embeddings.weight"], sd["output.weight"]))
    meta = [("general.architecture", STRING, "llama"), ("general.file_type", U32, file_type),
            ("general.quantization_version", U32, 2), ("llama.context_length", U32, a.max_seq_len),
            ("llama.embedding_length", U32, a.dim), ("llama.block_count", U32, a.n_layers),
            ("llama.feed_forward_length", U32, hidden), ("llama.attention.head_count", U32, a.n_heads),
            ("llama.attention.head_count_kv", U32, n_kv), ("llama.attention.layer_norm_rms_epsilon", F32, a.norm_eps),
            ("llama.rope.freq_base", F32, a.rope_theta), ("llama.rope.dimension_count", U32, a.dim // a.n_heads),
            ("llama.vocab_size", U32, a.vocab_size)]
    kvs, notes = tokenizer_kvs(vocab)
    tensors = []
    for ours, theirs in tensor_names(a.n_layers, tied).items():
        w = sd[ours].detach().to("cpu", torch.float32)
        t = F32_T if w.dim() == 1 else ttype  # norms stay f32
        if t == Q8_0_T and w.shape[1] % QK:
            what = "hidden_dim" if "ffn_down" in theirs else "dim"
            raise ValueError(f"q8_0 needs rows whose length is a multiple of {QK}: {theirs} has rows of {what}="
                             f"{w.shape[1]}, which is not; use --dtype=f16 or fp32")
        if t != F32_T and w.abs().max() > 65504 * (127 if t == Q8_0_T else 1):
            raise ValueError(f"{theirs} has values up to {float(w.abs().max()):.3g}, beyond what "
                             f"{TYPE_NAMES[t]} can hold: use --dtype=fp32")
        tensors.append((theirs, t, tuple(reversed(w.shape)), w))
    return meta + kvs, tensors, notes


def write(path, planned, verify=True):
    """Write a GGUF (atomically) from plan()'s result; with verify (verify=False: tests writing files the
    readers must refuse) nothing is written unless it reads back."""
    meta, tensors, _ = planned
    head = header(meta, [(name, ttype, ne) for name, ttype, ne, _ in tensors])

    def write_fn(f):
        f.write(head)
        for _, ttype, _, w in tensors:  # each tensor padded to the alignment, the last one too (as ggml writes)
            b = _encode(ttype, w)
            f.write(b + bytes(pad(len(b)) - len(b)))
        if verify:  # read back before atomic_write's rename, by the readers of the model and of its tokenizer
            f.flush()
            read_back(f.name, path, lambda p: (gguf_layout(p)[2].close(), read_vocab(p)))

    atomic_write(path, write_fn)


def gguf_export(model, path, dtype="fp32", vocab=None):
    """Write model with its vocabulary (a vocab.Vocab) as a GGUF for llama.cpp; returns the notes."""
    planned = plan(model, dtype, vocab)
    write(path, planned)
    return planned[2]


# -----------------------------------------------------------------------------
# reading

LLAMA_KEYS = ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv", "feed_forward_length",
              "context_length", "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count",
              "attention.key_length", "attention.value_length", "expert_count", "rope.scaling.type",
              "rope.scale_linear")  # the llama.* metadata gguf_layout reads: read_gguf builds no other


def gguf_layout(path):
    """(ModelArgs, {our weight name: (tensor type, ne, file offset)}, the file memory-mapped) of a Llama GGUF
    of f32, f16 or q8_0 tensors, every check of gguf_import done and no weight read. Refused in one line:
    another architecture or tensor type, a missing, extra, misshapen or misplaced tensor, a shape or
    context out of model.check_args' bounds."""
    meta, tensors, buf = read_gguf(path, ["general.architecture"] + [f"llama.{k}" for k in LLAMA_KEYS])
    arch = meta_value(meta, path, "general.architecture", "str")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {quoted(arch)} is not supported (llama only)")
    num = lambda key, default=None: meta_value(meta, path, f"llama.{key}", "int", default)  # noqa: E731
    dim, n_layers, n_heads = num("embedding_length"), num("block_count"), num("attention.head_count")
    n_kv, hidden, ctx = num("attention.head_count_kv", n_heads), num("feed_forward_length"), num("context_length")
    eps = meta_value(meta, path, "llama.attention.layer_norm_rms_epsilon", "float")
    theta = meta_value(meta, path, "llama.rope.freq_base", "float", 10000.0)
    if min(dim, n_layers, n_heads, n_kv, hidden, ctx) < 1 or dim % n_heads:
        raise ValueError(f"{path}: embedding_length={dim}, block_count={n_layers}, head_count={n_heads}, head_count_kv="
                         f"{n_kv}, feed_forward_length={hidden} or context_length={ctx} out of range")
    hs = dim // n_heads
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if num(key, hs) != hs:
            raise ValueError(f"{path}: llama.{key}={num(key)}, but a head has {hs} values: not supported")
    if num("expert_count", 0) or meta_value(meta, path, "llama.rope.scaling.type", "str", "none") != "none" or \
            meta_value(meta, path, "llama.rope.scale_linear", "float", 1.0) != 1.0:
        raise ValueError(f"{path}: experts or rope scaling are not supported (a plain Llama only)")
    if 2 + 9 * n_layers > len(tensors):
        raise ValueError(f"{path}: block_count={n_layers} needs {2 + 9 * n_layers} tensors, the file has {len(tensors)}")
    if "token_embd.weight" not in tensors or len(tensors["token_embd.weight"][1]) != 2:
        raise ValueError(f"{path}: tensor token_embd.weight missing or not a matrix")
    vocab_size, tied = tensors["token_embd.weight"][1][1], "output.weight" not in tensors
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab_size,
                     hidden_dim=hidden, max_seq_len=ctx, norm_eps=eps, rope_theta=theta, tie_embeddings=tied)
    try:
        check_args(args, META_NAMES)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    names = tensor_names(n_layers, tied)
    extra = sorted(set(tensors) - set(names.values()))
    if extra:
        raise ValueError(f"{path}: tensor {printable(extra[0])} is not part of a plain Llama (not supported)")
    h = dict(version=1, dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
             vocab_size=vocab_size, max_seq_len=ctx, shared=tied)
    shapes = dict(tensor_order(h))
    for ours, theirs in names.items():
        if theirs not in tensors:
            raise ValueError(f"{path}: tensor {theirs} missing")
        ttype, ne, _ = tensors[theirs]
        if ttype not in (F32_T, F16_T, Q8_0_T):
            raise ValueError(f"{path}: tensor {theirs} is {TYPE_NAMES[ttype]}: only f32, f16 and q8_0 are supported")
        if ne != tuple(reversed(shapes[ours])):
            raise ValueError(f"{path}: tensor {theirs} has shape {list(ne)} (ggml order), the metadata implies "
                             f"{list(reversed(shapes[ours]))}")
    # llama.cpp takes the tensors one after another, each padded to the alignment, in the order of their
    # infos (the dict's order): one that overlaps another, or leaves a gap, is refused as llama.cpp refuses it
    align, at = meta.get("general.alignment", (None, ALIGN))[1], None
    for theirs, (ttype, ne, off) in tensors.items():
        if at is not None and off != at:
            raise ValueError(f"{path}: tensor {theirs} starts at byte {off}, not at {at} where the one before it ends "
                             "(llama.cpp needs the tensors one after another, in the order of their infos)")
        at = off + pad(nbytes(ttype, ne), align)
    return args, {ours: tensors[theirs] for ours, theirs in names.items()}, buf


def gguf_import(path):
    """A Llama GGUF (f32, f16 or q8_0 tensors) -> Transformer (eval, fp32: q8_0 and f16 dequantised exactly).
    Everything gguf_layout refuses is refused first, in one line."""
    args, placed, buf = gguf_layout(path)
    sd = {}
    for ours, (ttype, ne, off) in placed.items():
        n = int(np.prod(ne))
        if ttype == F32_T:
            w = torch.from_numpy(np.frombuffer(buf, np.float32, n, off).copy())
        elif ttype == F16_T:
            w = torch.from_numpy(np.frombuffer(buf, np.float16, n, off).astype(np.float32))
        else:
            w = dequantize_q8_0(np.frombuffer(buf, np.uint8, n // QK * (2 + QK), off).reshape(-1, 2 + QK), n)
        sd[ours] = w.reshape(tuple(reversed(ne)))
    if args.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return build(args, sd)

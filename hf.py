"""Hugging Face Llama directories, both ways, without transformers or safetensors: config.json, the
weights (safetensors, written and read by the ~40 lines below; pytorch_model.bin read with
torch.load(weights_only=True)) and, through hf_tokenizer.py, the tokenizer. export.py's --to_hf and
--hf call hf_export and hf_import.

Reading assumes the directory may be hostile: every value is checked before it is used (config.json
by model.check_args, the bounds of every reader; config sizes against the weight files' own headers
before anything is allocated; weight_map entries must be regular files in the directory; safetensors
headers and offsets against the file size, the tensors one after another; the JSON files capped by
what the model needs) and every problem is one ValueError line naming the file. hf_export reads what it
wrote back the same way before the files take their names.

HF rotates the halves (x[j], x[j + hs/2]) of each head where Meta/llama2.c rotate the pairs
(x[2j], x[2j+1]); the same model is had by reordering the rows of wq and wk inside each head:
interleaved row 2j -> HF row j, row 2j+1 -> HF row j + hs/2.
"""
import json
import math
import os
import shutil
import struct

import torch

from binfile import read_back, tensor_order
from checkpoint import torch_file
from fileio import MAX_FIELD, atomic_write, publish, quoted, regular_file, temp_path
from hf_tokenizer import MAX_JSON, read_json, read_tokenizer, write_tokenizer
from model import ModelArgs, Transformer, build, check_args, ffn_hidden_dim, unwrap, weight_count

ST_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
             "F64": (torch.float64, 8)}
# config.json's names of ModelArgs' fields (for messages)
CONFIG_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                "n_kv_heads": "num_key_value_heads", "max_seq_len": "max_position_embeddings",
                "hidden_dim": "intermediate_size", "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings"}
MAX_CONFIG = 1 << 20  # bytes of a config.json (real ones take 1 to 5 KB): one of 60 MB took 1.7 GB to parse


# -----------------------------------------------------------------------------
# safetensors: u64 header length, a JSON header {name: {dtype, shape, data_offsets}}, raw little-endian data

def write_safetensors(path, tensors: dict):
    """tensors {name: fp32 tensor} -> a .safetensors file (atomically)."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors.items():
        b = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)  # data starts 8-byte aligned
    atomic_write(path, struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def safetensors_header(path, cap=MAX_JSON):
    """({name: (dtype, shape, start, end)}, the data's (start, end)) of a .safetensors file whose header
    takes at most cap bytes, every entry checked against the file; start and end are file offsets."""
    size = regular_file(path, "safetensors file")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n} in a {size}-byte file)")
        if n > cap:
            raise ValueError(f"{path}: a header of {n:,} bytes is too big for the model's tensors (at most {cap:,})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad JSON header: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (the header is not a JSON object)")
    out, data_size = {}, size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(meta, dict) and isinstance(meta.get("dtype"), str) and isinstance(meta.get("shape"), list) \
            and all(type(d) is int and 0 <= d < 1 << 40 for d in meta["shape"]) \
            and isinstance(meta.get("data_offsets"), list) and len(meta["data_offsets"]) == 2 \
            and all(type(o) is int for o in meta["data_offsets"])
        if not ok:
            raise ValueError(f"{path}: tensor {name!r} has a malformed header entry")
        a, b = meta["data_offsets"]
        if not 0 <= a <= b <= data_size:
            raise ValueError(f"{path}: tensor {name!r} lies at bytes {a}..{b}, outside the {data_size} bytes of data")
        if meta["dtype"] in ST_DTYPES and b - a != math.prod(meta["shape"]) * ST_DTYPES[meta["dtype"]][1]:
            raise ValueError(f"{path}: tensor {name!r} has {b - a} bytes for shape {meta['shape']} {meta['dtype']}")
        out[name] = (meta["dtype"], tuple(meta["shape"]), 8 + n + a, 8 + n + b)
    return out, (8 + n, size)


def _read_tensor(path, entry):
    dtype, shape, a, b = entry
    with open(path, "rb") as f:
        f.seek(a)
        buf = bytearray(f.read(b - a))
    if len(buf) != b - a:
        raise ValueError(f"{path}: truncated (the file shrank while reading)")
    t = torch.frombuffer(buf, dtype=ST_DTYPES[dtype][0]) if buf else torch.empty(0, dtype=ST_DTYPES[dtype][0])
    return t.reshape(shape)


# -----------------------------------------------------------------------------
# the model: config.json and the weights

def _to_hf_rows(w, n_heads):
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _from_hf_rows(w, n_heads):
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _name_map(n_layers, tied):
    """Our weight names -> HF's (w1 gate, w3 up, w2 down)."""
    m = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    for i in range(n_layers):
        for ours, theirs in (("attention_norm", "input_layernorm"), ("attention.wq", "self_attn.q_proj"),
                             ("attention.wk", "self_attn.k_proj"), ("attention.wv", "self_attn.v_proj"),
                             ("attention.wo", "self_attn.o_proj"), ("ffn_norm", "post_attention_layernorm"),
                             ("feed_forward.w1", "mlp.gate_proj"), ("feed_forward.w2", "mlp.down_proj"),
                             ("feed_forward.w3", "mlp.up_proj")):
            m[f"layers.{i}.{ours}.weight"] = f"model.layers.{i}.{theirs}.weight"
    if not tied:
        m["output.weight"] = "lm_head.weight"
    return m


def hf_export(model, dirpath, vocab=None):
    """Write model as a Hugging Face LlamaForCausalLM directory: config.json, generation_config.json,
    model.safetensors, and with a vocabulary (tokenizer.Vocab) tokenizer.json and tokenizer_config.json;
    nothing is written unless the files read back."""
    model = unwrap(model)
    a = model.args
    n_kv = a.n_kv_heads or a.n_heads
    sd = model.state_dict()
    tied = bool(torch.equal(sd["tok_embeddings.weight"], sd["output.weight"]))
    tensors = {}
    for ours, theirs in _name_map(a.n_layers, tied).items():
        w = sd[ours].detach().to("cpu", torch.float32)
        if ours.endswith("attention.wq.weight"):
            w = _to_hf_rows(w, a.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = _to_hf_rows(w, n_kv)
        tensors[theirs] = w
    bos, eos = (vocab.bos, vocab.eos) if vocab else (1, 2)  # llama2.c's ids when the vocabulary is unknown
    stops = sorted({i for i in ((vocab.bos, vocab.eos, vocab.end) if vocab else (1, 2)) if i >= 0})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": a.dim, "intermediate_size": ffn_hidden_dim(a), "num_hidden_layers": a.n_layers,
        "num_attention_heads": a.n_heads, "num_key_value_heads": n_kv, "head_dim": a.dim // a.n_heads,
        "vocab_size": a.vocab_size, "max_position_embeddings": a.max_seq_len,
        "rms_norm_eps": a.norm_eps, "hidden_act": "silu", "tie_word_embeddings": tied,
        # transformers < 5 reads rope_theta, 5.x rope_parameters (and still accepts rope_theta)
        "rope_theta": a.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta},
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "bos_token_id": bos if bos >= 0 else None, "eos_token_id": eos if eos >= 0 else None,
        "torch_dtype": "float32", "dtype": "float32", "initializer_range": 0.02, "pretraining_tp": 1, "use_cache": True,
    }
    # generation stops where sample.py and run.c stop a story: BOS, EOS, the end-of-story token
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": stops, "pad_token_id": stops[0] if stops else None}
    stale = [f for f in ("model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
             if os.path.exists(os.path.join(dirpath, f))]
    if stale:  # a reader would take the other model's weights from it
        raise ValueError(f"{dirpath} holds {stale[0]} of another model: remove it, or export to another folder")
    # Written into a folder inside dirpath and read back from there by the readers users use (hf_sources,
    # the tokenizer's): only files they take are renamed into dirpath, one by one
    os.makedirs(dirpath, exist_ok=True)
    tmp = temp_path(os.path.join(dirpath, ".export"))
    os.makedirs(tmp)
    try:
        write_safetensors(os.path.join(tmp, "model.safetensors"), tensors)
        for name, obj in (("config.json", config), ("generation_config.json", generation)):
            atomic_write(os.path.join(tmp, name), (json.dumps(obj, indent=2) + "\n").encode())
        if vocab is not None:
            write_tokenizer(vocab, tmp, a.max_seq_len)
        read_back(tmp, dirpath, lambda d: (hf_sources(d), vocab is None or read_tokenizer(d)))
        for name in sorted(os.listdir(tmp)):
            publish(os.path.join(tmp, name), os.path.join(dirpath, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _config_args(c, path):
    """ModelArgs from a config.json object; ValueError naming the field when one is missing or bad (the
    bounds are model.check_args', as in every reader)."""
    def get(key, default=None, kind=int):
        v = c.get(key, default)
        if kind is int and not (type(v) is int and 0 < v < MAX_FIELD):
            raise ValueError(f"{path}: {key}={quoted(v)}: expected an integer in 1 .. {MAX_FIELD - 1}")
        if kind is float and not (type(v) in (int, float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{path}: {key}={quoted(v)}: expected a positive finite number")
        return v

    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    if not isinstance(rope, dict) or not isinstance(scaling, dict):
        raise ValueError(f"{path}: rope_parameters / rope_scaling must be objects")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"{path}: rope scaling {quoted(rope or scaling)} is not supported (plain RoPE only)")
    if c.get("attention_bias") or c.get("mlp_bias") or c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: biases or an activation other than silu are not supported")
    if c.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: model_type {quoted(c.get('model_type'))} is not supported (Llama only)")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        if key not in c:
            raise ValueError(f"{path}: config.json lacks {key!r}")
    dim, n_heads = get("hidden_size"), get("num_attention_heads")
    eps = get("rms_norm_eps", 1e-6, float)
    thetas = [v for v in (c.get("rope_theta"), rope.get("rope_theta")) if v is not None] or [10000.0]
    for theta in thetas:  # transformers 4 reads rope_theta, 5 rope_parameters: each must be good
        if not (type(theta) in (int, float) and math.isfinite(theta) and theta > 0):
            raise ValueError(f"{path}: rope_theta={quoted(theta)}: expected a positive finite number")
    if len(set(thetas)) > 1:
        raise ValueError(f"{path}: rope_theta={thetas[0]} and rope_parameters' rope_theta={thetas[1]} disagree")
    theta = thetas[0]
    if eps >= 1:
        raise ValueError(f"{path}: rms_norm_eps={eps}: expected a number in (0, 1)")
    tied = c.get("tie_word_embeddings", False)
    if type(tied) is not bool:
        raise ValueError(f"{path}: tie_word_embeddings={quoted(tied)}: expected true or false")
    args = ModelArgs(dim=dim, n_layers=get("num_hidden_layers"), n_heads=n_heads,
                     n_kv_heads=get("num_key_value_heads", n_heads), vocab_size=get("vocab_size"),
                     hidden_dim=get("intermediate_size"), max_seq_len=get("max_position_embeddings", 2048),
                     norm_eps=float(eps), rope_theta=float(theta), tie_embeddings=tied)
    if c.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"{path}: head_dim={quoted(c['head_dim'])} != hidden_size/num_attention_heads: not supported")
    try:
        check_args(args, CONFIG_NAMES)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return args


def _index_cap(args):
    """The most bytes an index or a safetensors header of args' model may take: its tensors' names and
    shapes, a KiB each at most (real ones: about 100 bytes), and 64 KiB for the rest (__metadata__)."""
    return (64 << 10) + (1 << 10) * (2 + 9 * args.n_layers + (not args.tie_embeddings))


def _weight_files(dirpath, cap):
    """[(path, kind)] of an HF directory's weight files: (sharded) safetensors or pytorch_model.bin."""
    for index, single, kind in (("model.safetensors.index.json", "model.safetensors", "st"),
                                ("pytorch_model.bin.index.json", "pytorch_model.bin", "pt")):
        ipath = os.path.join(dirpath, index)
        if os.path.exists(ipath):
            wm = read_json(ipath, "weight index", cap).get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise ValueError(f"{ipath}: weight_map must map tensor names to file names")
            files = sorted(set(wm.values()))
            if not files:
                raise ValueError(f"{ipath}: weight_map is empty")
            for name in files:  # shards live in the directory itself: no paths out of it
                if os.path.basename(name) != name or name in ("", ".", "..") or "\0" in name:
                    raise ValueError(f"{ipath}: weight_map names {quoted(name)}, expected a file name in {dirpath}")
            return [(os.path.join(dirpath, name), kind) for name in files]
        if os.path.exists(os.path.join(dirpath, single)):
            return [(os.path.join(dirpath, single), kind)]
    raise ValueError(f"{dirpath}: no model.safetensors or pytorch_model.bin (or their .index.json)")


def _torch_load(path):
    """A pytorch_model.bin's state dict (checkpoint.torch_file: tensors and plain containers only)."""
    part = torch_file(path, "state dict")
    if not isinstance(part, dict):
        raise ValueError(f"{path}: not a state dict")
    return {k: v for k, v in part.items() if isinstance(v, torch.Tensor)}


def _contiguous(path, entries, data):
    """ValueError unless a safetensors file's tensors tile its data (start, end), one after another, no
    byte twice or never (the safetensors library's own rule): an overlap would let two weights share bytes."""
    at = data[0]
    for name, (_, _, a, b) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if a != at:
            raise ValueError(f"{path}: tensor {quoted(name)} starts at data byte {a - data[0]}, where the tensors "
                             f"before it end at {at - data[0]}: they must lie one after another")
        at = b
    if at != data[1]:
        raise ValueError(f"{path}: the tensors end at data byte {at - data[0]}, the data has {data[1] - data[0]}")


def hf_sources(dirpath):
    """(ModelArgs, {our weight name: its source}) of a Hugging Face Llama directory, every check hf_import
    makes done and no weight read from a safetensors file: a source is (path, safetensors entry), or the
    tensor itself from a pytorch_model.bin. config.json's sizes are checked against the files' own headers
    before anything of their size is allocated."""
    dirpath = os.fspath(dirpath)
    if not os.path.isdir(dirpath):
        raise ValueError(f"{dirpath}: not a directory")
    cpath = os.path.join(dirpath, "config.json")
    a = _config_args(read_json(cpath, "config.json", MAX_CONFIG), cpath)
    cap = _index_cap(a)
    files = _weight_files(dirpath, cap)
    # the files must be able to hold what config.json claims before any list or tensor of that size exists
    n_tensors = 2 + 9 * a.n_layers + (not a.tie_embeddings)
    if files[0][1] == "st":
        headers = {path: safetensors_header(path, cap) for path, _ in files}
        held = {name: (path, entry) for path, h in headers.items() for name, entry in h[0].items()}
    else:  # pickled state dicts can only be bounded by their size: the fp64 model plus slack at most
        limit = 8 * weight_count(a) + (1 << 20)
        total = sum(regular_file(p, "weight file") for p, _ in files)
        if total > limit:
            raise ValueError(f"{dirpath}: the weight files hold {total:,} bytes, config.json's model at most {limit:,}")
        held = {k: v for path, _ in files for k, v in _torch_load(path).items()}
    if n_tensors > len(held):
        raise ValueError(f"{cpath}: num_hidden_layers={a.n_layers} needs {n_tensors} weights, the weight files hold "
                         f"{len(held)} tensors")
    h = dict(version=1, dim=a.dim, hidden_dim=a.hidden_dim, n_layers=a.n_layers, n_heads=a.n_heads,
             n_kv_heads=a.n_kv_heads, vocab_size=a.vocab_size, max_seq_len=a.max_seq_len, shared=a.tie_embeddings)
    shapes = dict(tensor_order(h))
    sources = {}
    for ours, theirs in _name_map(a.n_layers, a.tie_embeddings).items():
        if theirs not in held:
            raise ValueError(f"{dirpath}: weight {theirs} missing")
        want, src = tuple(shapes[ours]), held[theirs]
        if files[0][1] == "st" and (src[1][0] not in ST_DTYPES or src[1][1] != want):
            raise ValueError(f"{src[0]}: weight {theirs} is {src[1][0]} {list(src[1][1])}, config.json implies "
                             f"a float tensor of shape {list(want)}")
        if files[0][1] == "pt" and (tuple(src.shape) != want or not src.is_floating_point()):
            raise ValueError(f"{dirpath}: weight {theirs} is {src.dtype} {list(src.shape)}, config.json implies "
                             f"a float tensor of shape {list(want)}")
        sources[ours] = src
    if files[0][1] == "st":
        for path, (entries, data) in headers.items():
            _contiguous(path, entries, data)
    return a, sources


def hf_import(dirpath) -> Transformer:
    """Read a Hugging Face Llama directory (GQA, rope_theta, tied or not) into a Transformer (eval, fp32),
    after every check of hf_sources."""
    args, sources = hf_sources(dirpath)
    sd = {}
    for ours, src in sources.items():
        w = (src if isinstance(src, torch.Tensor) else _read_tensor(*src)).float()
        if ours.endswith("attention.wq.weight"):
            w = _from_hf_rows(w, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = _from_hf_rows(w, args.n_kv_heads)
        sd[ours] = w
    if args.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return build(args, sd)

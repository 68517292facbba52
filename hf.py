"""Hugging Face Llama directories, both ways, without transformers or safetensors: config.json, the
weights (safetensors, written and read by the ~40 lines below; pytorch_model.bin read with
torch.load(weights_only=True)) and the tokenizer (tokenizer.json, tokenizer_config.json). export.py's
--to_hf and --hf call hf_export and hf_import; tokenizer.py reads tokenizer.json through read_tokenizer.

Reading assumes the directory may be hostile: every value is checked before it is used (config sizes
against the weight files' own headers before anything is allocated, weight_map entries must be
regular files in the directory, safetensors headers and offsets against the file size) and every
problem is one ValueError line naming the file.

HF rotates the halves (x[j], x[j + hs/2]) of each head where Meta/llama2.c rotate the pairs
(x[2j], x[2j+1]); the same model is had by reordering the rows of wq and wk inside each head:
interleaved row 2j -> HF row j, row 2j+1 -> HF row j + hs/2.
"""
import json
import math
import os
import struct

import torch

import tokenizer as T
from model import ModelArgs, Transformer, check_args, ffn_hidden_dim

ST_DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
             "F64": (torch.float64, 8)}
MAX_JSON = 64 << 20  # bytes: config.json, index, tokenizer.json and a safetensors header are small
MAX_DIM = 1 << 24    # every shape field is below this, as in the .bin readers


def _atomic_write(path, data: bytes):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _regular_file(path, what="file"):
    """path if it is a regular file (not a device, FIFO or directory), else ValueError."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.strerror})") from None
    if not (st.st_mode & 0o170000) == 0o100000:
        raise ValueError(f"{path}: the {what} is not a regular file")
    return st.st_size


def read_json(path, what="file"):
    """A JSON object from a file of at most MAX_JSON bytes, or ValueError in one line."""
    size = _regular_file(path, what)
    if size > MAX_JSON:
        raise ValueError(f"{path}: {size:,} bytes is too big for a {what} (at most {MAX_JSON:,})")
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable JSON {what} ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


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
    _atomic_write(path, struct.pack("<Q", len(hj)) + hj + b"".join(blobs))


def safetensors_header(path):
    """{name: (dtype, shape, start, end)} of a .safetensors file, every entry checked against the file."""
    size = _regular_file(path, "safetensors file")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if not 2 <= n <= min(MAX_JSON, size - 8):
            raise ValueError(f"{path}: not a safetensors file (header length {n} in a {size}-byte file)")
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
    return out


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
    model.safetensors, and with a vocabulary (tokenizer.Vocab) tokenizer.json and tokenizer_config.json."""
    from export import _unwrap

    model = _unwrap(model)
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
    os.makedirs(dirpath, exist_ok=True)
    write_safetensors(os.path.join(dirpath, "model.safetensors"), tensors)
    for name, obj in (("config.json", config), ("generation_config.json", generation)):
        _atomic_write(os.path.join(dirpath, name), (json.dumps(obj, indent=2) + "\n").encode())
    if vocab is not None:
        write_tokenizer(vocab, dirpath, a.max_seq_len)


def _config_args(c, path):
    """ModelArgs from a config.json object; ValueError naming the field when one is missing or bad."""
    def get(key, default=None, kind=int):
        v = c.get(key, default)
        if kind is int and not (type(v) is int and 0 < v < MAX_DIM):
            raise ValueError(f"{path}: {key}={v!r}: expected an integer in 1 .. {MAX_DIM - 1}")
        if kind is float and not (type(v) in (int, float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{path}: {key}={v!r}: expected a positive finite number")
        return v

    rope = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    if not isinstance(rope, dict) or not isinstance(scaling, dict):
        raise ValueError(f"{path}: rope_parameters / rope_scaling must be objects")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ValueError(f"{path}: rope scaling {rope or scaling} is not supported (plain RoPE only)")
    if c.get("attention_bias") or c.get("mlp_bias") or c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: biases or an activation other than silu are not supported")
    if c.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: model_type {c.get('model_type')!r} is not supported (Llama only)")
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"):
        if key not in c:
            raise ValueError(f"{path}: config.json lacks {key!r}")
    dim, n_heads = get("hidden_size"), get("num_attention_heads")
    eps = get("rms_norm_eps", 1e-6, float)
    theta = get("rope_theta", 10000.0, float) if "rope_theta" not in rope else rope["rope_theta"]
    if not (type(theta) in (int, float) and math.isfinite(theta) and theta > 0):
        raise ValueError(f"{path}: rope_theta={theta!r}: expected a positive finite number")
    if eps >= 1:
        raise ValueError(f"{path}: rms_norm_eps={eps}: expected a number in (0, 1)")
    tied = c.get("tie_word_embeddings", False)
    if type(tied) is not bool:
        raise ValueError(f"{path}: tie_word_embeddings={tied!r}: expected true or false")
    args = ModelArgs(dim=dim, n_layers=get("num_hidden_layers"), n_heads=n_heads,
                     n_kv_heads=get("num_key_value_heads", n_heads), vocab_size=get("vocab_size"),
                     hidden_dim=get("intermediate_size"), max_seq_len=get("max_position_embeddings", 2048),
                     norm_eps=float(eps), rope_theta=float(theta), tie_embeddings=tied)
    if c.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"{path}: head_dim={c['head_dim']} != hidden_size/num_attention_heads: not supported")
    try:
        check_args(args)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return args


def _weight_files(dirpath):
    """[(path, kind)] of an HF directory's weight files: (sharded) safetensors or pytorch_model.bin."""
    for index, single, kind in (("model.safetensors.index.json", "model.safetensors", "st"),
                                ("pytorch_model.bin.index.json", "pytorch_model.bin", "pt")):
        ipath = os.path.join(dirpath, index)
        if os.path.exists(ipath):
            wm = read_json(ipath, "weight index").get("weight_map")
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise ValueError(f"{ipath}: weight_map must map tensor names to file names")
            files = sorted(set(wm.values()))
            for name in files:  # shards live in the directory itself: no paths out of it
                if os.path.basename(name) != name or name in ("", ".", ".."):
                    raise ValueError(f"{ipath}: weight_map names {name!r}, expected a file name in {dirpath}")
            return [(os.path.join(dirpath, name), kind) for name in files]
        if os.path.exists(os.path.join(dirpath, single)):
            return [(os.path.join(dirpath, single), kind)]
    raise ValueError(f"{dirpath}: no model.safetensors or pytorch_model.bin (or their .index.json)")


def hf_import(dirpath) -> Transformer:
    """Read a Hugging Face Llama directory (GQA, rope_theta, tied or not) into a Transformer (eval, fp32).
    Every weight's shape is checked against config.json in the files' headers before anything is allocated."""
    from export import _build

    dirpath = os.fspath(dirpath)
    if not os.path.isdir(dirpath):
        raise ValueError(f"{dirpath}: not a directory")
    args = _config_args(read_json(os.path.join(dirpath, "config.json"), "config.json"), os.path.join(dirpath, "config.json"))
    names = _name_map(args.n_layers, args.tie_embeddings)
    dummy = {k: v.shape for k, v in _shapes(args).items()}
    want = {theirs: dummy[ours] for ours, theirs in names.items()}
    files = _weight_files(dirpath)
    found = {}
    if files[0][1] == "st":
        for path, _ in files:
            for name, entry in safetensors_header(path).items():
                if name in want:
                    found[name] = (path, entry)
    else:  # pickled state dicts can only be bounded by their size: the fp64 model plus slack at most
        limit = 8 * sum(math.prod(s) for s in want.values()) + (1 << 20)
        total = sum(_regular_file(p, "weight file") for p, _ in files)
        if total > limit:
            raise ValueError(f"{dirpath}: the weight files hold {total:,} bytes, config.json's model at most {limit:,}")
    hf = {}
    if files[0][1] == "pt":
        for path, _ in files:
            try:
                part = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch.load raises many types (pickle, zip, refused globals, ...)
                raise ValueError(f"{path}: not a readable state dict ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
            if not isinstance(part, dict):
                raise ValueError(f"{path}: not a state dict")
            hf.update({k: v for k, v in part.items() if k in want and isinstance(v, torch.Tensor)})
    sd = {}
    for ours, theirs in names.items():
        if files[0][1] == "st":
            if theirs not in found:
                raise ValueError(f"{dirpath}: weight {theirs} missing")
            path, entry = found[theirs]
            if entry[0] not in ST_DTYPES or entry[1] != tuple(want[theirs]):
                raise ValueError(f"{path}: weight {theirs} is {entry[0]} {list(entry[1])}, config.json implies "
                                 f"a float tensor of shape {list(want[theirs])}")
            w = _read_tensor(path, entry)
        else:
            if theirs not in hf:
                raise ValueError(f"{dirpath}: weight {theirs} missing")
            w = hf[theirs]
            if tuple(w.shape) != tuple(want[theirs]) or not w.is_floating_point():
                raise ValueError(f"{dirpath}: weight {theirs} is {w.dtype} {list(w.shape)}, config.json implies "
                                 f"a float tensor of shape {list(want[theirs])}")
        w = w.float()
        if ours.endswith("attention.wq.weight"):
            w = _from_hf_rows(w, args.n_heads)
        elif ours.endswith("attention.wk.weight"):
            w = _from_hf_rows(w, args.n_kv_heads)
        sd[ours] = w
    if args.tie_embeddings:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return _build(args, sd)


def _shapes(args):
    """Every weight's shape for args, without allocating the model (a meta-device Transformer)."""
    with torch.device("meta"):
        return dict(Transformer(args).state_dict())


# -----------------------------------------------------------------------------
# the tokenizer: tokenizer.json of type BPE, with byte fallback (Llama) or byte-level (GPT-2)

COLLAPSE_RULES = [{"type": "Replace", "pattern": {"Regex": "^ +| +$"}, "content": ""},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]  # what we write for COLLAPSE
SPACE_TO_MARK = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
PREPEND_MARK = {"type": "Prepend", "prepend": "\u2581"}


def _token_name(x):
    """A special token as tokenizer_config.json names it: a string or {"content": ...}."""
    return x.get("content") if isinstance(x, dict) else x


def _parts(obj, kind):
    """The steps of a normalizer/pre_tokenizer/post_processor (a Sequence flattened), each a dict."""
    if obj is None:
        return []
    if not isinstance(obj, dict):
        raise ValueError(f"{kind} is not an object")
    if obj.get("type") == "Sequence":
        steps = obj.get({"normalizer": "normalizers", "pre_tokenizer": "pretokenizers",
                         "post_processor": "processors"}[kind])
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ValueError(f"{kind} Sequence has no list of steps")
        return steps
    return [obj]


def read_tokenizer(path):
    """A Hugging Face tokenizer (a directory, or a tokenizer.json with tokenizer_config.json beside it)
    -> tokenizer.Vocab. A directory with only a sentencepiece tokenizer.model is read as that."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    jpath = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.exists(jpath):
        spm = os.path.join(path, "tokenizer.model")
        if os.path.exists(spm):
            v, problem = T.read_sentencepiece(spm)
            if problem:
                raise ValueError(f"{spm}: run.c cannot encode like this tokenizer: {problem}")
            return v
        raise ValueError(f"{path}: no tokenizer.json or tokenizer.model")
    try:
        return _parse_tokenizer(read_json(jpath, "tokenizer.json"), folder)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        msg = str(e) if isinstance(e, ValueError) else f"malformed ({type(e).__name__}: {e})"
        raise ValueError(msg if msg.startswith(jpath) else f"{jpath}: {msg}") from None


def _parse_tokenizer(t, folder):
    model = t.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else model
        raise ValueError(f"model type {kind!r} is not supported (BPE only: with byte fallback like Llama's, "
                         "or byte-level like GPT-2's)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE {key}={model[key]!r} is not supported")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"BPE dropout={model['dropout']!r} is not supported (encoding must be deterministic)")
    vocab, merges = model.get("vocab"), model.get("merges", [])
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(i) is int and 0 <= i < MAX_DIM
                                              for k, i in vocab.items()):
        raise ValueError("model.vocab must map token strings to ids")
    if not isinstance(merges, list):
        raise ValueError("model.merges must be a list")
    added = t.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(a, dict) and isinstance(a.get("content"), str) and
                                              type(a.get("id")) is int and 0 <= a["id"] < MAX_DIM for a in added):
        raise ValueError("added_tokens must be a list of {id, content, ...}")

    # the flavour, from the normalizer and pre-tokenizer
    norm, pre = _parts(t.get("normalizer"), "normalizer"), _parts(t.get("pre_tokenizer"), "pre_tokenizer")
    flags, prefix = 0, T.PREFIX_NONE
    if len(pre) == 1 and pre[0].get("type") == "ByteLevel" and not norm:
        if pre[0].get("use_regex", True) is not True:
            raise ValueError("a ByteLevel pre_tokenizer without GPT-2's split (use_regex=false) is not supported")
        flags |= T.BYTE_LEVEL
        prefix = T.PREFIX_EVERY if pre[0].get("add_prefix_space") else T.PREFIX_NONE
    elif len(pre) == 1 and pre[0].get("type") == "Metaspace" and not norm:
        m = pre[0]
        if m.get("replacement", "\u2581") != "\u2581":
            raise ValueError(f"Metaspace replacement {m.get('replacement')!r} is not supported (U+2581 only)")
        scheme = m.get("prepend_scheme", "always" if m.get("add_prefix_space", True) else "never")
        prefix = {"first": T.PREFIX_FIRST, "always": T.PREFIX_EVERY, "never": T.PREFIX_NONE}.get(scheme)
        if prefix is None:
            raise ValueError(f"Metaspace prepend_scheme {scheme!r} is not supported")
        flags |= T.SPLIT_SPACES if m.get("split", True) else 0
    elif not pre and norm and norm[-1] == SPACE_TO_MARK:
        rest = norm[:-1]
        if rest[:2] == COLLAPSE_RULES:
            flags, rest = flags | T.COLLAPSE, rest[2:]
        if rest == [PREPEND_MARK]:
            prefix = T.PREFIX_ALWAYS
        elif rest:
            raise ValueError(f"normalizer steps {[s.get('type') for s in rest]} are not supported")
    else:
        raise ValueError(f"normalizer {[s.get('type') for s in norm]} with pre_tokenizer {[s.get('type') for s in pre]} "
                         "is not supported (Llama's: a U+2581 Metaspace or Prepend/Replace normalizer; GPT-2's: ByteLevel)")
    byte_level = bool(flags & T.BYTE_LEVEL)
    if model.get("byte_fallback"):
        if byte_level:
            raise ValueError("byte_fallback with a ByteLevel pre_tokenizer is not supported")
        flags |= T.BYTE_FALLBACK
    flags |= (T.FUSE_UNK if model.get("fuse_unk") else 0) | (T.IGNORE_MERGES if model.get("ignore_merges") else 0)

    # the tokens: added tokens (special: control, else user-defined), then the model's vocabulary
    n = max([*vocab.values(), *(a["id"] for a in added)], default=-1) + 1
    pieces, types, scores, in_text = [b""] * n, [T.UNUSED] * n, [0.0] * n, [False] * n
    alphabet = {c: b for b, c in enumerate(T.byte_alphabet())}
    for s, i in vocab.items():
        if byte_level and all(c in alphabet for c in s):
            pieces[i], types[i] = bytes(alphabet[c] for c in s), T.NORMAL
        elif not byte_level:
            pieces[i] = s.replace("\u2581", " ").encode("utf-8")
            types[i] = T.BYTE if flags & T.BYTE_FALLBACK and T._byte_value(pieces[i]) >= 0 else T.NORMAL
        else:  # not spelled in GPT-2's alphabet: byte-level BPE can never produce it
            pieces[i] = s.encode("utf-8")
    for a in added:
        for key in ("lstrip", "rstrip", "single_word"):
            if a.get(key):
                raise ValueError(f"added token {a['content']!r} has {key}=true, which run.c does not implement")
        if a.get("normalized", not a.get("special")) and prefix == T.PREFIX_ALWAYS:
            raise ValueError(f"added token {a['content']!r} is normalized under a Prepend normalizer (not supported)")
        i = a["id"]
        pieces[i], types[i], in_text[i] = a["content"].encode("utf-8"), T.CONTROL if a.get("special") else T.USER_DEFINED, True
    ids = {}
    for s, i in vocab.items():
        ids.setdefault(s, i)
    for a in added:
        ids.setdefault(a["content"], a["id"])
    ranked = []
    for r, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"merge {r} ({m!r}) is not a pair of tokens")
        a, b = pair
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"merge {r} ({a!r} {b!r}) names a token the vocabulary lacks")
        ranked.append((vocab[a], vocab[b], vocab[a + b]))
        if scores[vocab[a + b]] == 0.0:
            scores[vocab[a + b]] = -1.0 - r  # sentencepiece-style priority, for writers that merge by score

    # BOS, EOS, unknown: tokenizer_config.json / special_tokens_map.json, then config.json's ids
    cfg = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(folder, name)):
            cfg.update(read_json(os.path.join(folder, name), name))
    model_cfg = read_json(os.path.join(folder, "config.json"), "config.json") if os.path.exists(
        os.path.join(folder, "config.json")) else {}

    def special(key):
        name = _token_name(cfg.get(f"{key}_token"))
        if isinstance(name, str):
            if name not in ids:
                raise ValueError(f"{key}_token {name!r} of tokenizer_config.json is not in the vocabulary")
            return ids[name]
        i = model_cfg.get(f"{key}_token_id")
        return i if type(i) is int and 0 <= i < n else -1

    bos, eos = special("bos"), special("eos")
    unk = ids.get(model["unk_token"], -1) if isinstance(model.get("unk_token"), str) else special("unk")
    if isinstance(model.get("unk_token"), str) and unk < 0:
        raise ValueError(f"model.unk_token {model['unk_token']!r} is not in the vocabulary")
    if unk >= 0:
        types[unk] = T.UNKNOWN

    # the post-processor: nothing, or a template that puts one special token (BOS) before the text
    for step in _parts(t.get("post_processor"), "post_processor"):
        kind = step.get("type")
        if kind == "ByteLevel":
            continue
        if kind != "TemplateProcessing":
            raise ValueError(f"post_processor {kind!r} is not supported (TemplateProcessing or ByteLevel)")
        table = step.get("special_tokens") or {}
        if not isinstance(table, dict):
            raise ValueError("the template's special_tokens is not an object")
        for name, spec in table.items():
            tids = spec.get("ids") if isinstance(spec, dict) else None
            if not (isinstance(tids, list) and len(tids) == 1 and type(tids[0]) is int and 0 <= tids[0] < n
                    and pieces[tids[0]] == name.encode("utf-8")):
                raise ValueError(f"the template's special token {name!r} (ids {tids}) is not that token of the vocabulary")
        single = step.get("single")
        if not isinstance(single, list):
            raise ValueError("the template has no 'single' list")
        for item in single:
            if "SpecialToken" in item and item["SpecialToken"].get("id") not in table:
                raise ValueError(f"the template names {item['SpecialToken'].get('id')!r}, which its special_tokens lack")
        shape = ["S" if "SpecialToken" in i else "A" if "Sequence" in i else "?" for i in single]
        if shape == ["S", "A"]:
            bos = table[single[0]["SpecialToken"]["id"]]["ids"][0]
            flags |= T.ADD_BOS
        elif shape != ["A"]:
            raise ValueError(f"template {shape} is not supported (only a BOS before the text, or nothing)")
    classes = list(T.split_classes()) if byte_level else []
    v = T.Vocab(pieces, scores, types, in_text, bos, eos, unk, T.find_end(pieces, types), prefix, flags, ranked, classes)
    T.check(v, "tokenizer.json")
    return v


def write_tokenizer(v, dirpath, max_len):
    """Write v as tokenizer.json + tokenizer_config.json: Llama's byte-fallback form (a Prepend/Replace
    normalizer, merges derived from the scores when v merges by score) or GPT-2's byte-level form."""
    spell = [T.spelling(v, i) for i in range(len(v))]
    byte_level = bool(v.flags & T.BYTE_LEVEL)
    added = [{"id": i, "content": spell[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": v.types[i] != T.USER_DEFINED} for i in range(len(v)) if v.types[i] in (T.CONTROL, T.UNKNOWN, T.USER_DEFINED)]
    merges = v.merges or derive_merges(v)
    vocab = {}
    for i, s in enumerate(spell):
        if not (v.types[i] == T.UNUSED and not v.pieces[i]):  # padding: no token at all
            vocab.setdefault(s, i)
    if byte_level:
        normalizer, pre = None, {"type": "ByteLevel", "add_prefix_space": v.prefix == T.PREFIX_EVERY,
                                 "trim_offsets": True, "use_regex": True}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    else:
        if v.prefix in (T.PREFIX_FIRST, T.PREFIX_EVERY):
            normalizer, pre = None, {"type": "Metaspace", "replacement": "\u2581", "split": bool(v.flags & T.SPLIT_SPACES),
                                     "prepend_scheme": "first" if v.prefix == T.PREFIX_FIRST else "always"}
        else:
            steps = (COLLAPSE_RULES if v.flags & T.COLLAPSE else []) + ([PREPEND_MARK] if v.prefix else []) + [SPACE_TO_MARK]
            normalizer, pre = {"type": "Sequence", "normalizers": steps}, None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]
            + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if v.prefix else [])}
    if v.flags & T.ADD_BOS and v.bos >= 0:
        b = spell[v.bos]
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [v.bos], "tokens": [b]}}}
    else:
        post = None
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
          "pre_tokenizer": pre, "post_processor": post, "decoder": decoder,
          "model": {"type": "BPE", "dropout": None, "unk_token": spell[v.unk] if v.unk >= 0 else None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": bool(v.flags & T.FUSE_UNK),
                    "byte_fallback": bool(v.flags & T.BYTE_FALLBACK), "ignore_merges": bool(v.flags & T.IGNORE_MERGES),
                    "vocab": vocab, "merges": [[spell[a], spell[b]] for a, b, _ in merges]}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, "model_max_length": max_len}
    for key, i in (("bos_token", v.bos), ("eos_token", v.eos), ("unk_token", v.unk)):
        if i >= 0:
            config[key] = spell[i]
    _atomic_write(os.path.join(dirpath, "tokenizer.json"), json.dumps(tj, ensure_ascii=False).encode())
    _atomic_write(os.path.join(dirpath, "tokenizer_config.json"), (json.dumps(config, indent=2) + "\n").encode())


def derive_merges(v):
    """Ranked merges that reproduce merging by score: every split of a normal piece into two normal
    pieces, best-scoring result first (sentencepiece's order; transformers' converter does the same)."""
    normal = {}
    for i, (p, t) in enumerate(zip(v.pieces, v.types)):
        if t == T.NORMAL and p:
            normal.setdefault(p, i)
    out = []
    for p, c in normal.items():
        text = p.decode("utf-8", errors="surrogateescape")
        for k in range(1, len(text)):
            a = normal.get(text[:k].encode("utf-8", errors="surrogateescape"))
            b = normal.get(text[k:].encode("utf-8", errors="surrogateescape"))
            if a is not None and b is not None:
                out.append((-v.scores[c], c, a, b))
    return [(a, b, c) for _, c, a, b in sorted(out)]

"""export.py: .bin writers and readers for v0..v3, byte for byte; stories260K; the CLI; bad files."""
import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from binfile import MAGIC, load_bin, model_export, pick_group_size, read_header
from model import ModelArgs, Transformer, ffn_hidden_dim

# small shapes that exercise GQA, MQA, MHA, tied and untied classifiers, odd vocab sizes and a
# hidden_dim that is not a multiple of 64 (like stories260K's 172 = 4*43)
CONFIGS = {
    "gqa_tied_vocab67": ModelArgs(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=67, max_seq_len=32),
    "mqa_untied_vocab71": ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=71, hidden_dim=88,
                                    max_seq_len=24, tie_embeddings=False),
    "mha_hidden172": ModelArgs(dim=64, n_layers=1, n_heads=4, vocab_size=128, hidden_dim=172, max_seq_len=16),
}
FORMATS = [(0, None), (1, None), (2, None), (3, "fp32"), (3, "bf16"), (3, "q8_0"), (3, "q4_q8"), (3, "q4")]
CLASSIFIER = ("tok_embeddings.weight", "output.weight")  # q4 files store these in q6 (q4) or q8_0 (q4_q8)


def make_model(args, seed=0):
    torch.manual_seed(seed)
    m = Transformer(args)
    with torch.no_grad():  # norms away from 1, so a swapped norm would show
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return m.eval()


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits_of(model, T=8):
    tokens = torch.arange(T).remainder(model.args.vocab_size)[None]
    with torch.no_grad():
        return model(tokens)[0]


def ref_q80(w, gs):
    """llama2.c's Q8_0, written independently: scale = max|w|/127, q = round(w / scale)."""
    w = w.float().reshape(-1, gs)
    s = w.abs().max(dim=1).values / 127.0
    return torch.round(w / s[:, None]).to(torch.int8).reshape(-1), s


def ref_q6(w, gs):
    """The v3 q6 encoding written independently in numpy: scale = max|w|/31 per group, level =
    round-half-even(w / scale) in -31..31, stored + 32, 4 consecutive levels in the little-endian 24-bit
    word v0 | v1 << 6 | v2 << 12 | v3 << 18. (packed bytes, scales bytes, dequantised values)."""
    w = w.detach().float().numpy().reshape(-1, gs)
    s = np.abs(w).max(1) / np.float32(31)
    with np.errstate(invalid="ignore", divide="ignore"):
        levels = np.where(s[:, None] > 0, np.rint(w / s[:, None]), 0).clip(-31, 31).astype(np.int64)
    v = (levels + 32).reshape(-1, 4)
    word = v[:, 0] | v[:, 1] << 6 | v[:, 2] << 12 | v[:, 3] << 18
    packed = word.astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    return packed, s.astype(np.float32).tobytes(), (levels * s[:, None]).astype(np.float32)


def decode_q4(packed, scales, gs):
    """The v3 q4 encoding read independently in numpy: byte j of a group holds level + 8 of weight j
    (low nibble) and of weight j + gs/2 (high nibble); the value is level * the group's scale."""
    b = np.frombuffer(packed, np.uint8).reshape(-1, gs // 2).astype(np.int64)
    levels = np.concatenate([b & 15, b >> 4], axis=1) - 8
    return (levels * np.frombuffer(scales, np.float32)[:, None]).astype(np.float32), levels


def check_q4(packed, scales, w, gs):
    """q4 bytes of w as the format says: every scale is m / -8 or m / 7 for the group's
    largest-magnitude value m (up to sign), and every weight is its nearest level (or clamped)."""
    w = w.detach().float().numpy().reshape(-1, gs)
    s = np.frombuffer(scales, np.float32)
    vals, levels = decode_q4(packed, scales, gs)
    m = np.abs(w).max(1)
    assert np.all(np.isclose(np.abs(s), m / 8, rtol=1e-6, atol=0) | np.isclose(np.abs(s), m / 7, rtol=1e-6, atol=0)
                  | (m == 0))
    inside = (levels > -8) & (levels < 7)  # not clamped: within half a step
    assert np.all(np.abs(vals - w)[inside] <= (np.abs(s)[:, None] * (0.5 + 1e-5) + 1e-30).repeat(gs, 1)[inside])
    assert np.abs(vals - w).max() <= np.abs(s).max() * 1.5


def layer_names(L, name):
    return [f"layers.{i}.{name}.weight" for i in range(L)]


def v1_order(args, shared):
    L = args.n_layers
    names = layer_names(L, "attention_norm") + layer_names(L, "ffn_norm") + ["norm.weight", "tok_embeddings.weight"]
    for w in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
              "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
        names += layer_names(L, w)
    return names + ([] if shared else ["output.weight"])


def f32(t):
    return t.detach().float().contiguous().numpy().tobytes()


# ------------------------------------------------------------------------------------------------
# byte-level agreement with llama2.c's definitions, built independently of export.py


@pytest.mark.parametrize("cfg", ["gqa_tied_vocab67", "mqa_untied_vocab71"])
def test_v0_v1_v2_bytes_match_llama2c_definition(tmp_path, cfg):
    args = CONFIGS[cfg]
    m = make_model(args)
    sd, a = m.state_dict(), m.args
    shared = a.tie_embeddings
    hidden, kv = ffn_hidden_dim(a), a.n_kv_heads or a.n_heads
    L = a.n_layers
    params = [a.dim, hidden, L, a.n_heads, kv, a.vocab_size, a.max_seq_len]

    # v0: header, then Meta's order with the RoPE tables (cos, sin for max_seq_len positions)
    exp0 = struct.pack("<7i", *params[:5], a.vocab_size if shared else -a.vocab_size, a.max_seq_len)
    order0 = (["tok_embeddings.weight"] + layer_names(L, "attention_norm") + layer_names(L, "attention.wq")
              + layer_names(L, "attention.wk") + layer_names(L, "attention.wv") + layer_names(L, "attention.wo")
              + layer_names(L, "ffn_norm") + layer_names(L, "feed_forward.w1") + layer_names(L, "feed_forward.w2")
              + layer_names(L, "feed_forward.w3") + ["norm.weight"])
    exp0 += b"".join(f32(sd[n]) for n in order0) + f32(m.rope_cos) + f32(m.rope_sin)
    if not shared:
        exp0 += f32(sd["output.weight"])
    model_export(m, tmp_path / "v0.bin", 0)
    assert (tmp_path / "v0.bin").read_bytes() == exp0

    # v1: 256-byte header, v1 order
    exp1 = struct.pack("<Ii7iB", MAGIC, 1, *params, int(shared)).ljust(256, b"\0")
    exp1 += b"".join(f32(sd[n]) for n in v1_order(a, shared))
    model_export(m, tmp_path / "v1.bin", 1)
    assert (tmp_path / "v1.bin").read_bytes() == exp1

    # v2: header with group size, fp32 norms, then each tensor's int8 values followed by its scales
    gs = pick_group_size(64, a.dim, hidden)
    exp2 = struct.pack("<Ii7iBi", MAGIC, 2, *params, int(shared), gs).ljust(256, b"\0")
    for n in v1_order(a, shared):
        if sd[n].dim() == 1:
            exp2 += f32(sd[n])
        else:
            q, s = ref_q80(sd[n], gs)
            exp2 += q.numpy().tobytes() + s.numpy().tobytes()
    model_export(m, tmp_path / "v2.bin", 2)
    assert (tmp_path / "v2.bin").read_bytes() == exp2


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "q8_0", "q4_q8", "q4"])
def test_v3_header_and_aligned_arrays(tmp_path, dtype):
    args = CONFIGS["mqa_untied_vocab71"]
    args = ModelArgs(**{**args.__dict__, "rope_theta": 500000.0, "norm_eps": 1e-6})
    m = make_model(args)
    sd = m.state_dict()
    path = tmp_path / "m.bin"
    model_export(m, path, 3, dtype, group_size=64)
    b = path.read_bytes()
    magic, version, *params = struct.unpack_from("<Ii7i", b, 0)
    shared, gs, wt, theta, eps = struct.unpack_from("<BiBff", b, 36)
    assert (magic, version) == (MAGIC, 3)
    assert params == [32, 88, 2, 4, 1, 71, 24]
    assert shared == 0 and wt == {"fp32": 0, "bf16": 1, "q8_0": 2, "q4_q8": 3, "q4": 4}[dtype]
    assert gs == (8 if dtype in ("q8_0", "q4_q8", "q4") else 0)  # 88 = 8*11: the largest power of two <= 64 dividing 32 and 88
    assert theta == 500000.0 and eps == np.float32(1e-6)
    assert b[50:256] == bytes(206)
    off = 256

    def take(data):  # the next array must start at the next multiple of 64, after zero padding
        nonlocal off
        start = -(-off // 64) * 64
        assert b[off:start] == bytes(start - off)
        assert b[start:start + len(data)] == data
        off = start + len(data)

    for n in v1_order(args, shared=False):
        w = sd[n]
        if w.dim() == 1 or dtype == "fp32":
            take(f32(w))
        elif dtype == "bf16":
            take(w.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
        elif dtype == "q4" and n in CLASSIFIER:
            packed, scales, _ = ref_q6(w, gs)
            take(packed)
            take(scales)
        elif dtype.startswith("q4") and n not in CLASSIFIER:
            start = -(-off // 64) * 64
            packed = b[start:start + w.numel() // 2]
            take(packed)
            scales = b[-(-off // 64) * 64:-(-off // 64) * 64 + 4 * (w.numel() // gs)]
            take(scales)
            check_q4(packed, scales, w, gs)
        else:
            q, s = ref_q80(w, gs)
            take(q.numpy().tobytes())
            take(s.numpy().tobytes())
    assert off == len(b)


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("version,dtype", FORMATS)
def test_roundtrip_byte_identical(tmp_path, cfg, version, dtype):
    m = make_model(CONFIGS[cfg])
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    model_export(m, a, version, dtype)
    m2 = load_bin(a)
    assert not m2.training
    assert m2.args.tie_embeddings == m.args.tie_embeddings
    assert (m2.output.weight is m2.tok_embeddings.weight) == m.args.tie_embeddings
    model_export(m2, b, version, dtype)
    assert a.read_bytes() == b.read_bytes()
    # the loaded weights are what the file holds, decoded exactly
    sd, sd2 = m.state_dict(), m2.state_dict()
    gs = read_header(a)["group_size"]
    for name, w in sd.items():
        if w.dim() == 1 or dtype in (None, "fp32") and version != 2:
            want = w
        elif dtype == "bf16":
            want = w.to(torch.bfloat16).float()
        elif dtype == "q4" and name in CLASSIFIER:
            want = torch.from_numpy(ref_q6(w, gs)[2]).reshape(w.shape)
        elif dtype in ("q4", "q4_q8") and name not in CLASSIFIER:  # q4_q8's classifier: q8_0 below
            from binfile import quantize_q4
            q, s = quantize_q4(w, gs)
            check_q4(q.numpy().tobytes(), s.numpy().tobytes(), w, gs)
            want = torch.from_numpy(decode_q4(q.numpy().tobytes(), s.numpy().tobytes(), gs)[0]).reshape(w.shape)
        else:
            q, s = ref_q80(w, gs)
            want = (q.float().reshape(-1, gs) * s[:, None]).reshape(w.shape)
        assert torch.equal(sd2[name], want), name
    lg, lg2 = logits_of(m), logits_of(m2)
    if version in (0, 1) or dtype == "fp32":
        assert torch.equal(lg, lg2)
    else:  # int4 weights move the logits more
        assert (lg - lg2).abs().max() < (0.15 if dtype in ("q4", "q4_q8") else 0.05) * lg.abs().max()


def test_q8_requantising_dequantised_weights_is_stable():
    """Fresh weights get llama2.c's bytes; their dequantised values requantise to the same bytes."""
    from binfile import dequantize_q80, quantize_q80
    torch.manual_seed(1)
    w = torch.randn(20000, 64) * torch.exp(torch.randn(20000, 1) * 3)  # scales over many binades
    q, s = quantize_q80(w, 64)
    rq, rs = ref_q80(w, 64)
    assert torch.equal(q, rq) and torch.equal(s, rs)
    q2, s2 = quantize_q80(dequantize_q80(q, s, w.shape), 64)
    assert torch.equal(q2, q) and torch.equal(s2, s)


def test_q4_requantising_dequantised_weights_is_stable():
    """q4 groups read back as the format says; dequantised, they requantise to the same bytes, also
    for weights on few levels (where the two candidate scales tie) and for zero groups."""
    from binfile import dequantize_q4, quantize_q4
    torch.manual_seed(2)
    for gs in (4, 8, 32):
        w = torch.randn(3000, gs) * torch.exp(torch.randn(3000, 1) * 3)
        w[::7] = torch.randint(-2, 3, (w[::7].shape)).float()  # few distinct values per group
        w[5] = 0.0
        q, s = quantize_q4(w, gs)
        check_q4(q.numpy().tobytes(), s.numpy().tobytes(), w, gs)
        d = dequantize_q4(q, s, w.shape)
        assert np.array_equal(d.numpy(), decode_q4(q.numpy().tobytes(), s.numpy().tobytes(), gs)[0].reshape(w.shape))
        assert torch.equal(d[5], torch.zeros(gs))
        q2, s2 = quantize_q4(d, gs)
        assert torch.equal(q2, q) and torch.equal(s2, s)


def test_q6_requantising_dequantised_weights_is_stable():
    """q6 groups are the format's bytes (ref_q6, also on exact ties: round half to even); dequantised,
    they requantise to the same bytes, for scales over many binades and for zero groups."""
    from binfile import dequantize_q6, quantize_q6
    torch.manual_seed(3)
    for gs in (4, 8, 64):
        w = torch.randn(3000, gs) * torch.exp(torch.randn(3000, 1) * 3)
        w[::5] = torch.randint(-62, 63, w[::5].shape).float() / 2  # levels on exact halves: ties
        w[::5, 0] = 15.5  # scale 0.5: 2.5 steps -> 2, 3.5 -> 4
        w[7] = 0.0
        q, s = quantize_q6(w, gs)
        packed, scales, vals = ref_q6(w, gs)
        assert q.numpy().tobytes() == packed and s.numpy().tobytes() == scales
        d = dequantize_q6(q, s, w.shape)
        assert np.array_equal(d.numpy(), vals.reshape(w.shape))
        assert torch.equal(d[7], torch.zeros(gs))
        q2, s2 = quantize_q6(d, gs)
        assert torch.equal(q2, q) and torch.equal(s2, s)


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_q4_group_size_not_a_multiple_of_4_is_refused(repo, tmp_path):
    """q4's q6 classifier packs 4 weights in 3 bytes: a group size of 2 is one line, in model_export and
    export.py; q4_q8 (its classifier in q8_0) still takes it."""
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    with pytest.raises(ValueError, match="group_size 2: q4's q6 classifier packs 4 weights in 3 bytes"):
        model_export(m, tmp_path / "a.bin", 3, "q4", group_size=2)
    assert not (tmp_path / "a.bin").exists()
    model_export(m, tmp_path / "b.bin", 3, "q4_q8", group_size=2)
    assert read_header(tmp_path / "b.bin")["group_size"] == 2
    b = tmp_path / "b.bin"
    bad = tmp_path / "bad.bin"  # a q4_q8 file of group size 2 relabelled q4: refused before its size
    bad.write_bytes(b.read_bytes()[:41] + bytes([4]) + b.read_bytes()[42:])
    with pytest.raises(ValueError, match="group_size=2 must be positive, a multiple of 4"):
        read_header(bad)
    rc, _, err = _cli(repo, tmp_path / "c.bin", f"--bin={b}", "--dtype=q4", "--group_size=2")
    assert rc == 1 and err.count("\n") == 1 and "a multiple of 4" in err, err
    assert not (tmp_path / "c.bin").exists()


def test_q8_zero_group_has_zero_scale(tmp_path):
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    with torch.no_grad():
        m.tok_embeddings.weight[5] = 0.0  # llama2.c would write NaN scales (0/0) here
    model_export(m, tmp_path / "z.bin", 3, "q8_0")
    m2 = load_bin(tmp_path / "z.bin")
    assert torch.equal(m2.tok_embeddings.weight[5], torch.zeros(48))
    assert all(torch.isfinite(v).all() for v in m2.state_dict().values())


@pytest.mark.parametrize("version,dtype", FORMATS)
def test_export_never_mutates_model(tmp_path, version, dtype):
    for cfg in ("gqa_tied_vocab67", "mqa_untied_vocab71"):
        m = make_model(CONFIGS[cfg]).train()
        before = snapshot(m)
        model_export(m, tmp_path / "m.bin", version, dtype)
        after = m.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
        assert (m.output.weight is m.tok_embeddings.weight) == m.args.tie_embeddings
        assert m.training and all(p.requires_grad for p in m.parameters())


def test_bf16_model_exports_without_change(tmp_path):
    m = make_model(CONFIGS["gqa_tied_vocab67"]).to(torch.bfloat16)
    before = snapshot(m)
    model_export(m, tmp_path / "m.bin", 3, "bf16")
    assert all(v.dtype == torch.bfloat16 and torch.equal(before[k], v) for k, v in m.state_dict().items())
    m2 = load_bin(tmp_path / "m.bin")
    assert torch.equal(m2.tok_embeddings.weight, before["tok_embeddings.weight"].float())


# ------------------------------------------------------------------------------------------------
# choices export makes, and what it refuses


def test_group_size_rule():
    assert pick_group_size(64, 64, 172) == 4  # stories260K: 172 = 4*43
    assert pick_group_size(64, 48, 128) == 16
    assert pick_group_size(48, 64, 128) == 32  # not a power of two: the largest one below it
    assert pick_group_size(64, 768, 2048) == 64
    with pytest.raises(ValueError, match="hidden_dim=171"):
        pick_group_size(64, 64, 171)
    with pytest.raises(ValueError, match="group_size"):
        pick_group_size(0, 64, 128)


def test_q8_refuses_when_no_group_fits(tmp_path):
    m = make_model(ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=40, hidden_dim=81, max_seq_len=8))
    for version, dtype in ((2, None), (3, "q8_0")):
        with pytest.raises(ValueError, match="hidden_dim=81"):
            model_export(m, tmp_path / "m.bin", version, dtype)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field,value", [("rope_theta", 500000.0), ("norm_eps", 1e-6)])
def test_legacy_versions_refuse_theta_and_eps(tmp_path, field, value):
    args = ModelArgs(**{**CONFIGS["gqa_tied_vocab67"].__dict__, field: value})
    m = make_model(args)
    for version in (0, 1, 2):
        with pytest.raises(ValueError, match=f"{field}.*--version=3"):
            model_export(m, tmp_path / "m.bin", version)
    model_export(m, tmp_path / "m.bin", 3)
    m2 = load_bin(tmp_path / "m.bin")
    assert getattr(m2.args, field) == value  # 1e-6 comes back as 1e-6, not its f32 neighbour
    assert torch.equal(logits_of(m), logits_of(m2))


def test_dtype_takes_effect_and_bad_combinations_are_refused(tmp_path):
    m = make_model(CONFIGS["gqa_tied_vocab67"])  # group size 16: q8_0 is smaller than bf16
    sizes = {}
    for dtype in ("fp32", "bf16", "q8_0", "q4"):
        model_export(m, tmp_path / f"{dtype}.bin", 3, dtype)
        sizes[dtype] = os.path.getsize(tmp_path / f"{dtype}.bin")
        assert read_header(tmp_path / f"{dtype}.bin")["weight_type"] == dtype
    assert sizes["fp32"] > sizes["bf16"] > sizes["q8_0"] > sizes["q4"]
    for version, dtype in ((0, "bf16"), (1, "q8_0"), (2, "fp32"), (3, "int4")):
        with pytest.raises(ValueError, match="dtype"):
            model_export(m, tmp_path / "bad.bin", version, dtype)
    with pytest.raises(ValueError, match="version"):
        model_export(m, tmp_path / "bad.bin", 4)
    assert not (tmp_path / "bad.bin").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    import binfile
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    path = tmp_path / "m.bin"
    path.write_bytes(b"old contents")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(binfile, "quantize_q80", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        model_export(m, path, 3, "q8_0")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["m.bin"]  # no temporary file left behind


# ------------------------------------------------------------------------------------------------
# readers reject bad files with one line naming the file


def _bad_files(tmp_path):
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    model_export(m, tmp_path / "v0.bin", 0)
    model_export(m, tmp_path / "v1.bin", 1)
    model_export(m, tmp_path / "v3.bin", 3, "q8_0")
    v0, v1, v3 = ((tmp_path / f"v{i}.bin").read_bytes() for i in (0, 1, 3))

    def patched(b, off, fmt, *vals):
        b = bytearray(b)
        struct.pack_into(fmt, b, off, *vals)
        return bytes(b)

    return {
        "bad_magic": (patched(v1, 0, "<I", 0x12345678), "bad magic"),
        "unknown_version": (patched(v1, 4, "<i", 7), "unknown version 7"),
        "truncated": (v1[:-10], "truncated"),
        "truncated_header": (v1[:100], "truncated"),
        "tiny": (v1[:12], "truncated"),
        "too_long": (v1 + b"\0", "does not match"),
        "v0_too_long": (v0 + b"\0" * 4, "does not match"),
        "v0_truncated": (v0[:-4], "truncated"),
        "v0_insane": (patched(v0, 0, "<i", -5), "bad magic"),
        "bad_kv_heads": (patched(v1, 24, "<i", 4), "n_kv_heads=4"),
        "bad_shared_byte": (patched(v1, 36, "<B", 2), "shared_classifier"),
        "bad_weight_type": (patched(v3, 41, "<B", 9), "weight_type 9"),
        "bad_group_size": (patched(v3, 37, "<i", 3), "group_size=3"),
        "bad_theta": (patched(v3, 42, "<f", -1.0), "rope_theta"),
        "empty": (b"", "truncated"),
        # max_seq_len is not part of a v1/v3 file's size: a 30 KB file claiming 2^24-1 positions
        "huge_seq_len": (patched(v1, 32, "<i", (1 << 24) - 1), "max_seq_len=16777215: its KV cache would take"),
        "huge_layers": (patched(v3, 16, "<i", (1 << 24) - 1), "implies at least"),
    }


def test_readers_reject_bad_files(tmp_path):
    for name, (data, why) in _bad_files(tmp_path).items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        with pytest.raises(ValueError) as e:
            load_bin(path)
        msg = str(e.value)
        assert str(path) in msg and why in msg and "\n" not in msg, (name, msg)


@pytest.mark.slow  # processes of their own
def test_flipped_n_layers_is_refused_without_memory(tmp_path):
    """One bit flip in n_layers (1 -> 2^23 + 1) made the reader list 9 arrays per layer before comparing
    sizes (gigabytes, then MemoryError). Now refused in O(1): under a 1 GB address-space limit, at once."""
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    model_export(m, tmp_path / "v1.bin", 1)
    raw = bytearray((tmp_path / "v1.bin").read_bytes())
    struct.pack_into("<i", raw, 16, struct.unpack_from("<i", raw, 16)[0] ^ (1 << 23))
    (tmp_path / "flipped.bin").write_bytes(raw)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "import export; sys.exit(export.main())")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o.bin"), f"--bin={tmp_path / 'flipped.bin'}"],
                       capture_output=True, text=True, timeout=60, cwd=os.path.dirname(export_path()))
    err = r.stderr.strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err[-2000:]
    assert "flipped.bin: truncated" in err and "implies at least" in err, err


def export_path():
    import export
    return export.__file__


@pytest.mark.slow  # processes of their own
def test_fifo_sources_do_not_hang(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for flag in ("--bin", "--checkpoint"):
        r = subprocess.run([sys.executable, export_path(), str(tmp_path / "o.bin"), f"{flag}={fifo}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "not a regular file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# the real stories260K.bin (legacy v0) from the llama2.c ecosystem


def test_stories260K_loads_reexports_and_tells_its_story(shared, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    src = shared / "models" / "stories260K.bin"
    m = load_bin(src)
    a = m.args
    assert (a.dim, ffn_hidden_dim(a), a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.max_seq_len) == \
        (64, 172, 5, 8, 4, 512, 512)
    assert a.tie_embeddings
    model_export(m, tmp_path / "again.bin", 0)
    digest = hashlib.sha256((tmp_path / "again.bin").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(src.read_bytes()).hexdigest()
    sp = spm.SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))
    out = m.generate(torch.tensor([[1]]), 60, temperature=0.0)[0].tolist()
    text = sp.decode(out)
    assert text.startswith("Once upon a time, there was a little girl named Lily. She loved to play outside "
                           "in the park. One day, she saw a big, red ball."), text
    # the same model through v3: same logits
    model_export(m, tmp_path / "v3.bin", 3)
    assert torch.equal(logits_of(m, 32), logits_of(load_bin(tmp_path / "v3.bin"), 32))


# ------------------------------------------------------------------------------------------------
# command line


def _cli(repo, *args):
    r = subprocess.run([sys.executable, str(repo / "export.py"), *map(str, args)], capture_output=True, text=True,
                       cwd=repo)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.slow  # processes of their own
def test_cli_checkpoint_bin_and_errors(repo, tmp_path):
    import dataclasses
    m = make_model(CONFIGS["mqa_untied_vocab71"])
    # a torch.compile'd model's state dict has the _orig_mod. prefix; train.py saves more than we read
    sd = {"_orig_mod." + k: v for k, v in m.state_dict().items()}
    ckpt = {"model": sd, "model_args": dataclasses.asdict(m.args), "iter_num": 3, "optimizer": {},
            "config": {}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    rc, out, err = _cli(repo, tmp_path / "a.bin", f"--checkpoint={tmp_path / 'ckpt.pt'}", "--dtype=bf16")
    assert rc == 0, err
    model_export(m, tmp_path / "direct.bin", 3, "bf16")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "direct.bin").read_bytes()
    rc, out, err = _cli(repo, tmp_path / "b.bin", f"--bin={tmp_path / 'a.bin'}", "--version=2", "--group_size=32")
    assert rc == 0, err
    h = read_header(tmp_path / "b.bin")
    assert (h["version"], h["group_size"]) == (2, 8)  # 32 -> 8: hidden_dim 88 = 8*11
    # errors: one line on stderr, exit status 1 for a file, 2 for the command line (as argparse's)
    (tmp_path / "junk.bin").write_bytes(b"\x01" * 300)
    for args, why, status in (([tmp_path / "c.bin", f"--bin={tmp_path / 'junk.bin'}"], "junk.bin", 1),
                              ([tmp_path / "c.bin", f"--bin={tmp_path / 'missing.bin'}"], "missing.bin", 1),
                              ([tmp_path / "c.bin", f"--checkpoint={tmp_path / 'junk.bin'}"], "junk.bin", 1),
                              ([tmp_path / "c.bin", f"--bin={tmp_path / 'a.bin'}", "--dtype=int4"], "--dtype", 2),
                              ([tmp_path / "c.bin", f"--bin={tmp_path / 'a.bin'}", "--version=1", "--dtype=bf16"],
                               "dtype", 1),
                              ([tmp_path / "c.bin"], "source", 2),
                              ([f"--bin={tmp_path / 'a.bin'}"], "output", 2)):
        rc, out, err = _cli(repo, *args)
        assert rc == status and why in err and len(err.strip().splitlines()) == 1, (args, rc, err)
    assert not (tmp_path / "c.bin").exists()
    # a misspelt flag gets the closest ones
    rc, out, err = _cli(repo, tmp_path / "c.bin", f"--chekpoint={tmp_path / 'ckpt.pt'}")
    assert rc == 2 and err.strip().endswith("unrecognized arguments: --chekpoint=" + str(tmp_path / "ckpt.pt")
                                            + "; closest: --checkpoint"), err
    rc, out, err = _cli(repo, tmp_path / "c.bin", f"--bin={tmp_path / 'a.bin'}", "--group-size=32")
    assert rc == 2 and "closest: --group_size" in err, err
    # a missing output folder is created
    rc, out, err = _cli(repo, tmp_path / "new" / "dir" / "m.bin", f"--bin={tmp_path / 'a.bin'}", "--dtype=bf16")
    assert rc == 0 and (tmp_path / "new" / "dir" / "m.bin").read_bytes() == (tmp_path / "a.bin").read_bytes(), err


@pytest.mark.slow  # processes of their own
def test_cli_refuses_nonfinite_weights_unless_asked(repo, tmp_path):
    """A diverged checkpoint exports to a file that can only give NaN logits: refused, naming the weight,
    unless --allow_nonfinite."""
    import dataclasses
    m = make_model(CONFIGS["gqa_tied_vocab67"])
    sd = m.state_dict()
    sd["layers.1.feed_forward.w2.weight"][3, :4] = torch.tensor([float("nan"), float("inf"), 1.0, -float("inf")])
    torch.save({"model": sd, "model_args": dataclasses.asdict(m.args), "config": {}}, tmp_path / "nan.pt")
    for out in ([tmp_path / "m.bin"], [f"--to_hf={tmp_path / 'hf'}"]):
        rc, _, err = _cli(repo, *out, f"--checkpoint={tmp_path / 'nan.pt'}")
        assert rc == 1 and err.strip() == (f"export.py: error: {tmp_path / 'nan.pt'}: layers.1.feed_forward.w2.weight "
                                           "has 3 NaN or infinite values (a diverged run?); pass --allow_nonfinite "
                                           "to export it anyway"), err
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "hf").exists()
    rc, _, err = _cli(repo, tmp_path / "m.bin", f"--checkpoint={tmp_path / 'nan.pt'}", "--allow_nonfinite")
    assert rc == 0, err
    assert torch.isnan(load_bin(tmp_path / "m.bin").state_dict()["layers.1.feed_forward.w2.weight"][3, 0])


@pytest.mark.slow  # processes of their own
def test_runtime_needs_neither_transformers_nor_safetensors(repo):
    code = ("import sys, export; bad = [m for m in ('transformers', 'safetensors') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------------
# GPTQ (export.py --gptq)


def test_gptq_moves_the_layer_output_less_than_rounding_to_nearest():
    """On inputs with correlated features, GPTQ's q4 values change X @ W.T by much less than rounding each
    weight to nearest, and they are q4 values: requantising them gives them back."""
    from binfile import dequantize_q4, gptq_q4, quantize_q4
    g = torch.Generator().manual_seed(0)
    rows, cols, gs = 48, 192, 32
    w = torch.randn(rows, cols, generator=g) * 0.05
    x = torch.randn(2048, 16, generator=g) @ torch.randn(16, cols, generator=g)  # rank 16: correlated inputs
    x += 0.1 * torch.randn(2048, cols, generator=g)
    x[:, 5] = 0.0  # a dead input: its weights must not matter
    got = gptq_q4(w, x.double().T @ x.double(), gs)
    rtn = dequantize_q4(*quantize_q4(w, gs), w.shape)
    err_gptq, err_rtn = (x @ (got - w).T).norm(), (x @ (rtn - w).T).norm()
    assert err_gptq < 0.6 * err_rtn, (err_gptq, err_rtn)
    assert (got[:, 5] == 0).all()
    again = dequantize_q4(*quantize_q4(got, gs), w.shape)
    assert (again != got).float().mean() < 0.01
    assert torch.isfinite(got).all()


def _shards(tmp_path, vocab_size, n_tokens):
    import dataloader
    folder = dataloader.shard_dir(vocab_size, "custom", tmp_path / "data")
    folder.mkdir(parents=True)
    toks = np.random.default_rng(1).integers(0, vocab_size, n_tokens).astype("<u2")
    head = dataloader.pack_header(vocab_size, 1, 2, n_tokens, 1, n_tokens, "00" * 32)
    (folder / "train_0000.bin").write_bytes(head + toks.tobytes())


@pytest.mark.slow  # processes of their own
def test_cli_gptq_q4_from_the_checkpoints_shards(repo, tmp_path):
    import dataclasses
    m = make_model(CONFIGS["mqa_untied_vocab71"])
    cfg = {"vocab_source": "custom", "data_dir": str(tmp_path / "data")}
    torch.save({"model": m.state_dict(), "model_args": dataclasses.asdict(m.args), "config": cfg},
               tmp_path / "ckpt.pt")
    ck = f"--checkpoint={tmp_path / 'ckpt.pt'}"
    rc, _, err = _cli(repo, tmp_path / "g.bin", ck, "--dtype=q4", "--gptq=8")
    assert rc == 1 and "no train shards in" in err and "\n" not in err.strip(), err
    _shards(tmp_path, m.args.vocab_size, 4000)
    rc, _, err = _cli(repo, tmp_path / "g.bin", ck, "--dtype=q4", "--gptq=8")
    assert rc == 0, err
    rc, _, err = _cli(repo, tmp_path / "r.bin", ck, "--dtype=q4")
    assert rc == 0, err
    g, r = load_bin(tmp_path / "g.bin").state_dict(), load_bin(tmp_path / "r.bin").state_dict()
    assert read_header(tmp_path / "g.bin")["weight_type"] == read_header(tmp_path / "r.bin")["weight_type"] == "q4"
    assert torch.equal(g["tok_embeddings.weight"], r["tok_embeddings.weight"])  # q6 in both: not GPTQ's
    assert not torch.equal(g["layers.0.feed_forward.w1.weight"], r["layers.0.feed_forward.w1.weight"])
    # GPTQ's file is a canonical q4 file: re-exporting it gives the same bytes
    rc, _, err = _cli(repo, tmp_path / "again.bin", f"--bin={tmp_path / 'g.bin'}", "--dtype=q4")
    assert rc == 0 and (tmp_path / "again.bin").read_bytes() == (tmp_path / "g.bin").read_bytes(), err
    for bad in (["--gptq=8"], ["--dtype=q8_0", "--gptq=8"], ["--dtype=q4", "--gptq=-1"]):
        rc, _, err = _cli(repo, tmp_path / "x.bin", ck, *bad)
        assert rc != 0 and "--gptq" in err and "\n" not in err.strip(), (bad, err)


def test_llama2c_model_exports_twice_into_one_folder(shared, tmp_path, capsys):
    """stories260K's tokenizer (llama2.c's file) carries no identity: the file export writes beside the model
    is the same bytes each time, so a second export into the folder (another dtype, or the same again)
    goes through, where it used to be refused as "another tokenizer"."""
    import export
    src = shared / "models" / "stories260K.bin"
    for dtype in ("q8_0", "q4", "q4"):
        assert export.main([str(tmp_path / f"s_{dtype}.bin"), f"--bin={src}", f"--dtype={dtype}"]) in (0, None)
    assert (tmp_path / "tok512.bin").exists() and (tmp_path / "s_q4.bin").exists()

"""run.c against PyTorch and sentencepiece.

Logits at every position for every .bin format (v0, v1, v2, v3 fp32/bf16/q8_0/q4), greedy generation,
llama2.c's sampler stream, the BPE encoder against sentencepiece, chat mode, int8/int4/bf16 quality
on real text, the vector kernels against the plain C ones, the fp16 conversions of the KV cache of
quantised models against numpy, and a sanitizer build. The builds are made once per session:
`runplain` (portable: plain C kernels, one thread), `run` (this CPU's vector kernels + OpenMP), and
where this machine can run them `runavx2` (AVX2 + FMA), `runavxvnni` (+ AVX-VNNI) and, under
qemu-aarch64 when the cross compiler is installed, `runarm_neon` and `runarm_dot` (NEON, + dot
product). Every check runs on runplain and run; the other builds (slow tier) run the kernel checks
(logits against PyTorch and runplain, prompt batches, greedy generation) on one case per weight format,
and the documented samples.
"""
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from binfile import QUANTISED as QUANTISED_TYPES, load_bin, model_export, read_header
from conftest import PLAIN_BUILD, SANITIZED, VECTOR_BUILD, build
from machine import cpu_flags
from model import ModelArgs, Transformer
from prompts import prompts

REPO = Path(__file__).resolve().parent.parent


FLAGS = cpu_flags()
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]  # runs the aarch64 builds, with Debian's cross libc
ARM = bool(shutil.which("aarch64-linux-gnu-gcc") and shutil.which(QEMU[0]))
HOST_BUILDS = [PLAIN_BUILD, VECTOR_BUILD]  # plain kernels; this CPU's vector kernels + threads (conftest)
# the other kernel families this machine can run (slow tier: one more build each, the ARM ones under qemu)
OTHER_BUILDS = [] if SANITIZED else ((["runavx2"] if {"avx2", "fma", "f16c"} <= FLAGS else [])
                                     + (["runavxvnni"] if {"avx2", "fma", "f16c", "avx_vnni"} <= FLAGS else [])
                                     + (["runarm_neon", "runarm_dot"] if ARM else []))
BUILDS = HOST_BUILDS + OTHER_BUILDS


def other_builds(*marks):
    """OTHER_BUILDS as parameters, the ones run under qemu in the CI tier."""
    return [pytest.param(b, marks=[*marks, *([pytest.mark.ci] if b.startswith("runarm") else [])])
            for b in OTHER_BUILDS]

# GQA, MQA and MHA; tied and untied; odd vocab sizes; q8_0 group sizes 64 (vnni), 32 (vnni) and
# 4 (plain fallback); fp32 tails (dim 48, hidden 100, head size 12); rope_theta/norm_eps only in
# v3; "wide" is big enough that every matmul and the attention of late positions run threaded.
CONFIGS = {
    "gqa_tied_v97": ModelArgs(dim=64, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=97, max_seq_len=40),
    "mqa_untied_v131": ModelArgs(dim=48, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=131, hidden_dim=100,
                                 max_seq_len=40, tie_embeddings=False),
    "mha_gs32_theta": ModelArgs(dim=96, n_layers=2, n_heads=6, vocab_size=300, hidden_dim=256, max_seq_len=40,
                                rope_theta=5000.0, norm_eps=1e-6, tie_embeddings=False),
    "wide_threads": ModelArgs(dim=512, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=1001, hidden_dim=128,
                              max_seq_len=160),
    # q8_0/q4 group sizes 8 and 16 (the small-group kernels), rows that end in part of a 32-byte chunk
    "gs8": ModelArgs(dim=40, n_layers=1, n_heads=4, vocab_size=89, hidden_dim=104, max_seq_len=24),
    "gs16": ModelArgs(dim=48, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=75, hidden_dim=112, max_seq_len=24),
}
FORMATS = ["v0", "v1", "v2", "v3_fp32", "v3_bf16", "v3_q8_0", "v3_q4"]
QUANTISED = ("v2", "v3_q8_0", "v3_q4")  # formats whose matmul inputs run.c quantises to int8
ATOL = 1e-4


def fmt_args(fmt):
    version = int(fmt[1])
    return version, (fmt[3:] if version == 3 else None)


def legacy_ok(args, fmt):
    """v0..v2 hold only the default rope_theta and norm_eps."""
    return fmt.startswith("v3") or (args.rope_theta == 10000.0 and args.norm_eps == 1e-5)


def make_model(args, seed=0):
    torch.manual_seed(seed)
    m = Transformer(args)
    with torch.no_grad():  # norms away from 1, so a misplaced norm shows
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return m.eval()


def fake_quant_inputs(model, group_size):
    """Make `model` quantise every matmul input the way run.c's q8_0 and q4 paths do (per group of
    group_size: scale = max|x|/127, q = x * (1/scale) rounded half away from zero), so that its
    logits are run.c's up to float summation order. Returns the hook handles."""
    def hook(mod, args):
        x = args[0]
        g = x.reshape(*x.shape[:-1], -1, group_size)
        scale = g.abs().amax(-1, keepdim=True) / 127.0
        inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        v = g * inv
        q = torch.trunc(v + torch.where(v >= 0, 0.5, -0.5))
        return ((q * scale).reshape(x.shape),)
    return [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]


class F16KVCache(torch.overrides.TorchFunctionMode):
    """Attention sees k and v rounded to fp16, as run.c's KV cache holds them for q8_0 and q4 models
    (rounding on use equals rounding on store: it is idempotent)."""
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v, *rest = args
            args = (q, k.half().float(), v.half().float(), *rest)
        return func(*args, **(kwargs or {}))


def reference_for(path):
    """The PyTorch model run.c should match for a .bin: its weights as stored (load_bin), with
    run.c's activation quantisation and fp16 KV cache emulated for q8_0 and q4 files."""
    h = read_header(path)
    ref = load_bin(path)
    if h["weight_type"] in QUANTISED_TYPES:
        fake_quant_inputs(ref, h["group_size"])
        forward = ref.forward

        def forward_f16kv(*args, **kwargs):
            with F16KVCache():
                return forward(*args, **kwargs)
        ref.forward = forward_f16kv  # nn.Module.__call__ (and so generate) calls the instance's forward
    return ref


def command(binary):
    """The command line that runs a build here: the aarch64 ones under qemu."""
    return [*(QEMU if binary.startswith("runarm") else []), str(REPO / binary)]


def run_c(binary, *args, check=True, **kw):
    """A build run on args. OMP_DYNAMIC=false keeps every thread on, however busy the machine, so
    that the threaded code is what the checks see (run.c otherwise leaves busy cores out)."""
    kw.setdefault("env", dict(os.environ, OMP_DYNAMIC="false"))
    r = subprocess.run([*command(binary), *map(str, args)], capture_output=True, timeout=300, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{binary} {args[:3]}... failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


def c_logits(binary, path, ids, tmp_path, **kw):
    out = tmp_path / f"logits_{binary}_{os.getpid()}.bin"
    run_c(binary, path, "-m", "logits", "-i", " ".join(map(str, ids)), "-o", out, **kw)
    return np.fromfile(out, np.float32).reshape(len(ids), -1)


def write_tokenizer(path, pieces, scores=None):
    """A llama2.c tokenizer .bin from a list of byte strings."""
    scores = scores or [0.0] * len(pieces)
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(p) for p in pieces)))
        for p, s in zip(pieces, scores):
            f.write(struct.pack("<fi", s, len(p)) + p)


def read_tokenizer(path):
    raw = Path(path).read_bytes()
    pieces, off = [], 4
    while off < len(raw):
        _, n = struct.unpack_from("<fi", raw, off)
        pieces.append(raw[off + 8:off + 8 + n])
        off += 8 + n
    return pieces


def decode_like_run(pieces, ids):
    """The bytes run.c prints for ids (ids[0] = BOS): the dummy space after BOS dropped, <0xHH>
    pieces as their byte (control bytes skipped)."""
    out = b""
    for prev, nxt in zip(ids, ids[1:]):
        p = pieces[nxt]
        m = re.fullmatch(rb"<0x([0-9A-F]{2})>", p)
        if m:
            b = int(m.group(1), 16)
            if b >= 0x80 or chr(b).isprintable() or chr(b).isspace():
                out += bytes([b])
            continue
        if prev == 1 and p.startswith(b" "):
            p = p[1:]
        out += p
    return out + b"\n"


def greedy_python(model, steps, prompt=()):
    """[BOS, *prompt] + model.generate greedy, cut at the first BOS/EOS after it: what run.c -n steps
    prints (steps forward passes, each followed by one token, the prompt's included)."""
    ids = model.generate(torch.tensor([[1, *prompt]]), steps - len(prompt), temperature=0.0)[0].tolist()
    for i in range(1 + len(prompt), len(ids)):
        if ids[i] in (1, 2):
            return ids[:i]
    return ids


# -----------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def builds():
    """The two builds every C test runs: the plain kernels and this CPU's."""
    build(*HOST_BUILDS)
    return HOST_BUILDS


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """{config: (model, {format: path})} for every config and format."""
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, args in CONFIGS.items():
        model = make_model(args)
        paths = {}
        for fmt in FORMATS:
            if legacy_ok(args, fmt):
                version, dtype = fmt_args(fmt)
                paths[fmt] = d / f"{name}_{fmt}.bin"
                model_export(model, paths[fmt], version=version, dtype=dtype)
        out[name] = (model, paths)
    return out


@pytest.fixture(scope="session")
def stories(shared, tmp_path_factory):
    """stories260K (v0, as shipped) and its re-exports: {name: path}, plus the tokenizer paths."""
    d = tmp_path_factory.mktemp("stories")
    src = shared / "models" / "stories260K.bin"
    model = load_bin(src)
    paths = {"v0": src}
    for fmt in ("v2", "v3_bf16", "v3_q8_0", "v3_q4"):
        version, dtype = fmt_args(fmt)
        paths[fmt] = d / f"stories260K_{fmt}.bin"
        model_export(model, paths[fmt], version=version, dtype=dtype)
    return paths


@pytest.fixture(scope="session")
def llama_vocab_model(tmp_path_factory):
    """A tiny random model with the Llama 2 tokenizer's 32000-token vocabulary."""
    path = tmp_path_factory.mktemp("v32000") / "tiny32000.bin"
    model_export(make_model(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=32000, max_seq_len=256)), path,
                 version=1)
    return path


# -----------------------------------------------------------------------------
# logits: C against PyTorch, vector kernels against plain ones


# wide_threads is the big one: its cases are in the slow tier
CASES = [pytest.param(c, f, marks=[pytest.mark.slow] if c == "wide_threads" else [])
         for c in CONFIGS for f in FORMATS if legacy_ok(CONFIGS[c], f)]
# the other builds run one case per weight format (fp32, bf16, q8_0, q4), and the small-group kernels
OTHER_CASES = [("gqa_tied_v97", "v1"), ("gqa_tied_v97", "v3_bf16"), ("gqa_tied_v97", "v3_q8_0"),
               ("gqa_tied_v97", "v3_q4"), ("gs8", "v3_q8_0"), ("gs16", "v3_q4")]


def slow_if_wide(cfgs):
    return [pytest.param(c, marks=[pytest.mark.slow] if c == "wide_threads" else []) for c in cfgs]


def check_logits(binaries, model, path, fmt, tmp_path):
    """Every position's logits from each build against PyTorch (reference_for) and the plain build."""
    T = model.args.max_seq_len  # every position up to the full context
    ids = torch.randint(0, model.args.vocab_size, (1, T), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = reference_for(path)(ids)[0][0].numpy()
        orig = model(ids)[0][0].numpy()
    if fmt in ("v0", "v1", "v3_fp32"):
        np.testing.assert_array_equal(want, orig)  # fp32 files hold the model exactly
    # q8_0 quantises activations: an activation 1e-7 from a rounding boundary lands on either
    # side depending on summation order, moving logits by one quantum (~1% of their spread) from
    # there on. Such flips are rare but can happen anywhere, so q8_0 gets a spread-relative bound.
    q8 = fmt in QUANTISED
    tol = 0.05 * want.std() if q8 else ATOL
    results = {b: c_logits(b, path, ids[0].tolist(), tmp_path) for b in binaries}
    for b, got in results.items():
        err = np.abs(got - want).max()
        assert err < tol, f"{b} {path.name}: max |C - PyTorch| = {err:.3g}"
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
        # every vector build against the plain kernels: the same numbers up to rounding
        diff = np.abs(got - results[PLAIN_BUILD]).max()
        assert diff < (tol if q8 else 2e-5), f"{b} against the plain build, {path.name}: {diff:.3g}"
        # and the quantised files stay close to the fp32 model itself
        rel = np.abs(got - orig).max() / orig.std()
        bound = {"v3_bf16": 0.02, "v2": 0.15, "v3_q8_0": 0.15, "v3_q4": 1.0}.get(fmt, 1e-4)
        assert rel < bound, (b, rel)


def check_prompt_batches(binaries, model, path, tmp_path):
    """-m logits runs the ids as batches of up to 128 tokens, through the tile kernels (several tokens at a time,
    the rest one by one); each position's logits are the same bits as when that position is the last
    of a shorter run (other batches, other tiles, another split over threads)."""
    T = model.args.max_seq_len
    ids = torch.randint(0, model.args.vocab_size, (T,), generator=torch.Generator().manual_seed(3)).tolist()
    for b in binaries:
        full = c_logits(b, path, ids, tmp_path)
        for k in (1, 5, T // 2, T - 1):
            assert np.array_equal(c_logits(b, path, ids[:k], tmp_path)[-1], full[k - 1]), (b, k)


def check_greedy(binaries, model, path, tmp_path):
    """Greedy generation from a text prompt prints what PyTorch's greedy ids decode to."""
    V, steps = model.args.vocab_size, model.args.max_seq_len - 1  # the last token lands at max_seq_len - 1
    # a tokenizer where token i >= 3 is " " + one CJK character: any id sequence is a text prompt
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [(" " + chr(0x4E00 + i)).encode() for i in range(3, V)]
    tok = tmp_path / "tok.bin"
    write_tokenizer(tok, pieces)
    ref = reference_for(path)
    rnd = random.Random(0)
    for _ in range(20):  # a prompt the random model continues for a while before a stop token
        prompt = [rnd.randrange(3, V) for _ in range(4)]
        with torch.no_grad():
            want = greedy_python(ref, steps, prompt)
        if len(want) > 15:
            break
    assert len(want) > 15
    text = "".join(pieces[i].decode() for i in prompt)
    for b in binaries:
        r = run_c(b, path, "-z", tok, "-t", 0, "-n", steps, "-i", text)
        assert r.stdout == decode_like_run(pieces, want), b
        assert re.search(rb"achieved tok/s: [0-9.]+", r.stderr)


@pytest.mark.parametrize("cfg,fmt", CASES)
def test_logits_match_pytorch(builds, tiny, cfg, fmt, tmp_path):
    model, paths = tiny[cfg]
    check_logits(builds, model, paths[fmt], fmt, tmp_path)


@pytest.mark.parametrize("fmt", ["v3_fp32", "v3_bf16", "v3_q8_0", "v3_q4"])
@pytest.mark.parametrize("cfg", slow_if_wide(["gqa_tied_v97", "mha_gs32_theta", "wide_threads"]))
def test_prompt_batches_give_the_same_bits(builds, tiny, cfg, fmt, tmp_path):
    model, paths = tiny[cfg]
    check_prompt_batches(builds, model, paths[fmt], tmp_path)


@pytest.mark.parametrize("fmt", ["v1", "v3_bf16", "v3_q8_0", "v3_q4"])
@pytest.mark.parametrize("cfg", slow_if_wide(["gqa_tied_v97", "mqa_untied_v131", "wide_threads"]))
def test_greedy_generation_matches_python(builds, tiny, cfg, fmt, tmp_path):
    model, paths = tiny[cfg]
    check_greedy(builds, model, paths[fmt], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("cfg,fmt", OTHER_CASES)
@pytest.mark.parametrize("binary", other_builds() or [pytest.param(None, marks=pytest.mark.skip(
    reason="this machine runs no other kernel family (AVX2, AVX-VNNI, or NEON under qemu)"))])
def test_other_kernel_families(builds, tiny, binary, cfg, fmt, tmp_path):
    """The AVX2, AVX-VNNI and NEON builds (those this machine can run) on one case per weight format:
    logits against PyTorch and the plain kernels, prompt batches, greedy generation."""
    build(binary)
    model, paths = tiny[cfg]
    check_logits([PLAIN_BUILD, binary], model, paths[fmt], fmt, tmp_path)
    check_prompt_batches([binary], model, paths[fmt], tmp_path)
    check_greedy([binary], model, paths[fmt], tmp_path)


@pytest.mark.parametrize("which", ["wv", "wk"])
def test_q8_fp16_kv_cache_never_overflows(builds, tmp_path, which):
    """q8_0 models keep k and v in fp16 (|x| <= 65504). A model whose values (or keys) in its second layer
    are ~1e6 used to store infinities and output garbage; run.c switches that run's cache to fp32 and
    recomputes the position, so it matches PyTorch with run.c's activation quantisation and an fp32 cache."""
    args = CONFIGS["gqa_tied_v97"]
    model = make_model(args)
    with torch.no_grad():
        w = getattr(model.layers[1].attention, which).weight
        w.mul_(2e6 / w.abs().max())  # |k| or |v| well past 65504 at every position
    path = tmp_path / f"big_{which}_q8.bin"
    model_export(model, path, version=3, dtype="q8_0")
    ids = torch.randint(0, args.vocab_size, (1, args.max_seq_len), generator=torch.Generator().manual_seed(7))
    ref = load_bin(path)
    fake_quant_inputs(ref, read_header(path)["group_size"])  # the fp32 cache: no F16KVCache here
    with torch.no_grad():
        want = ref(ids)[0][0].numpy()
        assert np.isfinite(want).all()
        with F16KVCache():  # what an fp16 cache would hold: infinities
            assert not np.isfinite(ref(ids)[0][0].numpy()).all()
    for b in builds:
        out = tmp_path / f"logits_{b}.bin"
        r = run_c(b, path, "-m", "logits", "-i", " ".join(map(str, ids[0].tolist())), "-o", out)
        got = np.fromfile(out, np.float32).reshape(args.max_seq_len, -1)
        err = np.abs(got - want).max()
        assert err < 0.05 * want.std(), f"{b}: max |C - PyTorch| = {err:.3g}"
        assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
        assert b"beyond fp16's range at position 0: KV cache switched to fp32" in r.stderr, r.stderr


def test_threads_follow_free_cores_and_outputs_do_not(builds, tiny, tmp_path):
    """With a busy-looping job beside it and OMP_DYNAMIC unset, run.c moves between 1 and 2 threads as
    it finds the cores free or taken (see free_cores); the tokens stay those of the fixed run."""
    model, paths = tiny["wide_threads"]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {k: v for k, v in os.environ.items() if k != "OMP_DYNAMIC"}
        for fmt in ("v1", "v3_q4"):
            ids = [i % model.args.vocab_size for i in range(3, 3 + model.args.max_seq_len)]
            adaptive = c_logits(VECTOR_BUILD, paths[fmt], ids, tmp_path, env=env)
            fixed = c_logits(VECTOR_BUILD, paths[fmt], ids, tmp_path)
            assert np.array_equal(adaptive, fixed)
    finally:
        hog.kill()
        hog.wait()


# -----------------------------------------------------------------------------
# stories260K: the llama2.c reference model and its documented samples


def test_stories260K_greedy_python_equals_c(builds, stories, shared):
    pieces = read_tokenizer(shared / "models" / "tok512.bin")
    with torch.no_grad():
        want = greedy_python(load_bin(stories["v0"]), 256)
    text = decode_like_run(pieces, want)
    assert text.startswith(b"Once upon a time, there was a little girl named Lily.")
    for b in builds:
        assert run_c(b, stories["v0"], "-z", shared / "models" / "tok512.bin", "-t", 0, "-n", 256).stdout == text


@pytest.mark.parametrize("binary", HOST_BUILDS + other_builds(pytest.mark.slow))
def test_stories260K_documented_samples(builds, stories, binary):
    build(binary)
    # no -z: tok512.bin is found beside the checkpoint
    r = run_c(binary, stories["v0"], "-t", "1.0", "-p", "0.9", "-s", "133742")
    assert r.stdout.startswith(b"Once upon a time, there was a little boy named Timmy. Timmy loved to play with "
                               b"his toys and eat sandwiches."), r.stdout[:200]
    r = run_c(binary, stories["v0"], "-t", "0")
    assert r.stdout.startswith(b"Once upon a time, there was a little girl named Lily. She loved to play outside "
                               b"in the park."), r.stdout[:200]
    r = run_c(binary, stories["v0"], "-t", "0", "-i", "Once upon a time, a cat")
    assert r.stdout.startswith(b"Once upon a time, a cat")


def llama2c_sample(logits, temperature, topp, state):
    """llama2.c's sample() in numpy fp32, for one position; returns (token, new rng state)."""
    M = (1 << 64) - 1
    if temperature == 0:
        return int(np.argmax(logits)), state
    x = (logits / np.float32(temperature)).astype(np.float32)
    e = np.exp(x - x.max()).astype(np.float32)
    p = (e / np.cumsum(e, dtype=np.float32)[-1]).astype(np.float32)
    state ^= state >> 12
    state ^= (state << 25) & M
    state ^= state >> 27
    coin = np.float32(((state * 0x2545F4914F6CDD1D) & M) >> 40) / np.float32(16777216.0)
    n = len(p)
    if topp <= 0 or topp >= 1:
        cdf = np.cumsum(p, dtype=np.float32)
        i = int(np.searchsorted(cdf, coin, side="right"))
        return min(i, n - 1), state
    cutoff = np.float32((1.0 - np.float32(topp)) / (n - 1))
    idx = [i for i in range(n) if p[i] >= cutoff]
    idx.sort(key=lambda i: (-p[i], i))
    cum, last = np.float32(0), len(idx) - 1
    for j, i in enumerate(idx):
        cum = np.float32(cum + p[i])
        if cum > topp:
            last = j
            break
    r, cdf = np.float32(coin * cum), np.float32(0)
    for i in idx[:last + 1]:
        cdf = np.float32(cdf + p[i])
        if r < cdf:
            return i, state
    return idx[last], state


@pytest.mark.parametrize("temperature,topp,seed", [(1.0, 0.9, 42), (0.8, 0.0, 7), (1.3, 0.5, 123456789)])
def test_sampler_is_llama2c(builds, stories, shared, tmp_path, temperature, topp, seed):
    """Each sampled token is what llama2.c's procedure picks from the logits run.c computes."""
    tok = shared / "models" / "tok512.bin"
    r = run_c(VECTOR_BUILD, stories["v0"], "-z", tok, "-t", temperature, "-p", topp, "-s", seed, "-n", 40)
    r_plain = run_c(PLAIN_BUILD, stories["v0"], "-z", tok, "-t", temperature, "-p", topp, "-s", seed, "-n", 40)
    assert r.stdout == r_plain.stdout
    # recover the ids: re-tokenising the text is not exact, so replay with the logits instead
    ids, state = [1], seed
    pieces = read_tokenizer(tok)
    while len(ids) < 41:  # -n 40: 40 tokens after BOS (each step is a process: the quick tier's budget)
        logits = c_logits(VECTOR_BUILD, stories["v0"], ids, tmp_path)[-1]
        nxt, state = llama2c_sample(logits, temperature, topp, state)
        if nxt in (1, 2):
            break
        ids.append(nxt)
        if not r.stdout.startswith(decode_like_run(pieces, ids)[:-1]):
            pytest.fail(f"diverged at token {len(ids) - 1}: {decode_like_run(pieces, ids)[-60:]!r}")
    assert decode_like_run(pieces, ids) == r.stdout


def test_top_k_only_picks_top_k(builds, stories, shared, tmp_path):
    tok = shared / "models" / "tok512.bin"
    pieces = read_tokenizer(tok)
    r = run_c(VECTOR_BUILD, stories["v0"], "-z", tok, "-t", 1.5, "-k", 3, "-p", 1.0, "-s", 5, "-n", 30)
    # walk the text greedily through the top-3 candidates the logits allow at each step
    ids, rest = [1], r.stdout[:-1]
    while rest:
        logits = c_logits(VECTOR_BUILD, stories["v0"], ids, tmp_path)[-1]
        top3 = np.argsort(-logits)[:3].tolist()
        for cand in top3:
            piece = decode_like_run(pieces, [ids[-1], cand])[:-1]
            if piece and rest.startswith(piece):
                ids.append(cand)
                rest = rest[len(piece):]
                break
        else:
            pytest.fail(f"token after {decode_like_run(pieces, ids)[-40:]!r} is not among the top 3")
    assert len(ids) > 5


# -----------------------------------------------------------------------------
# quality of the int8, int4 and bf16 paths on real text (stories260K re-exported)


def test_int8_int4_bf16_quality_on_real_text(builds, stories, shared, tmp_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))
    texts = json.loads((shared / "tinystories" / "tinystories-3000-stories.json").read_text())["texts"]
    windows = []
    for t in texts[-40:]:  # the end of the sample: stories the head files do not hold
        ids = [1] + sp.encode(t)
        if len(ids) > 64:
            windows.append(ids[:256])
        if len(windows) == 6:
            break

    def evaluate(path):
        top1, nll = [], []
        for ids in windows:
            L = c_logits(VECTOR_BUILD, path, ids, tmp_path).astype(np.float64)
            logp = L - np.log(np.exp(L - L.max(1, keepdims=True)).sum(1, keepdims=True)) - L.max(1, keepdims=True)
            top1.append(L.argmax(1)[:-1])
            nll.append(-logp[np.arange(len(ids) - 1), ids[1:]])
        return np.concatenate(top1), np.concatenate(nll).mean()

    ref_top1, ref_loss = evaluate(stories["v0"])
    assert ref_loss < 2.5  # the model does read this text
    # int8 and bf16 barely move the loss; int4 (issue 14's target: within 3% of fp32) moves it more
    for fmt, min_agree, max_loss in (("v2", 0.95, 0.01), ("v3_q8_0", 0.95, 0.01), ("v3_bf16", 0.95, 0.01),
                                     ("v3_q4", 0.85, 0.03)):
        top1, loss = evaluate(stories[fmt])
        agree = (top1 == ref_top1).mean()
        print(f"{fmt}: top-1 agreement {agree:.3f}, loss {loss:.4f} against {ref_loss:.4f}")
        assert agree >= min_agree, (fmt, agree)
        assert abs(loss - ref_loss) / ref_loss < max_loss, (fmt, loss, ref_loss)


# -----------------------------------------------------------------------------
# the tokenizer against sentencepiece


@pytest.mark.parametrize("which", ["tok512", pytest.param("llama2", marks=pytest.mark.slow)])  # Llama 2's 32,000 tokens: slow
def test_tokenizer_matches_sentencepiece(builds, stories, shared, llama_vocab_model, which):
    import sentencepiece as spm
    models = shared / "models"
    sp_path, tok, ckpt = {"tok512": (models / "tok512.model", models / "tok512.bin", stories["v0"]),
                          "llama2": (models / "tokenizer.model", models / "tokenizer.bin", llama_vocab_model)}[which]
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    bad = []
    for p in prompts():
        got = run_c(PLAIN_BUILD, ckpt, "-z", tok, "-m", "tokenize", "-i", p).stdout.split()
        if [int(x) for x in got] != sp.encode(p):
            bad.append((p, got, sp.encode(p)))
    assert not bad, f"{len(bad)} prompts differ, e.g. {bad[:3]}"


@pytest.mark.parametrize("kind", ["story_text", "one_char", "spaces"])
def test_tokenizer_100KB_prompt_is_fast(builds, shared, llama_vocab_model, kind):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(shared / "models" / "tokenizer.model"))
    text = {"story_text": (shared / "tinystories" / "TinyStories-train.head-2MiB.txt").read_text()[:100_000],
            "one_char": "a" * 100_000, "spaces": " " * 100_000}[kind]
    for b in HOST_BUILDS:
        t0 = time.perf_counter()
        got = run_c(b, llama_vocab_model, "-z", shared / "models" / "tokenizer.bin", "-m", "tokenize", "-i", text)
        elapsed = time.perf_counter() - t0
        assert elapsed < (5 if SANITIZED else 0.5), f"{b}: {elapsed:.2f} s for 100 KB"
        assert [int(x) for x in got.stdout.split()] == sp.encode(text)


# -----------------------------------------------------------------------------
# chat mode and the sanitizer build


def test_chat_mode(builds, shared, llama_vocab_model):
    tok = shared / "models" / "tokenizer.bin"
    for b in HOST_BUILDS:
        # -p 0: plain multinomial; a random model's flat distribution makes top-p sort 32000 tokens
        # a random model rarely says EOS: its first reply runs into -n, which ends the chat with an error
        r = run_c(b, llama_vocab_model, "-z", tok, "-m", "chat", "-y", "You are kind.", "-n", 200, "-s", 1, "-p", 0,
                  input=b"Hi there\nTell me a story\n", check=False)
        assert r.stdout.count(b"Assistant:") >= 1
        # (or, about once in 200 seeds, it does say EOS and the chat ends at the end of input)
        assert r.returncode == 0 or (r.returncode == 1 and b"reached its 200 tokens in the middle of a reply"
                                     in r.stderr), r.stderr
        # a user line far beyond the context: a clear error, not an overflow
        r = run_c(b, llama_vocab_model, "-z", tok, "-m", "chat", "-n", 64, check=False,
                  input=b"\n" + b"word " * 20000 + b"\n")
        assert r.returncode != 0 and b"context" in r.stderr, r.stderr


@pytest.mark.slow
@pytest.mark.ci
def test_sanitizer_build_runs_clean(stories, shared, tiny, llama_vocab_model, tmp_path):
    san = build("run_sanitize")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    models = shared / "models"
    chat_in = b"Be brief.\nHello\nAnd again\n"
    runs = [  # (arguments, expected exit status, stdin)
        ([stories["v0"], "-t", "1.0", "-p", "0.9", "-s", "133742", "-n", 200], 0, b""),
        ([stories["v3_q8_0"], "-z", models / "tok512.bin", "-t", "0.8", "-k", "20", "-n", 100], 0, b""),
        ([stories["v2"], "-z", models / "tok512.bin", "-i", "Once upon a \U0001F600 time\t\n", "-n", 60], 0, b""),
        ([llama_vocab_model, "-z", models / "tokenizer.bin", "-m", "tokenize", "-i", "h\u00e9llo  \U0001F600 " * 50],
         0, b""),
        ([llama_vocab_model, "-z", models / "tokenizer.bin", "-m", "chat", "-n", 40, "-p", 0], 1, chat_in),  # -n
        ([llama_vocab_model, "-z", models / "tokenizer.bin", "-m", "chat", "-n", 100], 1, b"sys\n" + b"x" * 5000),
        ([stories["v0"], "-z", models / "tokenizer.bin"], 1, b""),
        ([stories["v0"], "-i", "word " * 1000], 1, b""),
        ([stories["v0"], "-t", "nan"], 1, b""),
    ]
    for cfg in ("gqa_tied_v97", "mha_gs32_theta", "wide_threads"):
        for fmt, path in tiny[cfg][1].items():
            ids = " ".join(str(i % CONFIGS[cfg].vocab_size) for i in range(1, CONFIGS[cfg].max_seq_len + 1))
            runs.append(([path, "-m", "logits", "-i", ids, "-o", tmp_path / "l.bin"], 0, b""))
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(Path(tiny["gqa_tied_v97"][1]["v3_q8_0"]).read_bytes()[:5000])
    runs.append(([truncated], 1, b""))
    for args, code, stdin in runs:
        r = subprocess.run([str(san), *map(str, args)], capture_output=True, env=env, timeout=120, input=stdin)
        err = r.stderr.decode(errors="replace")
        assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
        assert r.returncode == code, (args[:4], r.returncode, err[-500:])


F16_HARNESS = r"""
// run.c's fp16 conversions (the q8_0 KV cache) on their own: argv[1] float32 file -> argv[2] f16_round
// of each, argv[3] f16_to_f32 of every one of the 65536 halves
#define main run_main
#include "run.c"
#undef main
int main(int argc, char **argv) {
    (void)argc;
    FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb"), *all = fopen(argv[3], "wb");
    float f;
    while (fread(&f, 4, 1, in) == 1) { uint16_t h = f16_round(f); fwrite(&h, 2, 1, out); }
    for (uint32_t h = 0; h < 65536; h++) { float g = f16_to_f32((uint16_t)h); fwrite(&g, 4, 1, all); }
    fclose(in); fclose(out); fclose(all);
    return 0;
}
"""


def test_fp16_kv_conversions_round_to_nearest_even(tmp_path):
    """q8_0 models keep the KV cache in fp16 through run.c's own plain-C conversions (so every build
    stores the same bits): checked against numpy's IEEE conversions on every half, every tie between
    neighbouring halves and the floats either side of it, overflow, subnormals and random bit patterns."""
    src = tmp_path / "f16.c"
    src.write_text(F16_HARNESS)
    exe = tmp_path / "f16"
    r = subprocess.run([os.environ.get("CC", "cc"), "-O2", "-I", str(REPO), "-o", str(exe), str(src), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = np.unique(halves[np.isfinite(halves)].astype(np.float32))  # sorted; -0 and +0 once
    ties = (finite[:-1] + finite[1:]) / np.float32(2)  # exact: 12 significant bits
    rng = np.random.default_rng(0)
    xs = np.concatenate([
        halves.astype(np.float32), ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
        np.array([65504, 65519.996, 65520, 1e6, np.inf, -np.inf, np.nan, 2.0 ** -25, 2.0 ** -25 * 1.0000001,
                  2.0 ** -26, -(2.0 ** -25), 1e-30, 0.0, -0.0], dtype=np.float32),
        rng.integers(0, 2 ** 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]).astype(np.float32)
    (tmp_path / "in.bin").write_bytes(xs.tobytes())
    r = subprocess.run([str(exe), tmp_path / "in.bin", tmp_path / "out.bin", tmp_path / "all.bin"], capture_output=True)
    assert r.returncode == 0, r.stderr
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.uint16)
    with np.errstate(over="ignore"):
        want = xs.astype(np.float16)
    nan = np.isnan(xs)
    assert np.isnan(got[nan].view(np.float16)).all()
    bad = np.flatnonzero(got[~nan] != want[~nan].view(np.uint16))
    assert bad.size == 0, [(float(xs[~nan][i]), hex(got[~nan][i]), hex(want[~nan].view(np.uint16)[i])) for i in bad[:5]]
    back = np.frombuffer((tmp_path / "all.bin").read_bytes(), np.float32)
    ref = halves.astype(np.float32)
    assert np.array_equal(np.isnan(back), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(back[ok].view(np.uint32), ref[ok].view(np.uint32))

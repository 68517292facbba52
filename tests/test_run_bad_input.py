"""run.c on bad input: every broken checkpoint, tokenizer, prompt or flag gets one clear error line
naming the file or flag, and exit status 1; never a crash, a hang or a silently wrong answer."""
import json
import os
import re
import resource
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from binfile import model_export
from conftest import SANITIZED, build
from model import ModelArgs, Transformer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def files(tmp_path_factory, shared):
    """Good files to break: tiny models in v0..v3 and the shared tokenizers."""
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=16))
    out = {"dir": d, "tok512": shared / "models" / "tok512.bin", "llama_tok": shared / "models" / "tokenizer.bin",
           "stories": shared / "models" / "stories260K.bin"}
    for name, version, dtype in (("v0", 0, None), ("v1", 1, None), ("v2", 2, None), ("v3", 3, "fp32"),
                                 ("v3_q8", 3, "q8_0"), ("v3_bf16", 3, "bf16"), ("v3_q4", 3, "q4"),
                                 ("v3_q4_q8", 3, "q4_q8")):
        out[name] = d / f"tiny_{name}.bin"
        model_export(model, out[name], version=version, dtype=dtype)
    out["v32000"] = d / "tiny32000.bin"
    model_export(Transformer(ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=32000, max_seq_len=16)),
                 out["v32000"], version=1)
    return out


def variant(files, src, name, patch=None, cut=None, append=b""):
    """A copy of files[src] with bytes patched ({offset: bytes}), cut to `cut` bytes, or appended to."""
    data = bytearray(Path(files[src]).read_bytes())
    for off, b in (patch or {}).items():
        data[off:off + len(b)] = b
    if cut is not None:
        data = data[:cut]
    path = files["dir"] / name
    path.write_bytes(bytes(data) + append)
    return path


def expect_error(run_bin, args, needle, stdin=b"", cwd=None, timeout=60):
    r = subprocess.run([str(run_bin), *map(str, args)], capture_output=True, timeout=timeout, input=stdin, cwd=cwd)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 1, (args, r.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run: error: "), err
    assert needle in lines[0], (needle, lines[0])
    return lines[0]


i32 = lambda v: struct.pack("<i", v)  # noqa: E731
f32 = lambda v: struct.pack("<f", v)  # noqa: E731
FIELD = {"dim": 8, "hidden_dim": 12, "n_layers": 16, "n_heads": 20, "n_kv_heads": 24, "vocab_size": 28,
         "max_seq_len": 32}  # byte offsets of the header fields in v1..v3


# -----------------------------------------------------------------------------
# checkpoints

CHECKPOINT_CASES = {
    # name: (source file, variant kwargs, expected words in the error)
    "truncated_v0": ("v0", dict(cut=-4), "truncated"),
    "truncated_v1": ("v1", dict(cut=-1), "truncated"),
    "truncated_v2": ("v2", dict(cut=300), "truncated"),
    "truncated_v3_q8": ("v3_q8", dict(cut=-100), "truncated"),
    "truncated_v3_bf16": ("v3_bf16", dict(cut=4096), "truncated"),
    "header_only_half": ("v3", dict(cut=100), "the header alone needs 256"),
    "too_short_for_any_header": ("v1", dict(cut=20), "too short for any .bin header"),
    "extra_bytes_v1": ("v1", dict(append=b"\0" * 4), "does not match"),
    "extra_bytes_v3": ("v3", dict(append=b"\0"), "does not match"),
    "extra_bytes_v0": ("v0", dict(append=b"\0" * 8), "does not match"),
    "bad_magic": ("v1", dict(patch={0: b"GGUX"}), "bad magic"),
    "unknown_version_4": ("v3", dict(patch={4: i32(4)}), "unknown version 4"),
    "unknown_version_0": ("v1", dict(patch={4: i32(0)}), "unknown version 0"),
    "unknown_version_neg": ("v1", dict(patch={4: i32(-1)}), "unknown version -1"),
    "n_heads_zero": ("v1", dict(patch={FIELD["n_heads"]: i32(0)}), "n_heads=0 out of range"),
    "dim_negative": ("v3", dict(patch={FIELD["dim"]: i32(-32)}), "dim=-32 out of range"),
    "vocab_zero": ("v1", dict(patch={FIELD["vocab_size"]: i32(0)}), "vocab_size=0 out of range"),
    "seq_len_huge": ("v3", dict(patch={FIELD["max_seq_len"]: i32(1 << 30)}), "max_seq_len=1073741824 out of range"),
    "kv_heads_not_dividing": ("v1", dict(patch={FIELD["n_kv_heads"]: i32(3)}), "n_kv_heads=3 does not divide n_heads=4"),
    "kv_heads_more_than_heads": ("v1", dict(patch={FIELD["n_kv_heads"]: i32(8)}), "n_kv_heads=8 does not divide"),
    "odd_head_size": ("v1", dict(patch={FIELD["n_heads"]: i32(32), FIELD["n_kv_heads"]: i32(32)}), "even head size"),
    "layers_beyond_file": ("v1", dict(patch={FIELD["n_layers"]: i32(1000)}), "truncated"),
    "hidden_beyond_file": ("v3_q8", dict(patch={FIELD["hidden_dim"]: i32(1 << 20)}), "truncated"),
    "shared_byte_2": ("v1", dict(patch={36: b"\x02"}), "shared_classifier byte is 2"),
    "v2_group_size_zero": ("v2", dict(patch={37: i32(0)}), "group_size=0"),
    "v2_group_size_not_dividing": ("v2", dict(patch={37: i32(5)}), "group_size=5"),
    "v3_weight_type_7": ("v3", dict(patch={41: b"\x07"}), "unknown weight_type 7"),
    "v3_rope_theta_negative": ("v3", dict(patch={42: f32(-1.0)}), "rope_theta"),
    "v3_rope_theta_nan": ("v3", dict(patch={42: f32(float("nan"))}), "rope_theta"),
    "v3_norm_eps_zero": ("v3", dict(patch={46: f32(0.0)}), "norm_eps"),
    "v3_group_size_with_fp32": ("v3", dict(patch={37: i32(32)}), "group_size=32 but weight_type is fp32"),
    "v3_q8_group_size_zero": ("v3_q8", dict(patch={37: i32(0)}), "group_size=0"),
    "v3_q4_group_size_odd": ("v3_q4", dict(patch={37: i32(1)}), "group_size=1 must be positive, a multiple of 4"),
    "v3_q4_group_size_2": ("v3_q4", dict(patch={37: i32(2)}), "group_size=2 must be positive, a multiple of 4"),
    "v3_q4_q8_group_size_odd": ("v3_q4_q8", dict(patch={37: i32(1)}), "group_size=1 must be positive, even"),
    "v3_q4_truncated": ("v3_q4", dict(cut=-3), "truncated"),
    "v3_q4_weight_type_q8": ("v3_q4", dict(patch={41: b"\x02"}), "truncated"),  # q8_0 needs twice the bytes
    "v3_q4_weight_type_q4_q8": ("v3_q4", dict(patch={41: b"\x03"}), "truncated"),  # a q8_0 classifier: 4/3 of q6's
    "v3_q4_q8_weight_type_q4": ("v3_q4_q8", dict(patch={41: b"\x04"}), "does not match"),  # q6's: 3/4 of q8_0's
    "v0_garbage": ("v0", dict(patch={0: i32(-7), 4: i32(123456789)}), "bad magic"),
}


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoint(run_bin, files, case):
    src, kw, needle = CHECKPOINT_CASES[case]
    kw = dict(kw)
    if kw.get("cut") is not None and kw["cut"] < 0:
        kw["cut"] = Path(files[src]).stat().st_size + kw["cut"]
    path = variant(files, src, f"{case}.bin", **kw)
    line = expect_error(run_bin, [path, "-z", files["tok512"]], needle)
    assert str(path) in line  # the error names the file


@pytest.mark.skipif(SANITIZED, reason="ASan reserves terabytes of address space: an RLIMIT_AS cannot apply")
def test_model_too_big_for_memory(run_bin, files):
    """run.c reads the whole file into memory: one that does not fit is a clear error naming it, not a
    crash. A sparse 1 GB model under a 512 MB address-space limit (nothing is read before the failure)."""
    big = {FIELD["dim"]: i32(2048), FIELD["hidden_dim"]: i32(8192), FIELD["n_layers"]: i32(4),
           FIELD["n_heads"]: i32(16), FIELD["n_kv_heads"]: i32(16)}
    path = variant(files, "v1", "big.bin", patch=big)
    need = int(re.search(r"the v1 header implies (\d+)", expect_error(run_bin, [path], "truncated")).group(1))
    assert need > 1 << 30
    with open(path, "r+b") as f:
        f.truncate(need)  # sparse: no disk used
    limit = 512 << 20
    r = subprocess.run([str(run_bin), str(path), "-z", str(files["tok512"])], capture_output=True, timeout=60,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    err = r.stderr.decode(errors="replace").strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1, (r.returncode, err)
    assert err.startswith(f"run: error: {path}: out of memory allocating"), err
    path.unlink()


def test_missing_empty_and_directory_checkpoints(run_bin, files):
    expect_error(run_bin, [files["dir"] / "nope.bin"], "cannot open checkpoint")
    empty = files["dir"] / "empty.bin"
    empty.write_bytes(b"")
    expect_error(run_bin, [empty], "empty file")
    expect_error(run_bin, [files["dir"]], f"not a regular file (expected a checkpoint; a Hugging Face folder becomes "
                                          f"one with python export.py model.bin --hf={files['dir']})")


def test_random_bytes_are_not_a_model(run_bin, files):
    rnd = torch.Generator().manual_seed(3)
    for i in range(5):
        path = files["dir"] / f"noise{i}.bin"
        path.write_bytes(torch.randint(0, 256, (1000 + 777 * i,), generator=rnd, dtype=torch.uint8).numpy().tobytes())
        expect_error(run_bin, [path], "bad magic")


def test_files_export_reads_say_how_to_export_them(run_bin, files):
    """A PyTorch checkpoint, a GGUF or a safetensors file given to run: the export.py command for it."""
    d = files["dir"]
    torch.save({"model": {"w": torch.zeros(2)}, "model_args": {}}, d / "ckpt.pt")
    (d / "m.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    # the .bin goes beside the file it is made from (out/ckpt.pt: out/model.bin), not into the current folder
    for name, command in (("ckpt.pt", f"python export.py {d}/model.bin --checkpoint={d / 'ckpt.pt'}, then ./run {d}/model.bin"),
                          ("m.gguf", f"python export.py {d}/model.bin --gguf={d / 'm.gguf'}, then ./run {d}/model.bin"),
                          ("model.safetensors", f"python export.py model.bin --hf={d} (the Hugging Face folder")):
        expect_error(run_bin, [d / name], command)


def test_good_files_still_run(run_bin, files):
    """The baseline for the cases above: the unbroken files run."""
    for name in ("v0", "v1", "v2", "v3", "v3_q8", "v3_bf16", "v3_q4", "v3_q4_q8"):
        r = subprocess.run([str(run_bin), files[name], "-z", files["tok512"], "-n", "8", "-t", "0"], capture_output=True)
        assert r.returncode == 0, r.stderr


# -----------------------------------------------------------------------------
# tokenizers


def test_tokenizer_vocab_mismatch(run_bin, files):
    # more tokens in the file than the model has, and fewer
    expect_error(run_bin, [files["stories"], "-z", files["llama_tok"]], "holds more than the model's 512 tokens")
    expect_error(run_bin, [files["v32000"], "-z", files["tok512"]], "holds 512 tokens but the model's vocab_size is 32000")


def test_bad_tokenizer_files(run_bin, files):
    expect_error(run_bin, [files["v1"], "-z", files["dir"] / "missing_tok.bin"], "cannot open tokenizer")
    raw = Path(files["tok512"]).read_bytes()
    cut = files["dir"] / "tok_cut.bin"
    cut.write_bytes(raw[:3000])
    expect_error(run_bin, [files["v1"], "-z", cut], "tok_cut.bin")
    neg = files["dir"] / "tok_neg.bin"
    neg.write_bytes(raw[:4] + struct.pack("<fi", 0.0, -5) + raw[12:])
    expect_error(run_bin, [files["v1"], "-z", neg], "has length -5")
    tiny = files["dir"] / "tok_tiny.bin"
    tiny.write_bytes(b"\x01")
    expect_error(run_bin, [files["v1"], "-z", tiny], "not a tokenizer .bin")


def test_no_tokenizer_found(run_bin, files, tmp_path):
    lonely = tmp_path / "lonely.bin"
    shutil.copy(files["v1"], lonely)
    expect_error(run_bin, [lonely], "no tokenizer", cwd=tmp_path)
    # found beside the checkpoint once it is there
    shutil.copy(files["tok512"], tmp_path / "tok512.bin")
    assert subprocess.run([str(run_bin), lonely, "-n", "4"], cwd=tmp_path, capture_output=True).returncode == 0


# -----------------------------------------------------------------------------
# prompts and flags


def test_prompt_longer_than_context(run_bin, files):
    expect_error(run_bin, [files["v1"], "-z", files["tok512"], "-i", "a b c d e f g h i j k l m n o p q"],
                 "longer than the model's context of 16 tokens")
    expect_error(run_bin, [files["stories"], "-i", "Once upon a time " * 200], "longer than the model's context of 512")
    expect_error(run_bin, [files["v1"], "-m", "logits", "-o", files["dir"] / "l.bin", "-i", " ".join(["5"] * 17)],
                 "longer than the model's context")


FLAG_CASES = [
    (["-t", "-1"], "-t expects a temperature in [0, 3.4e38], got '-1'"),
    (["-t", "abc"], "-t expects"),
    (["-t", "nan"], "-t expects"),
    (["-t", "inf"], "-t expects"),
    (["-t", "0.5x"], "-t expects"),
    (["-p", "1.5"], "-p expects a top-p value in [0, 1], got '1.5'"),
    (["-p", "-0.1"], "-p expects"),
    (["-n", "-1"], "-n expects a number of steps >= 0, got '-1'"),
    (["-n", "1.5"], "-n expects"),
    (["-n", "99999999999999999999"], "-n expects"),
    (["-s", "-3"], "-s expects a seed >= 0"),
    (["-s", "seed"], "-s expects"),
    (["-k", "-2"], "-k expects a top-k count >= 0"),
    (["-m", "poetry"], "-m expects generate, chat, logits, tokenize or score, got 'poetry'"),
    (["-q", "1"], "unknown option -q"),
    (["-t"], "option -t needs a value"),
    (["--temperature", "1"], "expected an option like -t, got '--temperature'"),
    (["t", "1"], "expected an option like -t, got 't'"),
    (["-m", "logits", "-i", "1 2"], "-m logits needs -o"),
    # a quoted value with a newline or a tab stays on the one error line (found by the fuzzer)
    (["-t", "1\n2"], "-t expects a temperature in [0, 3.4e38], got '1\\n2'"),
    (["-m", "logits", "-o", "x.bin", "-i", "1 </s>\n\t<"], "got '</s>\\n\\x09<'"),
]


@pytest.mark.parametrize("args,needle", FLAG_CASES, ids=[" ".join(a) for a, _ in FLAG_CASES])
def test_bad_flags(run_bin, files, args, needle):
    expect_error(run_bin, [files["v1"], "-z", files["tok512"], *args], needle)


def test_bad_logits_ids(run_bin, files):
    out = files["dir"] / "l.bin"
    expect_error(run_bin, [files["v1"], "-m", "logits", "-o", out, "-i", "1 512"], "token ids in 0..511")
    expect_error(run_bin, [files["v1"], "-m", "logits", "-o", out, "-i", "1 x"], "token ids in 0..511")
    expect_error(run_bin, [files["v1"], "-m", "logits", "-o", out, "-i", "  "], "at least one token id")
    expect_error(run_bin, [files["v1"], "-m", "logits", "-o", files["dir"] / "no" / "such" / "dir.bin", "-i", "1"],
                 "cannot write")
    assert not (files["dir"] / "no").exists()


def test_usage(run_bin):
    r = subprocess.run([str(run_bin)], capture_output=True, text=True)
    assert r.returncode == 1 and "Usage:" in r.stderr and "-k <int>" in r.stderr
    r = subprocess.run([str(run_bin), "-h"], capture_output=True, text=True)
    assert r.returncode == 0 and "Usage:" in r.stderr


def test_chat_eof_and_huge_lines(run_bin, files):
    """Chat reads lines as long as the context can hold without fixed buffers (a longer one is refused
    while it is read: tests/test_hostile.py); end of input ends the chat."""
    r = subprocess.run([str(run_bin), files["v32000"], "-z", files["llama_tok"], "-m", "chat", "-n", "16"],
                       input=b"", capture_output=True)
    assert r.returncode == 0
    expect_error(run_bin, [files["v32000"], "-z", files["llama_tok"], "-m", "chat", "-n", 16],
                 "no longer fits the context of 16 tokens", stdin=b"system\n" + b"y" * 200 + b"\n")
    expect_error(run_bin, [files["v32000"], "-z", files["llama_tok"], "-m", "chat", "-n", 16],
                 "cannot fit the 16 tokens left in the context", stdin=b"system\n" + b"y" * 300_000 + b"\n")


# -----------------------------------------------------------------------------
# models that misbehave: non-finite logits, a flat distribution, a story that ends at once


@pytest.fixture(scope="session")
def san_bin():
    """The ASan + UBSan build: out-of-bounds reads that the plain build survives show up here."""
    return build("run_sanitize")


SAN_ENV = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
SHAPE = dict(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=16)


def run_both(run_bin, san_bin, args, stdin=b""):
    """The plain and the sanitizer build on the same arguments: both results, no sanitizer report."""
    out = []
    for b in (run_bin, san_bin):
        r = subprocess.run([str(b), *map(str, args)], capture_output=True, timeout=60, input=stdin, env=SAN_ENV)
        err = r.stderr.decode(errors="replace")
        assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
        out.append(r)
    return out


def edited_model(edit, seed=0, **shape):
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(**{**SHAPE, **shape}))
    with torch.no_grad():
        edit(m)
    return m


@pytest.fixture(scope="session")
def broken_models(files):
    """A NaN weight (v1), and finite norm gains of 3e38 whose activations overflow (v3 in every dtype)."""
    d = files["dir"]
    out = {}
    nan = edited_model(lambda m: m.layers[0].attention.wq.weight.__setitem__((3, 5), float("nan")))
    out["nan_v1"] = d / "nan_v1.bin"
    model_export(nan, out["nan_v1"], version=1)
    huge = edited_model(lambda m: m.norm.weight.fill_(3e38))
    for dtype in ("fp32", "bf16", "q8_0"):
        out[f"huge_{dtype}"] = d / f"huge_{dtype}.bin"
        model_export(huge, out[f"huge_{dtype}"], version=3, dtype=dtype)
    return out


SAMPLERS = [["-t", "0"], ["-t", "1", "-p", "0.9"], ["-t", "1", "-p", "0"], ["-t", "0.7", "-k", "5"],
            ["-t", "1", "-k", "300", "-p", "1"], ["-t", "1e-30"]]


@pytest.mark.parametrize("name", ["nan_v1", "huge_fp32", "huge_bf16", "huge_q8_0"])
def test_nonfinite_logits_are_an_error(run_bin, san_bin, files, broken_models, name):
    """Every sampler (greedy, top-p, plain, top-k, top-k + top-p) refuses NaN/inf logits in one line naming
    the model and the position: no out-of-bounds read (the sanitizer build), no garbage printed."""
    path = broken_models[name]
    for sampler in SAMPLERS:
        for r in run_both(run_bin, san_bin, [path, "-z", files["tok512"], "-n", "8", "-s", "3", *sampler]):
            err = r.stderr.decode(errors="replace").strip()
            assert r.returncode == 1 and len(err.splitlines()) == 1, (sampler, r.returncode, err)
            assert re.fullmatch(rf"run: error: {re.escape(str(path))}: the model produced (NaN|infinite) logits at "
                                r"position 0: is the checkpoint diverged\?", err), err
            assert r.stdout.strip() == b"", r.stdout[:100]


def test_tiny_temperature_is_greedy_not_overflow(run_bin, san_bin, files):
    """-t 2e-38 (about the smallest normal float) makes stories260K's logits / t overflow to inf (NaN
    probabilities, then pi[-1]); sampling (logit - max) / t gives the argmax every time: the greedy story."""
    greedy = subprocess.run([str(run_bin), files["stories"], "-t", "0", "-n", "40"], capture_output=True,
                            timeout=60).stdout
    assert greedy.startswith(b"Once upon a time")
    for sampler in (["-p", "0.9"], ["-p", "0"], ["-k", "5"]):
        for r in run_both(run_bin, san_bin, [files["stories"], "-t", "2e-38", "-n", "40", *sampler]):
            assert r.returncode == 0 and r.stdout == greedy, (sampler, r.stdout, r.stderr)


def write_v1(path, header, rnd):
    """A well-formed v1 file for any header (export.py refuses some of these shapes): random weights."""
    import binfile
    h = dict(version=1, shared=True, weight_type="fp32", group_size=0, rope_theta=1e4, norm_eps=1e-5, **header)
    _, size = binfile.layout(h)
    path.write_bytes(binfile.pack_header(h) + rnd.standard_normal((size - 256) // 4).astype("<f4").tobytes())
    return path


@pytest.mark.parametrize("vocab", [1, 2])
def test_vocab_of_one_or_two_tokens(run_bin, san_bin, files, vocab):
    """A well-formed vocab_size=1 header: llama2.c's top-p cutoff (1 - p) / (n - 1) admits no token and its
    sampler read pi[-1]. Every sampler on a one- and a two-token model (with a tokenizer of that size) ends
    cleanly, without a sanitizer report."""
    import numpy as np
    shape = dict(dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=vocab, max_seq_len=8)
    path = write_v1(files["dir"] / f"vocab{vocab}.bin", shape, np.random.default_rng(0))
    pieces = [b"a", b"b"][:vocab]
    tok = files["dir"] / f"tok_vocab{vocab}.bin"
    tok.write_bytes(struct.pack("<i", 1) + b"".join(struct.pack("<fi", 0.0, 1) + p for p in pieces))
    for sampler in SAMPLERS:
        for r in run_both(run_bin, san_bin, [path, "-z", tok, "-i", "a", "-n", "6", "-s", "1", *sampler]):
            err = r.stderr.decode(errors="replace").strip().splitlines()
            assert r.returncode == 0, (sampler, r.returncode, err)
            assert set(r.stdout.strip()) <= set(b"ab"), r.stdout


def test_top_p_below_one_over_vocab_on_a_flat_distribution(run_bin, san_bin, files):
    """llama2.c's top-p cutoff admits no token when top_p < 1/vocab and every token is equally likely, and
    its sampler then reads probindex[-1]; here the whole vocabulary is sorted instead."""
    flat = edited_model(lambda m: m.output.weight.zero_(), tie_embeddings=False)  # every logit exactly 0
    path = files["dir"] / "flat.bin"
    model_export(flat, path, version=1)
    for r in run_both(run_bin, san_bin, [path, "-z", files["tok512"], "-p", "0.0001", "-n", "6", "-s", "1"]):
        assert r.returncode == 0, r.stderr
        # the nucleus is the single most likely token: token 0 (<unk>, printed as its text) on every tie
        assert r.stdout == b"<unk>" * 6 + b"\n", r.stdout  # -n 6: six sampled tokens


def eos_model(files, name, eos_logit=30.0, **shape):
    """A model whose logits are the same after any token: every embedding is the same unit vector, the
    residual branches add nothing, and only the classifier row of EOS sees it, with logit eos_logit
    (30: nearly always EOS; -30: never), every other token 0."""
    def edit(m):
        m.tok_embeddings.weight.zero_()
        m.tok_embeddings.weight[:, 0] = 1.0
        for layer in m.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        m.output.weight.zero_()
        m.output.weight[2, 0] = eos_logit / SHAPE["dim"] ** 0.5
    path = files["dir"] / name
    model_export(edited_model(edit, tie_embeddings=False, **shape), path, version=1)
    return path


def test_story_that_ends_before_it_begins_says_so(run_bin, files):
    """A first sampled token that is EOS leaves an empty story (as llama2.c, it is not resampled): stdout
    is the empty line, stderr says what happened, and the exit status is 0."""
    path = eos_model(files, "eos.bin")
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-s", "5"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"\n"
    assert b"the story ended before it began: the first token sampled was EOS" in r.stderr, r.stderr
    # with a prompt the prompt is the story, and nothing needs explaining
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-i", "Once"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"Once\n" and b"note" not in r.stderr


def test_chat_reaching_n_mid_reply_is_an_error(run_bin, files):
    """A reply that runs into -n ends the chat with an error (exit 1), not a silent exit 0 that leaves the
    user's next line to the shell; end of input after complete replies is a normal end."""
    path = eos_model(files, "chat64.bin", eos_logit=-30.0, max_seq_len=64)  # replies that never end
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-m", "chat", "-n", "40", "-s", "1"],
                       input=b"\nhi\nmore\n", capture_output=True, timeout=60)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1, (r.returncode, err)
    assert err == ("run: error: -n: the conversation reached its 40 tokens in the middle of a reply: "
                   "start again with a larger -n (the context holds 64)"), err
    assert r.stdout.startswith(b"Enter system prompt (optional): User: Assistant: ") and len(r.stdout) > 60
    # -n 0 is the whole context: then the context is what fills up
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-m", "chat", "-n", "0", "-y", "", "-i", "hi"],
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and b"filled the model's context of 64 tokens in the middle" in r.stderr, r.stderr
    # replies that end (EOS) and then end of input: exit 0
    path = eos_model(files, "eos_chat.bin", max_seq_len=64)
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-m", "chat", "-n", "0"], input=b"\nhi\nyo\n",
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count(b"Assistant:") == 2, (r.stdout, r.stderr)


# -----------------------------------------------------------------------------
# files that are not files, and headers that would size an absurd cache


def test_fifo_and_directory_inputs_do_not_hang(run_bin, files, tmp_path):
    """A FIFO as checkpoint or -z would block open() until a writer comes (forever); a directory as -z
    used to read as a huge file ('out of memory'). Both are refused at once as not regular files."""
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    for args in ([fifo, "-z", files["tok512"]], [files["v1"], "-z", fifo], [files["v1"], "-z", tmp_path]):
        bad = args[0] if args[0] != files["v1"] else args[2]
        line = expect_error(run_bin, args, "not a regular file", timeout=10)
        assert str(bad) in line


def test_logits_output_over_symlink_fifo_or_directory(run_bin, files, tmp_path):
    """-o writes a regular file through a temp file and a rename; renaming over a symlink or FIFO would
    replace it with a regular file. A symlink is followed (its target gets the logits, the link stays);
    a FIFO or device is written in place; a directory is an error."""
    want = tmp_path / "direct.bin"
    subprocess.run([str(run_bin), files["v1"], "-m", "logits", "-i", "1 5 9", "-o", want], check=True, timeout=60)
    assert want.stat().st_size == 3 * 512 * 4
    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    target.write_bytes(b"old")
    link.symlink_to(target)
    subprocess.run([str(run_bin), files["v1"], "-m", "logits", "-i", "1 5 9", "-o", link], check=True, timeout=60)
    assert link.is_symlink() and target.read_bytes() == want.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct.bin", "link.bin", "target.bin"]  # no temp left
    fifo = tmp_path / "logits.fifo"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(run_bin), files["v1"], "-m", "logits", "-i", "1 5 9", "-o", fifo])
    with open(fifo, "rb") as f:  # the reader that the writer's open waits for
        got = f.read()
    assert proc.wait(timeout=60) == 0 and got == want.read_bytes() and fifo.is_fifo()
    expect_error(run_bin, [files["v1"], "-m", "logits", "-i", "1", "-o", tmp_path], "is a directory")
    dangling = tmp_path / "dangling.bin"
    dangling.symlink_to(tmp_path / "nowhere" / "x.bin")
    expect_error(run_bin, [files["v1"], "-m", "logits", "-i", "1", "-o", dangling], "a symlink to nowhere")


@pytest.mark.skipif(SANITIZED, reason="ASan reserves terabytes of address space: an RLIMIT_AS cannot apply")
def test_huge_max_seq_len_with_n_0_is_refused_before_allocating(run_bin, files):
    """max_seq_len is not part of a v1 file's size, so a 70 KB file can claim 2^24-1 positions; -n 0 (the
    whole context) would then allocate and zero a 2 GB KV cache. Refused before the allocation, under a
    1 GB address-space limit (which the cache alone would exceed); with a small -n the file still runs."""
    path = variant(files, "v1", "long_context.bin", patch={FIELD["max_seq_len"]: i32((1 << 24) - 1)})
    limit = 1 << 30
    for n in ("0", "20000000"):
        r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-n", n], capture_output=True, timeout=60,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        err = r.stderr.decode().strip()
        assert r.returncode == 1 and len(err.splitlines()) == 1, err
        assert err.startswith(f"run: error: {path}: max_seq_len=16777215: a KV cache for 16777215 steps would "
                              "take 2.1 GB"), err
        assert err.endswith("a corrupt header? (-n sets fewer steps)"), err
    r = subprocess.run([str(run_bin), path, "-z", files["tok512"], "-n", "8"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr

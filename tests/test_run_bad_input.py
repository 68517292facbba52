"""run.c on bad input: every broken checkpoint, tokenizer, prompt or flag gets one clear error line
naming the file or flag, and exit status 1; never a crash, a hang or a silently wrong answer."""
import os
import re
import resource
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from export import MAGIC, model_export
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
                                 ("v3_q8", 3, "q8_0"), ("v3_bf16", 3, "bf16"), ("v3_q4", 3, "q4")):
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


def expect_error(run_bin, args, needle, stdin=b"", cwd=None):
    r = subprocess.run([str(run_bin), *map(str, args)], capture_output=True, timeout=60, input=stdin, cwd=cwd)
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
    "bad_magic": ("v1", dict(patch={0: b"GGUF"}), "bad magic"),
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
    "v3_q4_group_size_odd": ("v3_q4", dict(patch={37: i32(1)}), "group_size=1 must be positive, even"),
    "v3_q4_truncated": ("v3_q4", dict(cut=-3), "truncated"),
    "v3_q4_weight_type_q8": ("v3_q4", dict(patch={41: b"\x02"}), "truncated"),  # q8_0 needs twice the bytes
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
    expect_error(run_bin, [files["dir"]], "not a regular file")


def test_random_bytes_are_not_a_model(run_bin, files):
    rnd = torch.Generator().manual_seed(3)
    for i in range(5):
        path = files["dir"] / f"noise{i}.bin"
        path.write_bytes(torch.randint(0, 256, (1000 + 777 * i,), generator=rnd, dtype=torch.uint8).numpy().tobytes())
        expect_error(run_bin, [path], "bad magic")


def test_good_files_still_run(run_bin, files):
    """The baseline for the cases above: the unbroken files run."""
    for name in ("v0", "v1", "v2", "v3", "v3_q8", "v3_bf16"):
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
    (["-t", "-1"], "-t expects a temperature >= 0, got '-1'"),
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
    (["-m", "poetry"], "-m expects generate, chat, logits or tokenize, got 'poetry'"),
    (["-q", "1"], "unknown option -q"),
    (["-t"], "option -t needs a value"),
    (["--temperature", "1"], "expected an option like -t, got '--temperature'"),
    (["t", "1"], "expected an option like -t, got 't'"),
    (["-m", "logits", "-i", "1 2"], "-m logits needs -o"),
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
    """Chat reads lines of any length without fixed buffers; end of input ends the chat."""
    r = subprocess.run([str(run_bin), files["v32000"], "-z", files["llama_tok"], "-m", "chat", "-n", "16"],
                       input=b"", capture_output=True)
    assert r.returncode == 0
    expect_error(run_bin, [files["v32000"], "-z", files["llama_tok"], "-m", "chat", "-n", 16],
                 "no longer fits the context of 16 tokens", stdin=b"system\n" + b"y" * 300_000 + b"\n")

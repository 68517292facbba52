"""run.c's -m score (bits per byte of a text file) against PyTorch, and its bad input.

PyTorch scores the same token ids (BOS, then run.c's -m tokenize of each stripped story, whose encoder
test_run_c.py checks against sentencepiece) in the same windows of the context: seq_len tokens from
position 0, each window after the first starting with the last token of the one before. The plain
and the vector builds must match it, and each other.
"""
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from binfile import model_export, read_header
from conftest import PLAIN_BUILD, VECTOR_BUILD, build
from model import ModelArgs
from test_run_c import make_model, reference_for, run_c, write_tokenizer

SEP = "<|endoftext|>"
SCORE = re.compile(rb"^([0-9.]+) bits per byte, ([0-9.]+) nats per token: (\d+) stories, (\d+) bytes, "
                   rb"(\d+) tokens scored, [0-9.]+ tok/s\n$")


@pytest.fixture(scope="module")
def builds():
    build(PLAIN_BUILD, VECTOR_BUILD)
    return [PLAIN_BUILD, VECTOR_BUILD]


def c_score(binary, model, tok, text_path):
    """(bits per byte, summed nats, stories, bytes, targets) as run.c prints them."""
    r = run_c(binary, model, "-z", tok, "-m", "score", "-i", text_path)
    m = SCORE.match(r.stdout)
    assert m, r.stdout
    bpb, npt, stories, nbytes, targets = float(m[1]), float(m[2]), int(m[3]), int(m[4]), int(m[5])
    return bpb, npt * targets, stories, nbytes, targets


def torch_nats(ref, ids, context):
    """The summed -ln p of ids[1:] in run.c's windows of the context."""
    total, w0 = 0.0, 0
    while w0 + 1 < len(ids):
        win = torch.tensor([ids[w0:w0 + context]])
        with torch.no_grad():
            logits = ref(win)[0][0]
        total += F.cross_entropy(logits[:-1].double(), win[0, 1:], reduction="sum").item()
        w0 += context - 1
    return total


def check_score(binaries, model_path, tok, text, tmp_path, rtol, bos=1):
    """Every build's score of text against PyTorch's on the same ids; returns the vector build's."""
    path = tmp_path / "text.txt"
    path.write_text(text)
    stories = [s.strip() for s in text.split(SEP) if s.strip()]
    ids = [[bos] + [int(i) for i in run_c(VECTOR_BUILD, model_path, "-z", tok, "-m", "tokenize", "-i", s).stdout.split()]
           for s in stories]
    ref, context = reference_for(model_path), read_header(model_path)["max_seq_len"]
    want = sum(torch_nats(ref, i, context) for i in ids)
    nbytes, targets = sum(len(s.encode()) for s in stories), sum(len(i) - 1 for i in ids)
    got = {}
    for b in binaries:
        got[b] = c_score(b, model_path, tok, path)
        bpb, nats, n_stories, n_bytes, n_targets = got[b]
        assert (n_stories, n_bytes, n_targets) == (len(stories), nbytes, targets), b
        assert nats == pytest.approx(want, rel=rtol), b
        assert bpb == pytest.approx(want / np.log(2) / nbytes, rel=rtol), b
    return got, ids


def test_score_stories260K_matches_pytorch(builds, shared, tmp_path):
    """Real stories (the shared TinyStories sample), the real model: run.c's bits per byte is PyTorch's."""
    sample = (shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt").read_text()
    text = SEP.join(sample.split(SEP)[:3]) + SEP + "\n"
    got, _ = check_score(builds, shared / "models" / "stories260K.bin", shared / "models" / "tok512.bin", text,
                         tmp_path, rtol=1e-5)
    # plain and vector kernels: the same sums up to rounding
    assert got[PLAIN_BUILD][1] == pytest.approx(got[VECTOR_BUILD][1], rel=1e-6)


@pytest.mark.parametrize("fmt", ["fp32", "q8_0"])
def test_score_windows_match_pytorch(builds, tmp_path, fmt):
    """Stories shorter than, as long as, and 2.5 times the context of 16 (windows from position 0 with a
    stride of 15), empty ones between separators, whitespace around them."""
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=60, max_seq_len=16)
    path = tmp_path / f"m_{fmt}.bin"
    model_export(make_model(args), path, version=3, dtype=fmt)
    # a tokenizer where token i >= 3 is " " + one CJK character: any id sequence is a text
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [(" " + chr(0x4E00 + i)).encode() for i in range(3, args.vocab_size)]
    tok = tmp_path / "tok.bin"
    write_tokenizer(tok, pieces)
    rng = np.random.default_rng(0)
    want_ids = [rng.integers(3, args.vocab_size, n).tolist() for n in (5, 15, 40, 1)]
    text = "".join(f"  {''.join(pieces[i].decode() for i in s)}\n{SEP}{SEP} \n" for s in want_ids)
    _, ids = check_score(builds, path, tok, text, tmp_path, rtol=1e-5 if fmt == "fp32" else 2e-3)
    assert [i[1:] for i in ids] == want_ids  # the ids PyTorch scored are the stories'


@pytest.mark.parametrize("text,error", [
    (None, rb"-m score needs -i <text file>"),
    ("-w", rb"-m score reads a text file named by -i, not an instruct prompt"),
    ("", rb"no text to score"),
    (f" \n{SEP}\n{SEP}  ", rb"no text to score"),
    ("a\0b", rb"holds a NUL byte"),
])
def test_score_bad_input(builds, shared, tmp_path, text, error):
    """A clear one-line error and a non-zero exit; a missing file is named."""
    args = ["-m", "score"]
    if text == "-w":
        args += ["-w", "dog"]
    elif text is not None:
        (tmp_path / "t.txt").write_bytes(text.encode())
        args += ["-i", tmp_path / "t.txt"]
    r = run_c(VECTOR_BUILD, shared / "models" / "stories260K.bin", "-z", shared / "models" / "tok512.bin", *args,
              check=False)
    assert r.returncode != 0 and re.search(error, r.stderr) and r.stderr.count(b"\n") == 1, r.stderr
    r = run_c(VECTOR_BUILD, shared / "models" / "stories260K.bin", "-m", "score", "-i", tmp_path / "nope.txt", check=False)
    assert r.returncode != 0 and b"nope.txt" in r.stderr and r.stdout == b""

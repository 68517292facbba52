"""run.c with storyllama's tokenizer file: sentencepiece's ids (special tokens included), stories that
end at an end-of-story token (-e), the vocabulary identity check, export.py's tokenizer beside the
model found with no -z, and every broken header field of the file refused in one line (also under
the sanitizers)."""
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import tokenizer as T
import vocab as V
from binfile import model_export
from conftest import build
from model import ModelArgs, Transformer
from prompts import SPECIAL, prompts

REPO = Path(__file__).resolve().parent.parent


def run(binary, *args, ok=True, **kw):
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, timeout=120, **kw)
    assert (r.returncode == 0) == ok, (args[:4], r.returncode, r.stderr.decode(errors="replace"))
    return r


@pytest.fixture(scope="session")
def files(shared, tmp_path_factory):
    """Tokenizer files in our format (tok512, Llama 2, a vocabulary with <|start_story|>/<|end_story|>)
    and a tiny model for each vocabulary size, carrying that vocabulary's identity."""
    import tinystories
    d = tmp_path_factory.mktemp("runtok")
    specials = tinystories.train_vocab(400, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], d,
                                       max_stories=500, special_tokens=["<|start_story|>", "<|end_story|>"])
    out = {"dir": d}
    for name, model in (("tok512", shared / "models" / "tok512.model"), ("llama2", shared / "models" / "tokenizer.model"),
                        ("specials", specials)):
        tok = T.Tokenizer(model)
        out[name] = (model, tok.export(d / f"{name}.bin"), d / f"m_{name}.bin")
        torch.manual_seed(0)
        model_export(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=tok.n_words, max_seq_len=64)),
                     out[name][2], vocab_id=tok.identity)
    return out


@pytest.mark.parametrize("name", ["tok512", pytest.param("llama2", marks=pytest.mark.slow), "specials"])  # Llama 2's: slow
def test_new_format_matches_sentencepiece(run_bin, files, name):
    from sentencepiece import SentencePieceProcessor
    model, tok_bin, model_bin = files[name]
    sp = SentencePieceProcessor(model_file=str(model))
    bad = []
    for p in prompts() + SPECIAL:
        got = run(run_bin, model_bin, "-z", tok_bin, "-m", "tokenize", "-i", p).stdout.split()
        if [int(x) for x in got] != sp.encode(p):
            bad.append(p)
    assert not bad, f"{len(bad)} prompts differ, e.g. {bad[:3]}"


def planted(files, name="specials"):
    """A tiny untied model of the specials vocabulary whose every next token is <|end_story|>, with its
    tokenizer beside it: (model.bin, end id)."""
    _, tok_bin, _ = files[name]
    tok = T.Tokenizer(tok_bin)
    d = files["dir"] / "planted"
    d.mkdir(exist_ok=True)
    torch.manual_seed(1)
    m = Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=tok.n_words, max_seq_len=64,
                              tie_embeddings=False))
    with torch.no_grad():  # feature 0 of the stream is always 10 (the layer adds nothing), and only it reaches
        m.tok_embeddings.weight[:, 0] = 10.0  # the output, where it only feeds <|end_story|>'s logit
        m.layers[0].attention.wo.weight.zero_()
        m.layers[0].feed_forward.w2.weight.zero_()
        m.norm.weight.zero_()
        m.norm.weight[0] = 1.0
        m.output.weight.zero_()
        m.output.weight[tok.end_id, 0] = 1.0
    path = d / "m.bin"
    model_export(m, path, vocab_id=tok.identity)
    shutil.copy(tok_bin, d / f"tok{tok.n_words}.bin")
    return path, tok.end_id, m


def test_story_ends_at_end_story_token(run_bin, files):
    path, end, m = planted(files)
    logits = m(torch.tensor([[1, 300, 301]]))[0][0]
    assert (logits.argmax(-1) == end).all()  # the plant works: <|end_story|> is always the greedy pick
    r = run(run_bin, path, "-t", "0", "-i", "Once upon", "-n", 20)  # no -z: tok400.bin beside it
    assert r.stdout == b"Once upon\n"
    r = run(run_bin, path, "-t", "0", "-i", "Once upon", "-n", 20, "-e", "")  # no end token: it goes on
    assert r.stdout.startswith(b"Once upon<|end_story|><|end_story|>")
    # the end token inside a prompt is forced, not the end of the story
    r = run(run_bin, path, "-t", "0", "-i", "The end.<|end_story|><|start_story|>Tim", "-n", 30)
    assert r.stdout == b"The end.<|end_story|><|start_story|>Tim\n"
    # -e names another token, or one the vocabulary lacks
    r = run(run_bin, path, "-t", "0", "-i", "Once", "-n", 10, "-e", "<|start_story|>")
    assert r.stdout.startswith(b"Once<|end_story|>")
    r = run(run_bin, path, "-e", "<|nope|>", ok=False)
    assert r.stderr.decode().strip() == f"run: error: -e: '<|nope|>' is not a token of {path.parent / 'tok400.bin'}"


@pytest.mark.slow  # processes of their own
def test_sample_py_and_generate_end_there_too(files):
    path, end, m = planted(files)
    sample = lambda *a: subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={path}", "--temperature=0",  # noqa: E731
                                        "--start=Once upon", "--max_new_tokens=5", "--device=cpu", *a],
                                       capture_output=True, text=True, timeout=120)
    r = sample()
    assert r.returncode == 0 and r.stdout == "Once upon\n", r.stderr
    r = sample("--end_token=")
    assert r.returncode == 0 and r.stdout == "Once upon" + "<|end_story|>" * 5 + "\n", r.stderr
    r = sample("--end_token=<|nope|>")
    assert r.returncode == 1 and r.stderr.strip().startswith("sample.py: error: --end_token: end token '<|nope|>'")
    tok = T.Tokenizer(path.parent / "tok400.bin")
    ids = torch.tensor([tok.prompt("Once upon")])
    assert m.generate(ids, 5, temperature=0.0, stop_tokens=tok.stops())[0, ids.shape[1]:].tolist() == [end]


def test_identity_is_checked(run_bin, files, shared, tmp_path):
    _, tok512, m512 = files["tok512"]
    # another vocabulary of the same size: refused, naming both files
    other = T.Tokenizer(files["tok512"][0])
    other.vocab.pieces[300] = b"xyzzy"
    V.write_bin(other.vocab, tmp_path / "other.bin")
    r = run(run_bin, m512, "-z", tmp_path / "other.bin", "-m", "tokenize", "-i", "a", ok=False)
    err = r.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"run: error: {tmp_path / 'other.bin'} is not the tokenizer of {m512}")
    # llama2.c's files cannot be checked: a note, and it runs
    r = run(run_bin, m512, "-z", shared / "models" / "tok512.bin", "-m", "tokenize", "-i", "a")
    assert r.stderr.decode().strip() == (f"run: note: {shared / 'models' / 'tok512.bin'} carries no vocabulary identity "
                                         f"(an older file): cannot check that {shared / 'models' / 'tok512.bin'} is "
                                         f"{m512}'s tokenizer")
    r = run(run_bin, shared / "models" / "stories260K.bin", "-z", tok512, "-m", "tokenize", "-i", "a")
    assert b"stories260K.bin carries no vocabulary identity" in r.stderr
    # both old: nothing to say (llama2.c's world, unchanged)
    r = run(run_bin, shared / "models" / "stories260K.bin", "-m", "tokenize", "-i", "a")
    assert r.stderr == b""


@pytest.mark.slow  # processes of their own
def test_export_writes_the_tokenizer_run_and_sample_find(shared, run_bin, tmp_path):
    """The README's path: export.py out/model.bin --checkpoint=out/ckpt.pt, then ./run out/model.bin."""
    import binfile
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(shared / "models" / "tok512.model", d / "tok512.model")
    model = binfile.load_bin(shared / "models" / "stories260K.bin")
    ident = T.Tokenizer(d / "tok512.model").identity
    ckpt = {"model": model.state_dict(), "model_args": asdict(model.args), "iter_num": 0, "best_val_loss": 0.0,
            "config": {"vocab_source": "custom", "vocab_size": 512, "data_dir": str(d)}, "vocab_identity": ident.hex()}
    out = tmp_path / "out"
    out.mkdir()
    torch.save(ckpt, out / "ckpt.pt")
    exp = lambda *a: subprocess.run([sys.executable, str(REPO / "export.py"), *map(str, a)], capture_output=True,  # noqa: E731
                                    text=True, timeout=300)
    r = exp(out / "model.bin", f"--checkpoint={out / 'ckpt.pt'}")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (out / "tok512.bin").read_bytes()[64:96] == ident
    assert binfile.read_header(out / "model.bin")["vocab_id"] == ident
    story = run(run_bin, out / "model.bin", "-t", "0", "-n", 60, cwd=tmp_path).stdout  # no -z
    assert story.startswith(b"Once upon a time, there was a little girl named Lily.")
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={out / 'model.bin'}", "--temperature=0",
                        "--max_new_tokens=60", "--device=cpu"], capture_output=True, timeout=120)
    assert r.returncode == 0 and r.stdout == story, r.stderr
    # again: the same tokenizer is there, fine; another vocabulary's file there is never overwritten
    assert exp(out / "model.bin", f"--checkpoint={out / 'ckpt.pt'}").returncode == 0
    shutil.copy(shared / "models" / "tok512.bin", out / "tok512.bin")  # llama2.c's file: cannot tell
    r = exp(out / "model2.bin", f"--checkpoint={out / 'ckpt.pt'}")
    assert r.returncode == 1 and "exists and holds another tokenizer" in r.stderr and not (out / "model2.bin").exists()
    # a checkpoint whose vocabulary is not the one its rule finds: refused, nothing written
    ckpt["vocab_identity"] = T.Tokenizer(shared / "models" / "tokenizer.model").identity.hex()
    torch.save(ckpt, out / "ckpt.pt")
    r = exp(tmp_path / "model3.bin", f"--checkpoint={out / 'ckpt.pt'}")
    assert r.returncode == 1 and "is not the vocabulary the model was made with" in r.stderr
    assert not (tmp_path / "model3.bin").exists()
    # sample.py refuses a tokenizer of another vocabulary for a .bin too
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={out / 'model.bin'}",
                        f"--tokenizer={shared / 'models' / 'tokenizer.model'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "tokens, the model 512" in r.stderr


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_sample_py_says_what_a_file_is(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, this is not a model at all" * 10)
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={junk}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "is neither a train.py checkpoint (a zip or pickle file) nor a run.c .bin model" in r.stderr


def test_no_bos_vocabulary_needs_a_prompt(run_bin, files, tmp_path):
    """A vocabulary that adds no BOS to prompts (Hugging Face style) prints the prompt's first token too."""
    _, tok_bin, _ = files["specials"]
    v = V.read_bin(tok_bin)
    v.flags &= ~V.ADD_BOS
    v.bos = -1
    V.write_bin(v, tmp_path / "tok400.bin")
    model_export(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=400, max_seq_len=64)),
                 tmp_path / "m.bin", vocab_id=V.identity(v))
    r = run(run_bin, tmp_path / "m.bin", "-t", "0", "-n", 5, ok=False)
    assert r.stderr.decode().strip() == f"run: error: {tmp_path / 'tok400.bin'} has no BOS token to start a story with: give a prompt (-i)"
    r = run(run_bin, tmp_path / "m.bin", "-t", "0", "-n", 30, "-i", "Once upon")
    assert r.stdout.startswith(b"Once upon")
    ids = [int(x) for x in run(run_bin, tmp_path / "m.bin", "-m", "tokenize", "-i", "Once upon").stdout.split()]
    assert ids == V.encode(v, "Once upon") and ids[0] != 1


i32 = lambda v: struct.pack("<i", v)  # noqa: E731
BAD_FILES = {  # name: (patch {offset: bytes} or a function of the good bytes, expected words)
    "truncated_header": (lambda b: b[:100], "the header alone needs 128"),
    "version": ({4: i32(7)}, "tokenizer file version 7"),
    "vocab_more": ({8: i32(513)}, "holds 513 tokens but the model's vocab_size is 512"),
    "bos_range": ({12: i32(512)}, "bos_id=512 out of range"),
    "eos_negative": ({16: i32(-5)}, "eos_id=-5 out of range"),
    "end_range": ({24: i32(99999)}, "end_id=99999 out of range"),
    "merges_negative": ({28: i32(-1)}, "n_merges=-1 out of range"),
    "classes_huge": ({32: i32(0x7fffffff)}, "n_classes=2147483647 out of range"),
    "prefix": ({36: b"\x09"}, "prefix=9 or flags"),
    "flags": ({37: b"\x80"}, "flags=128 unknown"),
    "reserved": ({50: b"\x01"}, "header byte 50 is 1"),
    "token_type": ({128: b"\x00"}, "token 0 has type 0"),
    "in_text": ({129: b"\x02"}, "in_text 2"),
    "token_length": ({134: i32(1 << 30)}, "token 0 has length 1073741824, past the end"),
    "token_negative": ({134: i32(-3)}, "token 0 has length -3"),
    "truncated_tokens": (lambda b: b[:2000], "truncated in token"),
    "extra": (lambda b: b + b"\0" * 4, "does not match its 512 tokens, 0 merges and 0 character classes"),
    "merge_ids": (lambda b: b[:28] + i32(1) + b[32:] + i32(0) + i32(1) + i32(600), "merge 0 (0, 1 -> 600)"),
    "merge_text": (lambda b: b[:28] + i32(1) + b[32:] + i32(3) + i32(4) + i32(5), "does not join two tokens"),
    "classes_without_byte_level": (lambda b: b[:32] + i32(1) + b[36:] + struct.pack("<I", 0), "do not go together"),
    "classes_order": (lambda b: b[:32] + i32(2) + b[36:37] + bytes([b[37] & ~(V.BYTE_FALLBACK | V.COLLAPSE) | V.BYTE_LEVEL])
                      + b[38:] + struct.pack("<II", 0, 0), "character class 1"),
}


def bad_file(files, name):
    good = files["tok512"][1].read_bytes()
    change, _ = BAD_FILES[name]
    data = change(good) if callable(change) else bytearray(good)
    if not callable(change):
        for off, b in change.items():
            data[off:off + len(b)] = b
    path = files["dir"] / f"bad_{name}.bin"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_tokenizer_file_is_one_line(run_bin, files, name):
    path = bad_file(files, name)
    r = run(run_bin, files["tok512"][2], "-z", path, "-m", "tokenize", "-i", "hi", ok=False)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("run: error: "), lines
    assert BAD_FILES[name][1] in lines[0], lines[0]
    with pytest.raises(ValueError):  # and the Python reader refuses it too
        V.read_bin(path)


@pytest.mark.slow  # processes of their own
@pytest.mark.ci
def test_sanitizers_on_the_new_tokenizer(run_bin, files, tmp_path):
    san = build("run_sanitize")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    import hf_tokenizer
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    bl = Tokenizer(models.BPE())
    bl.pre_tokenizer = pre_tokenizers.ByteLevel()
    bl.train_from_iterator(["Once upon a time, there was a dog. It's 42 and it's happy!"] * 3,
                           trainers.BpeTrainer(vocab_size=300, special_tokens=["<|end_story|>"], show_progress=False,
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bl.save(str(tmp_path / "tokenizer.json"))
    v = hf_tokenizer.read_tokenizer(tmp_path / "tokenizer.json")
    V.write_bin(v, tmp_path / "bl.bin")
    model_export(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=len(v), max_seq_len=64)),
                 tmp_path / "bl_m.bin", vocab_id=V.identity(v))
    text = "h\u00e9llo  \U0001F600 <|end_story|>It's \u3000 42\u0301 x\xff\t\n " * 20
    runs = [([files["specials"][2], "-z", files["specials"][1], "-m", "tokenize", "-i", text + "<|start_story|>"], 0),
            ([tmp_path / "bl_m.bin", "-z", tmp_path / "bl.bin", "-m", "tokenize", "-i", text], 0),
            ([tmp_path / "bl_m.bin", "-z", tmp_path / "bl.bin", "-i", "It's", "-n", 20], 0)]
    runs += [([files["tok512"][2], "-z", bad_file(files, n), "-m", "tokenize", "-i", "hi"], 1) for n in BAD_FILES]
    for args, code in runs:
        r = subprocess.run([str(san), *map(str, args)], capture_output=True, env=env, timeout=120)
        err = r.stderr.decode(errors="replace")
        assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
        assert r.returncode == code, (args[:3], r.returncode, err[-500:])
    # the C run on the byte-level file agrees with the tokenizers library on that text
    got = subprocess.run([str(run_bin), tmp_path / "bl_m.bin", "-z", tmp_path / "bl.bin", "-m", "tokenize", "-i", text],
                         capture_output=True).stdout.split()
    assert [int(x) for x in got] == bl.encode(text).ids

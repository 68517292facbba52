"""tokenizer.py: llama2.c's file byte-identical, our tokenizer file, its encoder against sentencepiece,
special tokens, the vocabulary identity, and bad files."""
import shutil
import struct
import subprocess
import sys

import pytest
from sentencepiece import SentencePieceProcessor

import tokenizer as T
import vocab as V
from prompts import SPECIAL, prompts
from tokenizer import Tokenizer

TEXT = "Once upon a time, Lily  saw 42 big\n\"dogs\" — and a 🐶 in the café.\n\nThe end."
SPECIALS = ["<|start_story|>", "<|end_story|>"]


@pytest.fixture(scope="session")
def special_vocab(shared, tmp_path_factory):
    """A 400-token vocabulary trained by train_vocab with two special tokens (data/tok400.model)."""
    import tinystories
    d = tmp_path_factory.mktemp("specials")
    return tinystories.train_vocab(400, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], d,
                                   max_stories=500, special_tokens=SPECIALS)


def models(shared, special_vocab):
    return {"tok512": shared / "models" / "tok512.model", "llama2": shared / "models" / "tokenizer.model",
            "specials": special_vocab}


@pytest.mark.parametrize("name", ["tok512", "tokenizer"])
def test_legacy_export_is_byte_identical_to_llama2c(shared, tmp_path, name):
    out = Tokenizer(shared / "models" / f"{name}.model").export(tmp_path / f"{name}.bin", legacy=True)
    assert out.read_bytes() == (shared / "models" / f"{name}.bin").read_bytes()


def read_legacy(path):
    data = path.read_bytes()
    max_len, pos, tokens = struct.unpack_from("<i", data)[0], 4, []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        tokens.append((score, data[pos + 8:pos + 8 + n]))
        pos += 8 + n
    return max_len, tokens


def test_legacy_format_rules(shared, tmp_path):
    model = shared / "models" / "tok512.model"
    sp = SentencePieceProcessor(model_file=str(model))
    max_len, tokens = read_legacy(Tokenizer(model).export(tmp_path / "t.bin", legacy=True))
    assert len(tokens) == 512 and max_len == max(len(t) for _, t in tokens)
    assert tokens[1][1] == b"\n<s>\n" and tokens[2][1] == b"\n</s>\n"
    for i in (0, 3, 100, 300, 511):
        assert tokens[i] == (sp.get_score(i), sp.id_to_piece(i).replace("\u2581", " ").encode())
    assert tokens[3][1] == b"<0x00>" and any(t.startswith(b" ") for _, t in tokens)


@pytest.mark.parametrize("name", ["tok512", "llama2", "specials"])
def test_new_format_round_trip_and_header(shared, special_vocab, tmp_path, name):
    path = models(shared, special_vocab)[name]
    tok = Tokenizer(path)
    out = tok.export(tmp_path / "t.bin")
    raw = out.read_bytes()
    magic, version, n, bos, eos, unk, end, n_merges, n_classes, prefix, flags = struct.unpack_from("<I8iBB", raw)
    sp = SentencePieceProcessor(model_file=str(path))
    assert (magic, version, n, bos, eos, unk) == (V.MAGIC, 1, sp.vocab_size(), sp.bos_id(), sp.eos_id(), sp.unk_id())
    assert (n_merges, n_classes, prefix) == (0, 0, V.PREFIX_TEXT) and raw[64:96] == tok.identity
    assert flags == V.ADD_BOS | V.BYTE_FALLBACK | (V.COLLAPSE if name == "tok512" else 0)  # llama2 keeps spaces
    back = V.read_bin(out)
    assert (back.pieces, back.scores, back.types, back.in_text) == (tok.vocab.pieces, tok.vocab.scores, tok.vocab.types,
                                                                   tok.vocab.in_text)
    assert V.identity(back) == tok.identity and Tokenizer(out).identity == tok.identity
    assert end == (tok.vocab.pieces.index(b"<|end_story|>") if name == "specials" else -1)
    types = [sp.is_byte(i) and V.BYTE or sp.is_control(i) and V.CONTROL or sp.is_unknown(i) and V.UNKNOWN
             or V.NORMAL for i in range(n)]
    assert [t if t != V.USER_DEFINED else V.NORMAL for t in back.types] == types


@pytest.mark.parametrize("name", ["tok512", "llama2", "specials"])
def test_encoder_matches_sentencepiece(shared, special_vocab, tmp_path, name):
    """Our encoder (the one run.c mirrors), reading our file, against sentencepiece on ~300 prompts."""
    path = models(shared, special_vocab)[name]
    sp = SentencePieceProcessor(model_file=str(path))
    mine = Tokenizer(Tokenizer(path).export(tmp_path / "t.bin"))
    assert mine.sp_model is None  # our encoder, not sentencepiece's
    bad = [p for p in prompts() + SPECIAL if mine.encode(p, bos=False, eos=False) != sp.encode(p)]
    assert not bad, f"{len(bad)} prompts differ, e.g. {bad[:3]}"
    ids = mine.encode(TEXT, bos=True, eos=True)
    assert ids == [1] + sp.encode(TEXT) + [2] and mine.decode(ids) == sp.decode(ids)
    if name == "llama2":  # Llama 2 keeps whitespace: the round trip is exact
        assert mine.decode(ids) == TEXT


def test_special_tokens_are_one_token_each(special_vocab, tmp_path):
    tok = Tokenizer(special_vocab)
    start, end = (tok.vocab.pieces.index(s.encode()) for s in SPECIALS)
    assert tok.vocab.types[start] == tok.vocab.types[end] == V.USER_DEFINED and tok.end_id == end
    for t in (tok, Tokenizer(tok.export(tmp_path / "t.bin"))):
        ids = t.encode("<|start_story|>Once upon a time<|end_story|>", bos=True, eos=False)
        assert ids[0] == 1 and ids[2] == start and ids[-1] == end and ids.count(start) == ids.count(end) == 1
        assert t.decode(ids) == "<|start_story|>Once upon a time<|end_story|>"
        assert t.stops() == (1, 2, end) and t.stops("") == (1, 2) and t.stops("<|start_story|>") == (1, 2, start)
        with pytest.raises(ValueError, match="is not a token"):
            t.stops("<|nope|>")
    # sentencepiece's own control tokens are never read from text
    assert Tokenizer(special_vocab).encode("</s>", bos=False, eos=False) != [2]


def test_identity(shared, special_vocab, tmp_path):
    ids = {name: Tokenizer(p).identity for name, p in models(shared, special_vocab).items()}
    assert len(set(ids.values())) == 3 and all(len(i) == 32 for i in ids.values())
    assert Tokenizer(shared / "models" / "tok512.bin").identity is None  # llama2.c's file: types are guessed
    # the same vocabulary in another file gives the same identity; another vocabulary another one
    copy = tmp_path / "copy.model"
    shutil.copy(shared / "models" / "tok512.model", copy)
    assert Tokenizer(copy).identity == ids["tok512"]
    assert Tokenizer(Tokenizer(copy).export(tmp_path / "c.bin")).identity == ids["tok512"]
    # a converted llama2.c file has no identity (zeros) and says so
    conv = Tokenizer(shared / "models" / "tok512.bin").export(tmp_path / "conv.bin")
    assert conv.read_bytes()[64:96] == bytes(32) and Tokenizer(conv).identity is None
    notes = []
    T.check_identity(ids["tok512"], "m.bin", Tokenizer(conv), notes.append)
    assert len(notes) == 1 and "no vocabulary identity" in notes[0]
    with pytest.raises(ValueError, match="is not the tokenizer of m.bin"):
        T.check_identity(ids["llama2"], "m.bin", Tokenizer(copy))


def test_vocabulary_for_other_writers(shared, special_vocab):
    v = V.vocabulary(Tokenizer(special_vocab).vocab)  # vocab.py reads no tokenizer files: tokenizer.py does
    sp = SentencePieceProcessor(model_file=str(special_vocab))
    assert v["model"] == "llama" and v["tokens"] == [sp.id_to_piece(i) for i in range(400)]
    assert v["scores"] == pytest.approx([sp.get_score(i) for i in range(400)]) and v["merges"] == []
    assert (v["bos_id"], v["eos_id"], v["unk_id"], v["end_id"]) == (1, 2, 0, 4)
    assert v["types"][:5] == [V.UNKNOWN, V.CONTROL, V.CONTROL, V.USER_DEFINED, V.USER_DEFINED]
    assert v["special_ids"] == [1, 2, 3, 4] and v["add_bos"] and v["add_space_prefix"]
    assert v["identity"] == Tokenizer(special_vocab).identity.hex()


def test_cli_writes_both_formats(shared, repo, tmp_path):
    model = tmp_path / "tok512.model"
    shutil.copy(shared / "models" / "tok512.model", model)
    run = lambda *a: subprocess.run([sys.executable, str(repo / "tokenizer.py"), *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    r = run("-t", model, "--legacy")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tok512.bin").read_bytes() == (shared / "models" / "tok512.bin").read_bytes()
    r = run("-t", model, "-o", tmp_path / "new.bin")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "new.bin").read_bytes()[:4] == b"SLTK"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "tok512.bin", "tok512.model"]  # no temp left
    # the default output holds llama2.c's file: ours is not written over it unasked (a newcomer lost a shared
    # file so); the same bytes again are fine
    before = (tmp_path / "tok512.bin").read_bytes()
    r = run("-t", model)
    assert r.returncode == 1 and r.stderr.strip() == (f"tokenizer.py: error: {tmp_path / 'tok512.bin'} exists and holds "
                                                      "another file: pass -o PATH to write elsewhere, or remove it")
    assert (tmp_path / "tok512.bin").read_bytes() == before
    assert run("-t", model, "--legacy").returncode == 0


@pytest.mark.parametrize("content", [None, b"this is not a sentencepiece model"])
def test_bad_model_path_is_one_line_error(repo, tmp_path, content):
    model = tmp_path / "bad.model"
    if content is not None:
        model.write_bytes(content)
    r = subprocess.run([sys.executable, str(repo / "tokenizer.py"), "-t", str(model)],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"tokenizer.py: error: {model}: ")
    assert not (tmp_path / "bad.bin").exists()
    with pytest.raises((FileNotFoundError, ValueError), match="bad.model"):
        Tokenizer(model)


def test_bad_tokenizer_files(shared, tmp_path):
    good = Tokenizer(shared / "models" / "tok512.model").export(tmp_path / "good.bin").read_bytes()
    i32 = lambda v: struct.pack("<i", v)  # noqa: E731
    cases = {  # name: (bytes, expected words)
        "short": (good[:100], "truncated"),
        "version": (good[:4] + i32(2) + good[8:], "version 2"),
        "vocab": (good[:8] + i32(0) + good[12:], "out of range"),
        "bos": (good[:12] + i32(512) + good[16:], "out of range"),
        "flags": (good[:37] + b"\xff" + good[38:], "out of range"),
        "type": (good[:128] + b"\x09" + good[129:], "type 9"),
        "length": (good[:134] + i32(1 << 30) + good[138:], "length"),
        "extra": (good + b"\0", "does not match"),
        "identity": (good[:64] + bytes([good[64] ^ 1]) + good[65:], "identity does not match"),
        "merges": (good[:28] + i32(1) + good[32:] + i32(3) + i32(4) + i32(5), "does not join"),
    }
    for name, (data, words) in cases.items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        with pytest.raises(ValueError, match=words):
            V.read_bin(tmp_path / f"{name}.bin")

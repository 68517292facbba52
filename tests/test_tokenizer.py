"""tokenizer.py: parity with sentencepiece, and the run.c .bin export byte-identical to llama2.c's."""
import shutil
import struct
import subprocess
import sys

import pytest
from sentencepiece import SentencePieceProcessor

from tokenizer import Tokenizer

TEXT = "Once upon a time, Lily  saw 42 big\n\"dogs\" — and a 🐶 in the café.\n\nThe end."


@pytest.mark.parametrize("name", ["tok512", "tokenizer"])
def test_export_is_byte_identical_to_llama2c(shared, tmp_path, name):
    out = Tokenizer(shared / "models" / f"{name}.model").export(tmp_path / f"{name}.bin")
    assert out.read_bytes() == (shared / "models" / f"{name}.bin").read_bytes()


def read_bin(path):
    data = path.read_bytes()
    max_len, pos, tokens = struct.unpack_from("<i", data)[0], 4, []
    while pos < len(data):
        score, n = struct.unpack_from("<fi", data, pos)
        tokens.append((score, data[pos + 8:pos + 8 + n]))
        pos += 8 + n
    return max_len, tokens


def test_export_format_rules(shared, tmp_path):
    model = shared / "models" / "tok512.model"
    sp = SentencePieceProcessor(model_file=str(model))
    max_len, tokens = read_bin(Tokenizer(model).export(tmp_path / "t.bin"))
    assert len(tokens) == 512 and max_len == max(len(t) for _, t in tokens)
    assert tokens[1][1] == b"\n<s>\n" and tokens[2][1] == b"\n</s>\n"
    for i in (0, 3, 100, 300, 511):
        assert tokens[i] == (sp.get_score(i), sp.id_to_piece(i).replace("\u2581", " ").encode())
    assert tokens[3][1] == b"<0x00>" and any(t.startswith(b" ") for _, t in tokens)


@pytest.mark.parametrize("name", ["tok512", "tokenizer"])
def test_encode_decode_match_sentencepiece(shared, name):
    path = shared / "models" / f"{name}.model"
    tok, sp = Tokenizer(path), SentencePieceProcessor(model_file=str(path))
    assert (tok.n_words, tok.bos_id, tok.eos_id) == (sp.vocab_size(), 1, 2)
    ids = tok.encode(TEXT, bos=True, eos=True)
    assert ids == [1] + sp.encode(TEXT) + [2]
    assert tok.encode(TEXT, bos=False, eos=False) == sp.encode(TEXT)
    assert tok.decode(ids) == sp.decode(sp.encode(TEXT))
    if name == "tokenizer":  # Llama 2 keeps whitespace: the round trip is exact
        assert tok.decode(ids) == TEXT


def test_cli_writes_bin_next_to_model(shared, repo, tmp_path):
    model = tmp_path / "tok512.model"
    shutil.copy(shared / "models" / "tok512.model", model)
    r = subprocess.run([sys.executable, str(repo / "tokenizer.py"), "-t", str(model)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tok512.bin").read_bytes() == (shared / "models" / "tok512.bin").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok512.bin", "tok512.model"]  # no temp left


@pytest.mark.parametrize("content", [None, b"this is not a sentencepiece model"])
def test_bad_model_path_is_one_line_error(repo, tmp_path, content):
    model = tmp_path / "bad.model"
    if content is not None:
        model.write_bytes(content)
    r = subprocess.run([sys.executable, str(repo / "tokenizer.py"), "-t", str(model)],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith(f"error: {model}: ")
    assert not (tmp_path / "bad.bin").exists()
    with pytest.raises((FileNotFoundError, ValueError), match="bad.model"):
        Tokenizer(model)

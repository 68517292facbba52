"""Data pipeline tests on the shared TinyStories files: readers and their errors, train_vocab,
pretokenize (round trip, split, determinism, atomicity), and the batch iterator (determinism,
exact resume, disjoint ranks and DataLoader workers, BOS alignment, tokenizer checks: dataloader.py)."""
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import dataloader as dl
import tinystories as ts
from dataloader import DataError
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus(shared):
    return sorted((shared / "tinystories").iterdir())


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """A 512-token vocabulary and its shards, built once from all shared story files."""
    d = tmp_path_factory.mktemp("data")
    ts.train_vocab(512, corpus, d)
    ts.pretokenize(512, corpus, d, workers=2)
    return d


def stories_of(path):
    return list(ts.iter_stories(path))


# ---------------------------------------------------------------------------- readers

def test_text_files_and_cut_off_last_story(shared, capsys):
    d = shared / "tinystories"
    # counts from shared/data/README.md: complete stories, the cut-off last one not counted
    v1 = stories_of(d / "TinyStories-train.head-2MiB.txt")
    assert len(v1) == 2316 and "dropped a cut-off last story" in capsys.readouterr().err
    assert v1[0].startswith("One day, a little girl named Lily found a needle in her room.")
    assert v1[-1].endswith(".")
    v2 = stories_of(d / "TinyStoriesV2-GPT4-train.head-10k-lines.txt")
    assert len(v2) == 1727 and v2[0].startswith("Once upon a time there was a little boy named Ben.")
    assert "dropped a cut-off last story" in capsys.readouterr().err
    sample = stories_of(d / "TinyStoriesV2-GPT4-train.sample.txt")  # ends with a separator
    assert len(sample) == 5 and "dropped" not in capsys.readouterr().err
    assert all(s == s.strip() and s for s in v1 + v2 + sample)


def test_cut_off_rule_and_empty_stories(tmp_path, capsys):
    p = tmp_path / "s.txt"
    p.write_text("  first story \n<|endoftext|>\n \n<|endoftext|><|endoftext|>second\n<|endoftext|>\n\n")
    assert stories_of(p) == ["first story", "second"]
    assert capsys.readouterr().err == ""
    p.write_text("first<|endoftext|>second, cut off in the midd")
    assert stories_of(p) == ["first"]
    assert "dropped a cut-off last story (27 bytes at byte 18" in capsys.readouterr().err


def test_all_formats_give_the_same_stories(shared, tmp_path):
    d = shared / "tinystories"
    text = (d / "TinyStories-train.head-2MiB.txt").read_bytes()
    want = stories_of(d / "TinyStories-train.head-2MiB.txt")
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(text, 1))
    (tmp_path / "a.txt.xz").write_bytes(lzma.compress(text, preset=0))
    assert stories_of(tmp_path / "a.txt.gz") == want
    assert stories_of(tmp_path / "a.txt.xz") == want

    texts = json.loads((d / "tinystories-3000-stories.json").read_text())["texts"]
    want = [t.strip() for t in texts if t.strip()]
    assert len(want) == 3000 and stories_of(d / "tinystories-3000-stories.json") == want
    all_data = json.dumps([{"story": t, "instruction": {}, "source": "GPT-4"} for t in texts]).encode()
    (tmp_path / "data00.json").write_bytes(all_data)
    (tmp_path / "data01.json.gz").write_bytes(gzip.compress(all_data, 1))
    (tmp_path / "data02.json.xz").write_bytes(lzma.compress(all_data, preset=0))
    for name in ("data00.json", "data01.json.gz", "data02.json.xz"):
        assert stories_of(tmp_path / name) == want
    (tmp_path / "t.json").write_text(json.dumps({"texts": ["  a\n", "", " ", "b"]}))
    assert stories_of(tmp_path / "t.json") == ["a", "b"]


def test_truncated_compressed_text_keeps_complete_stories(shared, tmp_path, capsys):
    path = shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"
    packed = gzip.compress(path.read_bytes())
    (tmp_path / "cut.txt.gz").write_bytes(packed[: len(packed) * 2 // 3])
    got = stories_of(tmp_path / "cut.txt.gz")
    full = stories_of(path)
    assert 0 < len(got) < len(full) and got == full[: len(got)]
    assert "compressed data ends early" in capsys.readouterr().err


@pytest.mark.parametrize("name, data, message", [
    ("bad.txt", b"good<|endoftext|>\nbad \xff here<|endoftext|>", r"bad.txt: invalid UTF-8 at byte 22$"),
    ("bad.txt.gz", gzip.compress(b"ok<|endoftext|>\xc3(<|endoftext|>"),
     r"invalid UTF-8 at byte 15 of the decompressed data$"),
    ("bad.json", b'{"texts": ["a",\n "b",\n ]}', r"bad.json: malformed JSON at line 3 column 2: "),
    ("cut.json", b'[{"story": "a"}, {"story": "b', r"cut.json: malformed JSON at line 1 column 28: Unterminated string"),
    ("utf.json", b'{"texts": ["\xe9"]}', r"utf.json: invalid UTF-8 at byte 12$"),
    ("nostory.json", b'[{"story": "a"}, {"text": "b"}]', r"item 1 is not an object with a string \"story\""),
    ("nonstr.json", b'{"texts": ["a", 7]}', r"texts\[1\] is not a string"),
    ("shape.json", b'{"stories": []}', r"expected a list of objects"),
    ("junk.txt.gz", b"this is not gzip data at all", r"junk.txt.gz: cannot decompress"),
    ("junk.json.xz", b"\xfd7zXZ\x00 broken", r"junk.json.xz: cannot decompress"),
])
def test_malformed_files_name_file_and_position(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        stories_of(tmp_path / name)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.txt: no such file"):
        stories_of(tmp_path / "nope.txt")


@pytest.mark.slow  # processes of their own
def test_cli_errors_are_one_line_without_traceback(tmp_path):
    (tmp_path / "bad.json").write_bytes(b'{"texts": ["a", ]}')
    (tmp_path / "good.txt").write_text("a story<|endoftext|>")

    def run(*args):
        r = subprocess.run([sys.executable, "tinystories.py", *args, "--data_dir", str(tmp_path / "d")],
                           cwd=dl.REPO, capture_output=True, text=True, timeout=60)
        lines = [line for line in r.stderr.splitlines()
                 if line.strip() and not line.startswith(("note:", "vocab sample"))]
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        return lines[0]

    assert "bad.json: malformed JSON at line 1 column 17" in run(
        "train_vocab", "--vocab_size=300", "--input", str(tmp_path / "bad.json"))
    assert "must be at least 260" in run("train_vocab", "--vocab_size=100", "--input", str(tmp_path))
    assert "at most 65535" in run("pretokenize", "--vocab_size=65536", "--input", str(tmp_path))
    # the hint keeps the user's --data_dir
    assert (f"tok300.model not found: run `python tinystories.py train_vocab --vocab_size=300 "
            f"--data_dir={tmp_path / 'd'}`") in run("pretokenize", "--vocab_size=300", "--input", str(tmp_path / "good.txt"))
    assert "--input" in run("pretokenize", "--vocab_source=llama2", "--input", str(tmp_path / "missing"))
    assert "run `python tinystories.py download --dataset=v2` first" in run(
        "pretokenize", "--vocab_source=llama2", "--dataset=v2")
    assert "needs --vocab_size=N" in run("pretokenize", "--input", str(tmp_path / "good.txt"))
    assert "tokenizer.model not found" in run("pretokenize", "--vocab_source=llama2", "--input", str(tmp_path))
    assert "sentencepiece could not train" in run(
        "train_vocab", "--vocab_size=5000", "--input", str(tmp_path / "good.txt"))


def test_help_for_every_command():
    for cmd in ("download", "download_tokenizer", "train_vocab", "pretokenize"):
        r = subprocess.run([sys.executable, "tinystories.py", cmd, "--help"], cwd=dl.REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "--data_dir" in r.stdout


# ---------------------------------------------------------------------------- train_vocab

def test_train_vocab_is_deterministic_with_special_tokens(corpus, tmp_path, capsys, monkeypatch):
    special = ["<|start_story|>", "<|end_story|>"]
    a = ts.train_vocab(400, corpus, tmp_path / "a", max_stories=800, special_tokens=special)
    monkeypatch.setattr(ts.os, "cpu_count", lambda: 7)  # nor on the machine's core count
    b = ts.train_vocab(400, corpus, tmp_path / "b", max_stories=800, special_tokens=special)
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / "tok400.vocab").read_bytes() == (tmp_path / "b" / "tok400.vocab").read_bytes()
    tok = Tokenizer(a)
    assert tok.n_words == 400 and (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("<|start_story|>Hi<|end_story|>", False, False)
    assert ids[-1] == 4 and 3 in ids and tok.decode(ids) == "<|start_story|>Hi<|end_story|>"
    mtime = a.stat().st_mtime_ns
    capsys.readouterr()
    ts.train_vocab(400, corpus, tmp_path / "a", max_stories=800, special_tokens=special)
    assert "nothing to do" in capsys.readouterr().out and a.stat().st_mtime_ns == mtime
    # the sample is bounded: a different bound gives a different vocabulary
    c = ts.train_vocab(400, corpus, tmp_path / "c", max_stories=200, special_tokens=special)
    assert c.read_bytes() != a.read_bytes()


# ---------------------------------------------------------------------------- pretokenize

def decode_shards(folder, split, tok):
    """Stories back from the shards of a split, checking the BOS ... EOS framing."""
    tokens = np.concatenate([dl.load_shard(p) for p in sorted(folder.glob(f"{split}_*.bin"))])
    bos = np.flatnonzero(tokens == tok.bos_id)
    eos = np.flatnonzero(tokens == tok.eos_id)
    assert bos[0] == 0 and eos[-1] == len(tokens) - 1 and len(bos) == len(eos)
    assert np.all(bos[1:] == eos[:-1] + 1)  # every token is inside a BOS ... EOS story
    return [tok.decode(tokens[b + 1:e]) for b, e in zip(bos, eos)]


def test_whole_chain_round_trip(built, corpus):
    tok = Tokenizer(built / "tok512.model")
    assert tok.n_words == 512
    split = list(ts.iter_split(corpus))
    for name, is_val in (("train", False), ("val", True)):
        want = [s for s, v in split if v == is_val]
        assert decode_shards(built / "tok512", name, tok) == want
        headers = [dl.read_header(p) for p in (built / "tok512").glob(f"{name}_*.bin")]
        assert sum(h["n_stories"] for h in headers) == len(want)
        assert sum(h["n_bytes"] for h in headers) == sum(len(s.encode()) for s in want)
        assert dl.split_bytes_per_token(name, 512, data_dir=built) == pytest.approx(
            sum(len(s.encode()) for s in want) / sum(h["n_tokens"] for h in headers))
    assert not list(built.rglob("*.tmp*"))


def test_validation_split_rule(corpus, tmp_path):
    split = list(ts.iter_split(corpus))
    val = [s for s, v in split if v]
    assert 0.005 < len(val) / len(split) < 0.02  # about 1 in 100
    # the documented rule: blake2b with an 8-byte digest, read little-endian, 0 mod 100
    assert all((int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") % 100 == 0) == v
               for s, v in split)
    # same story, same side: wherever it is and whatever comes around it
    assert [v for _, v in ts.iter_split(corpus[::-1])] != [] and \
        {s for s, v in ts.iter_split(corpus[::-1]) if v} == set(val)
    # a file named *valid* is the validation split, and then nothing else is held out
    valid = tmp_path / "TinyStoriesV2-GPT4-valid.txt"
    shutil.copy(corpus[-1], valid)
    got = list(ts.iter_split([corpus[0], valid]))
    assert [s for s, v in got if v] == stories_of(valid)
    assert [s for s, v in got if not v] == stories_of(corpus[0])


def test_shards_do_not_depend_on_worker_count(shared, tmp_path, built):
    files = [shared / "tinystories" / "tinystories-3000-stories.json"]
    outs = []
    for workers in (1, 2):
        d = tmp_path / f"w{workers}"
        d.mkdir()
        shutil.copy(built / "tok512.model", d)
        outs.append(ts.pretokenize(512, files, d, workers=workers, shard_tokens=200_000, chunk_stories=64))
    names = sorted(p.name for p in outs[0].glob("*.bin"))
    assert len(names) > 3 and names == sorted(p.name for p in outs[1].glob("*.bin"))  # several shards
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_pretokenize_is_idempotent_and_atomic(shared, tmp_path, built, monkeypatch, capsys):
    files = [shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"]
    shutil.copy(built / "tok512.model", tmp_path)
    out = ts.pretokenize(512, files, tmp_path, workers=1)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    capsys.readouterr()
    ts.pretokenize(512, files, tmp_path, workers=1)
    assert "nothing to do" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before

    # a run that dies half way leaves the previous shards exactly as they were
    calls = []

    def dying(chunk):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(chunk)

    real = ts._encode_chunk
    monkeypatch.setattr(ts, "_encode_chunk", dying)
    more = files + [shared / "tinystories" / "tinystories-3000-stories.json"]
    with pytest.raises(KeyboardInterrupt):
        ts.pretokenize(512, more, tmp_path, workers=1)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    monkeypatch.setattr(ts, "_encode_chunk", real)
    ts.pretokenize(512, more, tmp_path, workers=1)  # new inputs: the shards are rebuilt
    assert sum(dl.read_header(p)["n_stories"] for p in out.glob("*.bin")) == 3005


def _dies_on_second_chunk(chunk):
    """Stands in for _encode_chunk in forked pretokenize workers (module level: it is pickled)."""
    if chunk[0][0] != _FIRST[0]:
        os._exit(3)
    return _REAL_ENCODE(chunk)


_FIRST, _REAL_ENCODE = [], ts._encode_chunk


def test_dead_worker_is_an_error_not_a_hang(shared, tmp_path, built, monkeypatch):
    shutil.copy(built / "tok512.model", tmp_path)
    src = shared / "tinystories" / "tinystories-3000-stories.json"
    _FIRST[:] = [next(ts.iter_stories(src))]
    monkeypatch.setattr(ts, "_encode_chunk", _dies_on_second_chunk)
    with pytest.raises(DataError, match="worker process died"):
        ts.pretokenize(512, [src], tmp_path, workers=2, chunk_stories=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok512.model"]  # no half-made shards


def test_llama2_tokenizer_shards(shared, tmp_path):
    files = [shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"]
    shutil.copy(shared / "models" / "tokenizer.model", dl.tokenizer_path(32000, "llama2", tmp_path))
    out = ts.pretokenize(32000, files, tmp_path, workers=1, vocab_source="llama2")
    assert out == tmp_path / "llama2"
    tok = Tokenizer(tmp_path / "tokenizer.model")
    h = dl.read_header(out / "train_0000.bin")
    assert h["vocab_size"] == 32000 and h["tokenizer_sha256"] == dl.file_sha256(tok.model_path)
    split = list(ts.iter_split(files))
    assert decode_shards(out, "train", tok) == [s for s, v in split if not v]
    x, y = next(dl.iter_batches("train", 2, 16, 32000, "llama2", data_dir=tmp_path))
    assert x.shape == (2, 16) and int(x.max()) < 32000


def test_refuses_vocab_over_uint16(tmp_path, corpus):
    with pytest.raises(DataError, match="uint16"):
        ts.pretokenize(70000, corpus, tmp_path)
    with pytest.raises(DataError, match="uint16"):
        ts.train_vocab(65536, corpus, tmp_path)


# ---------------------------------------------------------------------------- iter_batches

def take(n, **kw):
    args = dict(split="train", batch_size=4, max_seq_len=64, vocab_size=512)
    args.update(kw)
    return [b for _, b in zip(range(n), dl.iter_batches(**args))]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))


def test_batches_shape_and_targets(built):
    for x, y in take(3, data_dir=built):
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 512 and int(x.min()) >= 0
    x, _ = take(1, data_dir=built, batch_size=64)[0]
    assert (x == 1).any() and len({tuple(r.tolist()) for r in x}) == 64


def test_deterministic_and_exact_resume(built):
    a = take(12, data_dir=built, seed=7)
    assert same(a, take(12, data_dir=built, seed=7))
    assert not same(a, take(12, data_dir=built, seed=8))
    assert same(a[5:], take(7, data_dir=built, seed=7, start=5))
    # past the end of an epoch too (the val split has ~420 windows of 65 tokens: ~26 batches)
    v = take(60, split="val", data_dir=built, batch_size=16)
    assert same(v[41:], take(19, split="val", data_dir=built, batch_size=16, start=41))


def windows_of(built, split, batch_size, seq, bos_aligned=False):
    shards = dl.split_shards(split, 512, data_dir=built)
    return dl.Batches(shards, batch_size, seq, 1337, bos_aligned), shards


def test_ranks_share_no_tokens_within_an_epoch(built):
    seq, bs, world = 255, 8, 3
    seen = []
    for rank in range(world):
        b, shards = windows_of(built, "train", bs, seq)
        per_epoch = b.n_windows // (bs * world)
        for k in range(per_epoch):
            s, st = b.windows(k * world + rank)  # rank r's batch k is global batch k * world + r
            seen += list(zip(s.tolist(), st.tolist()))
        x, _ = take(1, data_dir=built, batch_size=bs, max_seq_len=seq, world_size=world, rank=rank, start=3)[0]
        s, st = b.windows(3 * world + rank)  # the iterator really serves these windows
        tokens = [dl.load_shard(p) for p, _ in shards]
        assert all(torch.equal(x[i], torch.from_numpy(tokens[s[i]][st[i]:st[i] + seq].astype(np.int64)))
                   for i in range(bs))
    assert len(seen) == len(set(seen)) and len(seen) > 0.99 * b.n_windows - bs * world
    for shard in {s for s, _ in seen}:
        starts = np.sort([st for s, st in seen if s == shard])
        assert np.all(np.diff(starts) >= seq + 1)  # windows of seq+1 tokens never overlap


def test_dataloader_workers_give_the_same_disjoint_batches(built):
    serial = take(9, data_dir=built, seed=3, start=2)
    assert same(serial, take(9, data_dir=built, seed=3, start=2, num_workers=2))
    b, _ = windows_of(built, "train", 4, 64)
    b.seed = 3
    w = [tuple(zip(*map(np.ndarray.tolist, b.windows(k)))) for k in range(2, 11)]
    by_worker = [set().union(*w[0::2]), set().union(*w[1::2])]  # batches k, k+2.. go to one worker
    assert not by_worker[0] & by_worker[1]


def test_bos_aligned_windows(built):
    for rank in range(2):
        for x, y in take(5, data_dir=built, bos_aligned=True, batch_size=16, world_size=2, rank=rank):
            assert (x[:, 0] == 1).all()
    starts = [set(), set()]
    for rank in range(2):
        b, _ = windows_of(built, "train", 16, 64, bos_aligned=True)
        for k in range(b.n_windows // 32):
            starts[rank] |= set(zip(*map(np.ndarray.tolist, b.windows(k * 2 + rank))))
    assert not starts[0] & starts[1] and len(starts[0]) == len(starts[1]) == (b.n_windows // 32) * 16
    n_stories = sum(h["n_stories"] for _, h in dl.split_shards("train", 512, data_dir=built))
    assert n_stories - 10 <= b.n_windows <= n_stories  # one window per story start


def test_any_tokenizer_file_by_name_checked_by_identity(built, shared, tmp_path, capsys):
    """pretokenize --tokenizer=PATH takes run.c's tokenizer file too, names the shard folder after the
    file, records the vocabulary identity, and the shards fit every file of that vocabulary."""
    story_file = shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"
    tok_bin = Tokenizer(built / "tok512.model").export(tmp_path / "mine.bin")  # run.c's file, same vocabulary
    assert ts.main(["pretokenize", f"--tokenizer={tok_bin}", f"--data_dir={tmp_path}", "--input", str(story_file),
                    "--workers=1"]) == 0
    shards = dl.split_shards("train", 512, "mine", tmp_path)  # vocab_source=NAME: data/NAME.bin, data/NAME/
    h = shards[0][1]
    assert h["identity"] == Tokenizer(built / "tok512.model").identity == Tokenizer(tok_bin).identity
    assert h["tokenizer_sha256"] == dl.file_sha256(tok_bin)
    # the same ids as the sentencepiece model itself gives: run.c's file encodes like sentencepiece
    sp = Tokenizer(built / "tok512.model")
    want = [t for s in ts.iter_stories(story_file) for t in [sp.bos_id] + sp.encode(s, False, False) + [sp.eos_id]]
    assert dl.load_shard(shards[0][0]).tolist() == want
    # another file of the same vocabulary fits by identity, a different vocabulary does not
    assert dl.split_shards("train", 512, "mine", tmp_path, tokenizer=built / "tok512.model")
    assert dl.split_shards("train", 512, data_dir=built, tokenizer=tok_bin)
    other = Tokenizer(shared / "models" / "tok512.model").export(tmp_path / "other.bin")
    with pytest.raises(DataError, match=r"made with another tokenizer \(vocabulary .*\) than .*other.bin"):
        dl.split_shards("train", 512, "mine", tmp_path, tokenizer=other)
    # a name's folder that holds other files is never replaced by shards
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "stories15M.bin").write_bytes(b"x")
    capsys.readouterr()
    assert ts.main(["pretokenize", f"--tokenizer={tok_bin}", "--vocab_source=models", f"--data_dir={tmp_path}",
                    "--input", str(story_file), "--workers=1"]) == 1
    assert "holds files that are not token shards" in capsys.readouterr().err
    assert (tmp_path / "models" / "stories15M.bin").read_bytes() == b"x"
    for bad in ("../up", "a b", "x.tmp", ""):
        with pytest.raises(DataError, match="expected 'custom', 'llama2' or a vocabulary name"):
            dl.shard_dir(512, bad, tmp_path)


def test_too_small_splits_say_what_to_do(built, shared, tmp_path, capsys):
    """A corpus too small for the 1-in-100 hold-out, and a val split shorter than a window, each get a line
    that says so and what to do (not the download/train_vocab advice for a missing vocabulary)."""
    stories = ts.iter_stories(shared / "tinystories" / "TinyStoriesV2-GPT4-train.head-10k-lines.txt")
    few = [s for s in stories if not ts._hash_is_val(s)][:40]
    (tmp_path / "few.txt").write_text("\n<|endoftext|>\n".join(few) + "\n<|endoftext|>\n")
    shutil.copy(built / "tok512.model", tmp_path)
    capsys.readouterr()
    ts.pretokenize(512, [tmp_path / "few.txt"], tmp_path, workers=1)
    assert "validation split is empty" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"too few for a validation split .* add a \*valid\* file"):
        dl.iter_batches("val", 4, 64, 512, data_dir=tmp_path)
    (tmp_path / "tiny-valid.txt").write_text(few[0][:40] + "\n<|endoftext|>\n")
    ts.pretokenize(512, [tmp_path / "few.txt", tmp_path / "tiny-valid.txt"], tmp_path, workers=1)
    with pytest.raises(DataError, match=r"val_\*.bin hold \d+ tokens in 1 stories, no window of max_seq_len\+1=257 "
                                        r"tokens: pretokenize more stories into this split"):
        dl.iter_batches("val", 4, 256, 512, data_dir=tmp_path)


def test_refuses_other_tokenizer_or_vocab(built, corpus, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(built / "tok512", other / "tok512")
    ts.train_vocab(512, corpus, other, max_stories=300)  # a different 512-token model
    with pytest.raises(DataError, match="made with another tokenizer"):
        dl.iter_batches("train", 4, 64, 512, data_dir=other)
    with pytest.raises(DataError, match="made with another tokenizer"):
        dl.split_bytes_per_token("val", 512, data_dir=other)
    shutil.copytree(built / "tok512", tmp_path / "wrong" / "tok600")
    with pytest.raises(DataError, match="made with a 512-token vocabulary, but vocab_size=600"):
        dl.iter_batches("train", 4, 64, 600, data_dir=tmp_path / "wrong")
    with pytest.raises(DataError, match="no train shards in .*pretokenize --vocab_size=1024"):
        dl.iter_batches("train", 4, 64, 1024, data_dir=built)


def test_refuses_damaged_shards(built, tmp_path):
    d = tmp_path / "tok512"
    shutil.copytree(built / "tok512", d)
    shutil.copy(built / "tok512.model", tmp_path)
    data = (d / "val_0000.bin").read_bytes()
    (d / "val_0000.bin").write_bytes(data[:-2])
    with pytest.raises(DataError, match="val_0000.bin: .* bytes, the header says .*truncated"):
        dl.iter_batches("val", 4, 64, 512, data_dir=tmp_path)
    (d / "val_0000.bin").write_bytes(data[256:])  # a raw llama2.c-style uint16 file, no header
    with pytest.raises(DataError, match="not a storyllama token shard"):
        dl.iter_batches("val", 4, 64, 512, data_dir=tmp_path)
    with pytest.raises(DataError, match="no window of max_seq_len"):
        dl.iter_batches("train", 4, 10**8, 512, data_dir=built)
    with pytest.raises(DataError, match="rank=2, world_size=2"):
        dl.iter_batches("train", 4, 64, 512, data_dir=built, rank=2, world_size=2)


def _field(data, name, value):
    """A shard's bytes with one header field replaced (names as in dataloader.HEADER_FMT)."""
    import struct
    fields = ["magic", "version", "vocab_size", "bos_id", "eos_id", "n_tokens", "n_stories", "n_bytes", "sha"]
    vals = list(struct.unpack_from(dl.HEADER_FMT, data))
    vals[fields.index(name)] = value
    return struct.pack(dl.HEADER_FMT, *vals).ljust(dl.HEADER_SIZE, b"\0") + data[dl.HEADER_SIZE:]


def test_refuses_bad_token_ids_forged_headers_and_directories(built, tmp_path):
    """Token ids are checked against the vocabulary when the shards are loaded (they used to reach the
    embedding and fail with IndexError mid-training), and every header field the batches and bits per
    byte rely on is checked: each a one-line DataError naming the shard, before a batch is made."""
    d = tmp_path / "tok512"
    shutil.copytree(built / "tok512", d)
    shutil.copy(built / "tok512.model", tmp_path)
    good = (d / "val_0000.bin").read_bytes()
    bad = bytearray(good)
    bad[dl.HEADER_SIZE + 2 * 1234: dl.HEADER_SIZE + 2 * 1235] = (600).to_bytes(2, "little")
    (d / "val_0000.bin").write_bytes(bad)
    with pytest.raises(DataError, match="val_0000.bin: token id 600 at position 1234 is outside the 512-token "
                                        "vocabulary: a damaged shard"):
        dl.split_shards("val", 512, data_dir=tmp_path)
    n_tokens = (len(good) - dl.HEADER_SIZE) // 2
    for name, value, words in (("n_bytes", 0, f"n_bytes=0 for {n_tokens} tokens"),
                               ("n_stories", n_tokens, f"n_stories={n_tokens} for {n_tokens} tokens"),
                               ("n_stories", 0, "n_stories=0"),
                               ("bos_id", 9999, "bos_id=9999, eos_id=2 for a 512-token vocabulary"),
                               ("vocab_size", 0, "vocab_size=0")):
        (d / "val_0000.bin").write_bytes(_field(good, name, value))
        with pytest.raises(DataError, match=f"val_0000.bin: damaged or forged header: {words}"):
            dl.iter_batches("val", 4, 64, 512, data_dir=tmp_path)
    (d / "val_0000.bin").write_bytes(good)
    (d / "val_0001.bin").mkdir()
    with pytest.raises(DataError, match="val_0001.bin: not a regular file"):
        dl.split_bytes_per_token("val", 512, data_dir=tmp_path)

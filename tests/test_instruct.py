"""TinyStoriesInstruct end to end: the record format read (bad records named by file and line, counted)
and written (instruct.py), pretokenize's version-2 shards and their loss mask, the batches' -1 targets,
a training loss that ignores the prompts, the instruct prompt flags of sample.py and run.c (the same
tokens), generation that stops at EOS, the download, and the measure.

The records here are written out in the layout the published files use (TinyStories-Instruct-*.txt:
fields, "Story: ", a blank line, the story, a line "<|endoftext|>"), not made by the code under test;
the expected tokens come from sentencepiece itself."""
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dataloader as dl
import instruct
import tinystories as ts
from binfile import model_export
from conftest import build
from model import ModelArgs, Transformer
from test_model import tiny

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))  # the benchmark's make and measure are tested in process
import bench_instruct  # noqa: E402
SEP = "<|endoftext|>"

# Good records as the published files hold them, and (the prompt each is trained with, its story).
GOOD = [
    ("Summary: Lily finds a lost cat and brings it home.\nWords: find, cat, warm\nFeatures: Dialogue\nStory: \n\n"
     "Lily saw a cat. \"Are you lost?\" she asked.\nShe found it a warm bed.\n",
     "Summary: Lily finds a lost cat and brings it home.\nWords: find, cat, warm\nFeatures: Dialogue\nStory:",
     "Lily saw a cat. \"Are you lost?\" she asked.\nShe found it a warm bed."),
    # fields in another order, a Random sentence, and no blank line after "Story:"
    ("Features: BadEnding\nRandom sentence: The ball rolled away.\nWords: roll, ball, sad\nStory: \n"
     "Tom had a ball. The ball rolled away. Tom was sad.\n",
     "Features: BadEnding\nRandom sentence: The ball rolled away.\nWords: roll, ball, sad\nStory:",
     "Tom had a ball. The ball rolled away. Tom was sad."),
    # a field after the story: read, and moved before it
    ("Words: jump, frog, green\nStory: \n\nA green frog liked to jump.\n\nIt jumped all day.\nSummary: A frog jumps.\n",
     "Words: jump, frog, green\nSummary: A frog jumps.\nStory:",
     "A green frog liked to jump.\n\nIt jumped all day."),
]
# Bad records: (text, the line of the problem counted from the record's first line, the problem)
BAD = [
    (b"He ran home and slept.\n", 0, "expected a field (Words, Features, Summary, Random sentence) or Story:, "
                                     "got 'He ran home and slept.'"),
    (b"Words: a, b\nWords: c\nStory: x\n", 1, "Words: given twice"),
    (b"Features:\nStory: x\n", 0, "Features: is empty"),
    (b"Words: a\nSummary: s\n", 0, "no Story: line"),
    (b"Words: a\nStory: \n\n", 1, "Story: with no story after it"),
    (b"Words: a\nStory: x\nStory: y\n", 2, "a second Story:"),
    (b"Words: a\nStory: x\nSummary: s\nmore of the story\n", 3, "story text after the field on line"),
    (b"Words: caf\xe9\nStory: x\n", 0, "invalid UTF-8 at byte 10 of the line"),
]
CUT = b"Words: a, b\nStory: \n\nA story cut off in the midd"  # no separator after it: the file was cut


def write_records(path, items):
    """Write records (str or bytes, each followed by a separator line, except a last `CUT`); return
    the number of each one's first line."""
    raw, lines = b"", []
    for text in items:
        lines.append(raw.count(b"\n") + 1)
        raw += (text.encode() if isinstance(text, str) else text) + (b"" if text is CUT else f"{SEP}\n".encode())
    path.write_bytes(raw)
    return lines


def records_file(path):
    """A file with every GOOD and BAD record (bad ones between good ones) and CUT last; returns the
    expected "path:line: problem" of each bad one, in file order."""
    items = [GOOD[0][0], *(b for b, _, _ in BAD[:4]), GOOD[1][0], *(b for b, _, _ in BAD[4:]), GOOD[2][0], CUT]
    starts = dict(zip(map(id, items), write_records(path, items)))
    return [f"{path}:{starts[id(b)] + k}: {problem}" for b, k, problem in BAD] + \
        [f"{path}:{starts[id(CUT)]}: no {SEP} after it (a record cut off at the end of the file)"]


# ---------------------------------------------------------------------------- the record format

def test_records_parse_and_every_bad_one_is_named_by_line(tmp_path):
    want_bad = records_file(tmp_path / "r.txt")
    records = list(instruct.iter_records(tmp_path / "r.txt"))
    good = [(instruct.prompt_of(r.fields), r.story) for r in records if not r.problem]
    assert good == [(p, s) for _, p, s in GOOD]
    bad = [f"{tmp_path / 'r.txt'}:{r.line}: {r.problem}" for r in records if r.problem]
    assert len(bad) == len(BAD) + 1
    for got, want in zip(bad, want_bad):
        assert got.startswith(want), (got, want)
    # a record's first line, for good ones
    assert [r.line for r in records if not r.problem][0] == 1


def test_record_and_prompt_text_are_the_published_layout():
    fields = {"Summary": "Lily finds a lost cat and brings it home.", "Words": "find, cat, warm",
              "Features": "Dialogue"}
    assert instruct.record_text(fields, GOOD[0][2]) == GOOD[0][0] + SEP + "\n"
    assert instruct.prompt_text(words="dog, run, happy", features=["Dialogue", "BadEnding"]) == \
        "Words: dog, run, happy\nFeatures: Dialogue, BadEnding\nStory:"
    assert instruct.prompt_text(summary="A dog.", words=["dog"], sentence="It ran.") == \
        "Words: dog\nSummary: A dog.\nRandom sentence: It ran.\nStory:"
    assert instruct.prompt_text() == "Story:"
    for bad, words in (({"Title": "x"}, "'Title' is not a field"), ({"Words": "a\nb"}, "one line"),
                       ({"Words": ""}, "not empty")):
        with pytest.raises(ValueError, match=words):
            instruct.prompt_of(bad)


# ---------------------------------------------------------------------------- shards

@pytest.fixture(scope="module")
def sp(shared):
    import sentencepiece
    return sentencepiece.SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))


def pretokenize(shared, data, *inputs, dataset="instruct"):
    """tinystories.py pretokenize with tok512.model (its shards in data/tok512[-instruct]/)."""
    assert ts.main(["pretokenize", f"--dataset={dataset}", "--tokenizer", str(shared / "models" / "tok512.model"),
                    "--input", *map(str, inputs), "--data_dir", str(data), "--workers=1"]) == 0
    return data / ("tok512-instruct" if dataset == "instruct" else "tok512")


def read_shard(path):
    """(version, header words, tokens, mask bits) of a shard, read by the documented byte layout."""
    raw = Path(path).read_bytes()
    version, n = struct.unpack_from("<I", raw, 8)[0], struct.unpack_from("<Q", raw, 24)[0]
    tokens = np.frombuffer(raw, "<u2", n, 256).astype(np.int64)
    if version == 1:
        assert len(raw) == 256 + 2 * n and not any(raw[112:256])
        return version, {}, tokens, None
    n_targets, longest = struct.unpack_from("<QI", raw, 112)
    packed = np.frombuffer(raw, np.uint8, offset=256 + 2 * n)
    assert len(packed) == (n + 7) // 8 and not any(raw[124:256])
    bits = np.unpackbits(packed)
    assert not bits[n:].any()  # nothing past the last token
    return version, {"n_targets": n_targets, "longest": longest, "n_stories": struct.unpack_from("<Q", raw, 32)[0],
                     "n_bytes": struct.unpack_from("<Q", raw, 40)[0]}, tokens, bits[:n]


def test_pretokenize_masks_exactly_the_stories_and_eos(shared, sp, tmp_path, capsys):
    want_bad = records_file(tmp_path / "x-train.txt")
    write_records(tmp_path / "x-valid.txt", [GOOD[1][0]])
    out = pretokenize(shared, tmp_path, tmp_path / "x-train.txt", tmp_path / "x-valid.txt")
    for split, good in (("train", GOOD), ("val", GOOD[1:2])):
        want_tokens, want_mask = [], []
        for _, prompt, story in good:
            p, both = sp.encode(prompt), sp.encode(f"{prompt} {story}")
            assert both[:len(p)] == p  # the prompt's tokens are its own; the story's follow them
            s = both[len(p):]
            want_tokens += [1, *p, *s, 2]
            want_mask += [0] * (1 + len(p)) + [1] * (len(s) + 1)
        version, h, tokens, mask = read_shard(out / f"{split}_0000.bin")
        assert version == 2 and tokens.tolist() == want_tokens and mask.tolist() == want_mask
        assert h["n_targets"] == sum(want_mask) and h["n_stories"] == len(good)
        assert h["longest"] == max(1 + len(sp.encode(p)) for _, p, _ in good)
        assert h["n_bytes"] == sum(len(s.encode()) for _, _, s in good)
        assert dl.read_header(out / f"{split}_0000.bin")["masked"]
    bad = (out / "bad_records.txt").read_text().splitlines()
    assert len(bad) == len(want_bad) and all(b.startswith(w) for b, w in zip(bad, want_bad))
    assert json.loads((out / "manifest.json").read_text())["bad_records"] == len(BAD) + 1
    err = capsys.readouterr().err
    assert f"note: {len(BAD) + 1} bad records left out, each named in {out / 'bad_records.txt'}" in err
    # the same command again: nothing to do
    pretokenize(shared, tmp_path, tmp_path / "x-train.txt", tmp_path / "x-valid.txt")
    assert "nothing to do" in capsys.readouterr().out


def test_a_byte_level_tokenizer_starts_the_story_with_its_space(shared, tmp_path):
    """GPT-2's shape (no dummy prefix): the story's first token carries the space after "Story:", as in the
    tokens `tokenizers` gives the whole record's text, and the prompt's tokens are its own."""
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a test-only dependency")
    from test_hf_tokenizer import trained
    path = tmp_path / "bytes" / "tokenizer.json"
    path.parent.mkdir()
    trained(shared, "gpt2").save(str(path))
    ref = tokenizers.Tokenizer.from_file(str(path))
    write_records(tmp_path / "r-valid.txt", [g for g, _, _ in GOOD])
    assert ts.main(["pretokenize", "--dataset=instruct", "--tokenizer", str(path), "--input",
                    str(tmp_path / "r-valid.txt"), "--data_dir", str(tmp_path), "--workers=1"]) == 0
    _, _, tokens, mask = read_shard(tmp_path / "bytes-instruct" / "val_0000.bin")
    end = ref.token_to_id("<|endoftext|>")  # GPT-2's BOS and EOS
    want_tokens, want_mask = [], []
    for _, prompt, story in GOOD:
        p, both = ref.encode(prompt).ids, ref.encode(f"{prompt} {story}").ids
        assert both[:len(p)] == p and ref.decode(both[len(p):]) == f" {story}"
        want_tokens += [end, *both, end]
        want_mask += [0] * (1 + len(p)) + [1] * (len(both) - len(p) + 1)
    assert tokens.tolist() == want_tokens and mask.tolist() == want_mask


def test_train_vocab_learns_from_the_good_records(tmp_path, capsys):
    records_file(tmp_path / "r.txt")
    assert ts.main(["train_vocab", "--vocab_size=300", "--dataset=instruct", "--input", str(tmp_path / "r.txt"),
                    "--data_dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "on 3 records" in out.out and f"note: {len(BAD) + 1} bad records left out of the sample" in out.err
    import sentencepiece
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "tok300.model"))
    assert sp.decode(sp.encode(GOOD[0][1])) == GOOD[0][1]


def test_story_shards_stay_version_1_and_a_version_1_reader_refuses_version_2(shared, sp, tmp_path, monkeypatch):
    (tmp_path / "s-train.txt").write_text("".join(f"{s}\n{SEP}\n" for _, _, s in GOOD))
    (tmp_path / "s-valid.txt").write_text(f"{GOOD[0][2]}\n{SEP}\n")
    out = pretokenize(shared, tmp_path, tmp_path / "s-train.txt", tmp_path / "s-valid.txt", dataset="v1")
    version, _, tokens, mask = read_shard(out / "train_0000.bin")
    assert version == 1 and mask is None
    assert tokens.tolist() == [t for _, _, s in GOOD for t in [1, *sp.encode(s), 2]]
    write_records(tmp_path / "r-valid.txt", [GOOD[0][0]])
    v2 = pretokenize(shared, tmp_path, tmp_path / "r-valid.txt") / "val_0000.bin"
    raw = v2.read_bytes()
    # a reader of version 1 sees its own header layout up to the version, which it refuses
    assert struct.unpack_from(dl.HEADER_FMT, raw)[:2] == (dl.MAGIC, 2)
    monkeypatch.setattr(dl, "MASKED", dl.VERSION)  # this code, reading version 1 alone
    with pytest.raises(dl.DataError, match="val_0000.bin: shard format version 2, this code reads versions 1"):
        dl.read_header(v2)


@pytest.fixture(scope="module")
def instruct_data(shared, tmp_path_factory):
    """Instruct shards from records made of 400 shared stories; (data dir, shards of train)."""
    d = tmp_path_factory.mktemp("instruct")
    stories = list(ts.iter_stories(shared / "tinystories" / "tinystories-3000-stories.json"))[:400]
    write_records(d / "r-train.txt", [instruct.record_text(*instruct.record_from_story(s)) for s in stories[:360]])
    write_records(d / "r-valid.txt", [instruct.record_text(*instruct.record_from_story(s)) for s in stories[360:]])
    pretokenize(shared, d, d / "r-train.txt", d / "r-valid.txt")
    return d, dl.split_shards("train", 512, "tok512", d, dataset="instruct")


def test_batches_ignore_exactly_the_masked_targets(instruct_data):
    _, shards = instruct_data
    (path, header), = shards
    _, _, tokens, mask = read_shard(path)
    for bos_aligned in (False, True):
        a, b = (dl.Batches(shards, 8, 256, seed=7, bos_aligned=bos_aligned) for _ in range(2))
        ignored = 0
        for g in (0, 1, 5, 40):
            x, y = a[g]
            _, start = a.windows(g)
            rows = start[:, None] + np.arange(257)
            assert x.tolist() == tokens[rows[:, :-1]].tolist()
            assert y.tolist() == np.where(mask[rows[:, 1:]] == 1, tokens[rows[:, 1:]], -1).tolist()
            x2, y2 = b[g]  # a batch is a pure function of (seed, g): the same after a resume
            assert torch.equal(x, x2) and torch.equal(y, y2)
            ignored += int((y == -1).sum())
        assert ignored > 0
    with pytest.raises(dl.DataError, match=f"max_seq_len={header['longest_prompt']}: .* BOS and prompt are "
                                           f"{header['longest_prompt']} tokens; windows must be longer"):
        dl.Batches(shards, 8, header["longest_prompt"], seed=7)
    assert dl.bytes_per_token(shards) == header["n_bytes"] / header["n_targets"]


def test_training_loss_ignores_the_prompts(instruct_data):
    _, shards = instruct_data
    (path, _), = shards
    _, _, tokens, mask = read_shard(path)
    batches = dl.Batches(shards, 2, 256, seed=3, bos_aligned=True)
    model = tiny(vocab_size=512, max_seq_len=256, n_layers=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for g in range(12):
        x, y = batches[g]
        _, loss = model(x, y)
        # the same loss by hand: cross-entropy over the tokens whose mask bit is 1, and no others
        _, start = batches.windows(g)
        rows = start[:, None] + np.arange(1, 257)
        keep = torch.from_numpy(mask[rows] == 1)
        with torch.no_grad():
            ce = torch.nn.functional.cross_entropy(model(x)[0].transpose(1, 2), torch.from_numpy(tokens[rows]),
                                                   reduction="none")
        torch.testing.assert_close(loss.detach(), ce[keep].mean(), rtol=1e-5, atol=1e-5)
        assert not torch.isclose(ce.mean(), ce[keep].mean())  # the prompts would have counted otherwise
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5  # it trains


# ---------------------------------------------------------------------------- prompting

def run_c(*args, ok=True):
    r = subprocess.run([str(build("run")), *map(str, args)], capture_output=True, timeout=60)
    assert (r.returncode == 0) == ok, r.stderr
    return r


def sample(*args, ok=True):
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), "--device=cpu", *args], capture_output=True,
                       text=True, timeout=120)
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


@pytest.mark.slow  # a process of its own
def test_sample_and_run_give_the_same_instruct_story(shared, sp):
    model = shared / "models" / "stories260K.bin"  # tok512.bin is beside it
    words, features = "dog, run, happy", "Dialogue, BadEnding"
    prompt = [1, *sp.encode(f"Words: {words}\nFeatures: {features}\nStory:")]
    new = 60
    c = run_c(model, "-t", 0, "-w", words, "-f", features, "-n", len(prompt) - 1 + new).stdout
    p = sample(f"--checkpoint={model}", "--temperature=0", f"--words={words}", f"--features={features}",
               f"--max_new_tokens={new}").stdout
    assert c.decode() == p
    head = f"Words: {words}\nFeatures: {features}\nStory:"
    assert p.startswith(head + " ") and len(p) > len(head) + new  # 60 tokens of story, at least a byte each
    # the summary flag too, alone
    c = run_c(model, "-t", 0, "-a", "A dog runs.", "-n", 40).stdout.decode()
    assert c.startswith("Summary: A dog runs.\nStory:")


def successor_model(succ, vocab=512):
    """A model whose greedy next token is succ(token) whatever came before: one-hot embeddings, the
    blocks' outputs zero (attention and feed-forward add nothing), the classifier a successor table."""
    args = ModelArgs(dim=vocab, n_layers=1, n_heads=8, vocab_size=vocab, max_seq_len=128, hidden_dim=32,
                     tie_embeddings=False)
    m = Transformer(args)
    with torch.no_grad():
        m.tok_embeddings.weight.copy_(torch.eye(vocab))
        m.layers[0].attention.wo.weight.zero_()
        m.layers[0].feed_forward.w2.weight.zero_()
        out = torch.zeros(vocab, vocab)
        out[[succ(t) for t in range(vocab)], range(vocab)] = 1.0
        m.output.weight.copy_(out)
    return m.eval()


@pytest.mark.slow  # a process of its own
def test_generation_stops_at_the_end_of_the_story(shared, sp, tmp_path):
    once, upon, the = (sp.piece_to_id(p) for p in ("▁Once", "▁upon", "▁the"))
    colon = sp.encode("Story:")[-1]
    # after "Story:", "Once upon", then EOS; after EOS "the" (printed only by a reader that runs past EOS)
    chain = {colon: once, once: upon, upon: 2, 2: the}
    model_export(successor_model(lambda t: chain.get(t, 2)), tmp_path / "m.bin", version=1)
    (tmp_path / "tok512.bin").write_bytes((shared / "models" / "tok512.bin").read_bytes())
    want = "Words: dog\nStory: Once upon\n"
    assert run_c(tmp_path / "m.bin", "-t", 0, "-w", "dog", "-n", 0).stdout.decode() == want
    assert sample(f"--checkpoint={tmp_path / 'm.bin'}", "--temperature=0", "--words=dog").stdout == want


def test_prompt_flag_errors(shared):
    model = shared / "models" / "stories260K.bin"
    for args, words in ((["-w", "a", "-i", "b"], "-i and -w/-f/-a: give a prompt or the fields"),
                        (["-f", "a\nb"], "-f: 'a\\nb': a field is one line of text"),
                        (["-w", "a", "-m", "logits", "-o", "/dev/null"], "-m logits reads token ids from -i")):
        err = run_c(model, *args, ok=False).stderr.decode()
        assert err.count("\n") == 1 and words in err, err


@pytest.mark.slow  # a process of its own
def test_sample_prompt_flag_errors(shared):
    model = shared / "models" / "stories260K.bin"
    for args, words in ((["--words=a", "--start=b"], "--start and --words/--features/--summary"),
                        (["--summary=a\nb"], "a field is one line of text")):
        r = sample(f"--checkpoint={model}", *args, ok=False)
        assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


# ---------------------------------------------------------------------------- the measure

def test_words_used_and_dialogue_rules():
    story = "The DOGS were running happily. Mom baked a cake and tried it. The big bear got bigger. Boxes!"
    assert instruct.words_used(story, ["dog", "run", "happy", "bake", "try", "big", "bear", "box", "cat", "ran",
                                       "ake"]) == [True] * 8 + [False] * 3
    # an inflected request is met by another form of its word
    assert instruct.words_used("She jumps and runs.", ["jumped", "running", "jumping"]) == [True, True, True]
    assert instruct.words_used("It was warm. Many men.", ["war", "man"]) == [False, False]  # whole words only
    assert instruct.words_used("An X-ray of a cat.", ["x-ray", "ray", "x"]) == [True, True, True]
    assert instruct.words_used("He went home.", ["go"]) == [False]  # irregular forms do not count
    assert instruct.has_dialogue('Tom said, "Hi!"') and instruct.has_dialogue("\u201cHello,\u201d she said.")
    assert not instruct.has_dialogue("Tom's dog can't run. 'Hi,' he said.")
    assert not instruct.has_dialogue('He said "\nhi" to her')  # quotes on two lines are not one quote


def test_records_from_stories_follow_the_published_format(shared):
    stories = list(ts.iter_stories(shared / "tinystories" / "tinystories-3000-stories.json"))
    records = [instruct.record_from_story(s) for s in stories]
    assert sum(r is None for r in records) < 10
    for story, (fields, text) in ((s, r) for s, r in zip(stories, records) if r):
        assert text == story and list(fields) == [f for f in instruct.FIELDS if f in fields]
        words = instruct.split_list(fields["Words"])
        assert len(words) == 3 and all(w.isalpha() and w.islower() and w not in instruct.STOPWORDS for w in words)
        assert all(instruct.words_used(story, words))
        assert ("Features" in fields) == instruct.has_dialogue(story)
        assert fields.get("Features", "Dialogue") == "Dialogue"
        assert fields.get("Random sentence", story) in story and "Summary" not in fields
    assert 0.3 < sum("Random sentence" in r[0] for r in records if r) / len(stories) < 0.7
    assert records[:50] == [instruct.record_from_story(s) for s in stories[:50]]  # seeded by the story
    assert records[:50] != [instruct.record_from_story(s, seed=1) for s in stories[:50]]


def test_measure_counts(shared):
    stories = list(ts.iter_stories(shared / "tinystories" / "tinystories-3000-stories.json"))[:60]
    records = [instruct.record_from_story(s) for s in stories]
    asked = sum("Features" in f for f, _ in records)
    by_prompt = {instruct.prompt_text(words=f["Words"], features=f.get("Features")): s for f, s in records}
    n = instruct.measure(records, lambda prompts: [(by_prompt[p], True) for p in prompts])
    assert n == {"records": 60, "words": 180, "words_used": 180, "asked_dialogue": asked, "dialogue_when_asked": asked,
                 "not_asked": 60 - asked, "dialogue_when_not_asked": 0, "ended": 60}
    n = instruct.measure(records, lambda prompts: [('"Hi," "Yo."', False)] * len(prompts))
    assert n["words_used"] == 0 and n["dialogue_when_not_asked"] == 60 - asked and n["ended"] == 0


def test_dense_records_ask_for_more_of_the_story(shared):
    stories = list(ts.iter_stories(shared / "tinystories" / "tinystories-3000-stories.json"))[:300]
    counts = []
    for story in stories:
        fields, text = instruct.record_from_story(story, seed=5, most=30)
        words = instruct.split_list(fields["Words"])
        every = [w for w in dict.fromkeys(re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", story))  # the words it may ask for
                 if w.isalpha() and w.islower() and len(w) >= 3 and w not in instruct.STOPWORDS]
        counts.append((len(words), len(every)))
        assert text == story.strip() and "Random sentence" not in fields and 3 <= len(words) <= 30
        assert set(words) <= set(every) and len(set(words)) == len(words)
        assert words == sorted(words, key=every.index)  # in story order
        assert all(instruct.words_used(story, words))
        assert ("Features" in fields) == instruct.has_dialogue(story)
    # k is drawn over the whole range: 3 words, the most allowed, and every word of a short story
    assert {3, 30} <= {k for k, _ in counts} and any(k == n < 30 for k, n in counts)
    assert any(n > 30 for _, n in counts) and 10 < sum(k for k, _ in counts) / len(counts) < 20
    # most=3 is the published format, the records of old
    assert all(instruct.record_from_story(s, 1, most=3) == instruct.record_from_story(s, 1) for s in stories)


def test_bench_make_adds_dense_records_to_training_only(shared, tmp_path, capsys):
    src = tmp_path / "stories.txt"
    stories = list(ts.iter_stories(shared / "tinystories" / "tinystories-3000-stories.json"))[:120]
    src.write_text("".join(f"{s}\n{SEP}\n" for s in stories))
    args = ["make", "--input", str(src), "--seed", "3"]
    assert bench_instruct.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert bench_instruct.main([*args, "--out", str(tmp_path / "b"), "--copies", "2", "--dense", "3",
                                "--dense_words", "8"]) == 0
    a, b = ([r for r in instruct.iter_records(tmp_path / d / "TinyStories-Instruct-train.txt")] for d in "ab")
    valid = [(tmp_path / d / "TinyStories-Instruct-valid.txt").read_bytes() for d in "ab"]
    assert valid[0] == valid[1] and valid[0].count(SEP.encode()) == len(stories) - len(a)  # the same held-out
    assert len(b) == 5 * len(a) and not any(r.problem for r in b)
    for k, r in enumerate(b):
        words = instruct.split_list(r.fields["Words"])
        assert r.story == b[k - k % 5].story and all(instruct.words_used(r.story, words))
        assert len(words) == 3 if k % 5 < 2 else 3 <= len(words) <= 8 and "Random sentence" not in r.fields
    assert [r[:2] for r in b[::5]] == [r[:2] for r in a]  # the first copy is the one of a plain make
    capsys.readouterr()
    for bad in (["--copies", "0"], ["--dense", "-1"], ["--dense_words", "2"]):
        assert bench_instruct.main([*args, "--out", str(tmp_path / "c"), *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expected --copies >= 1, --dense >= 0 and --dense_words >= 3" in err
    assert not (tmp_path / "c").exists()


def test_chance_pairs_each_record_with_the_next_story():
    records = [({"Words": "dog, sun, hat"}, "s0"), ({"Words": "cup, bed, red"}, "s1"),
               ({"Words": "cat, box, hop"}, "s2")]
    # record 0's words in story 1: dog, hat; record 1's in story 2: cup; record 2's in story 0: cat, box, hop
    stories = [("A cat hopped in a box in the sun.", True), ("The dog wore a hat.", True), ("Cups.", False)]
    assert bench_instruct.chance_words(records, stories) == 6
    assert instruct.measure(records, lambda prompts: stories)["words_used"] == 1  # each its own: sun


def test_bench_measure_writes_what_it_counts(shared, sp, tmp_path, capsys):
    # every story is "Once upon", then EOS: greedy and sampled (a peaked model) alike
    once, upon = sp.piece_to_id("\u2581Once"), sp.piece_to_id("\u2581upon")
    chain = {sp.encode("Story:")[-1]: once, once: upon, upon: 2}
    model = successor_model(lambda t: chain.get(t, 2))
    with torch.no_grad():
        model.output.weight.mul_(50.0)
    model_export(model, tmp_path / "m.bin", version=1)
    (tmp_path / "tok512.bin").write_bytes((shared / "models" / "tok512.bin").read_bytes())  # see load_model
    records = tmp_path / "r.txt"
    write_records(records, ["Words: once, dog, upon\nFeatures: Dialogue\nStory: \n\nThe dog ran.\n",
                            "Words: sun, upon, cat\nStory: \n\nOnce the sun was up.\n",
                            "Words: run, hat, sky\nStory: \n\nA red hat.\n"])
    args = ["measure", "--model", str(tmp_path / "m.bin"), "--tokenizer", str(shared / "models" / "tok512.model"),
            "--records", str(records)]
    for how in ([], ["--temperature", "1.0", "--top_p", "0.9"]):
        assert bench_instruct.main([*args, *how, "--json", str(tmp_path / "n.json")]) == 0
        n = json.loads((tmp_path / "n.json").read_text())
        # words used: once, upon; upon; none. Chance: the same story for every record, so the same 3;
        # against the next held-out story: record 0's words in "Once the sun...": once; record 1's in
        # "A red hat.": none; record 2's in "The dog ran.": run? no (ran is irregular): none
        assert {k: n[k] for k in ("records", "words", "words_used", "asked_dialogue", "dialogue_when_asked",
                                  "ended", "chance_words_used", "chance_held_out_stories")} == \
            {"records": 3, "words": 9, "words_used": 3, "asked_dialogue": 1, "dialogue_when_asked": 0, "ended": 3,
             "chance_words_used": 3, "chance_held_out_stories": 1}
        assert n["temperature"] == float(how[1] if how else 0) and n["loss_own_prompt"] > 0
        assert "words used 3/9 (33.3%)" in capsys.readouterr().out
    # top-p is applied: a second story start 1 logit below the first (27% likely) is cut by top-p 0.5
    # (the logits are the output weights times sqrt(512): the final norm of a one-hot input)
    import tokenizer as T
    tok = T.Tokenizer(str(shared / "models" / "tok512.model"))
    with torch.no_grad():
        model.output.weight[sp.piece_to_id("\u2581the"), sp.encode("Story:")[-1]] = 50.0 - 512 ** -0.5
    for top_p, starts in ((0.5, {"Once upon"}), (1.0, {"Once upon", "the"})):
        stories = bench_instruct.generator(model, tok, 1.0, top_p, 0, 16)(["Words: dog\nStory:"] * 40)
        assert {s for s, _ in stories} == starts
    for bad in (["--top_p", "0"], ["--temperature", "-1"], ["--n", "1"]):
        assert bench_instruct.main([*args, *bad]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "expected --temperature >= 0, 0 < --top_p <= 1 and --n >= 2" in err


# ---------------------------------------------------------------------------- download

def test_download_from_a_local_source(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    train, valid = ts.DATASET_FILES["instruct"]
    write_records(src / train, [g for g, _, _ in GOOD] * 3)
    write_records(src / valid, [GOOD[0][0]])
    data = tmp_path / "data"
    assert ts.main(["download", "--dataset=instruct", "--source", str(src), "--data_dir", str(data)]) == 0
    assert (data / train).read_bytes() == (src / train).read_bytes() and (data / valid).is_file()
    assert ts.input_files(data, "instruct") == [data / train, data / valid]
    # a slice of the train file ends after its last whole record
    (data / train).unlink()
    assert ts.main(["download", "--dataset=instruct", "--max_mb=0.0003", "--source", str(src),
                    "--data_dir", str(data)]) == 0
    part = data / "TinyStories-Instruct-train.head-0.0003MiB.txt"
    whole = (src / train).read_bytes()
    assert part.read_bytes() == whole[:whole[:int(0.0003 * 2**20)].rindex(SEP.encode()) + len(SEP)]
    assert ts.input_files(data, "instruct") == [part, data / valid]


# ---------------------------------------------------------------------------- train.py

@pytest.mark.slow  # training runs
def test_train_py_on_instruct_shards(instruct_data, shared, tmp_path):
    data, _ = instruct_data
    (data / "tok512.model").write_bytes((shared / "models" / "tok512.model").read_bytes())
    args = [sys.executable, str(REPO / "train.py"), f"--data_dir={data}", "--vocab_size=512", "--dim=32",
            "--n_layers=1", "--n_heads=4", "--max_seq_len=256", "--batch_size=4", "--max_iters=4",
            "--eval_interval=4", "--eval_iters=2", "--device=cpu", "--compile=False", f"--out_dir={tmp_path / 'out'}"]
    r = subprocess.run([*args, "--dataset=instruct"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "iter 4: train loss" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run([*args, "--dataset=poems"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "dataset='poems': expected 'stories' or 'instruct'" in r.stderr

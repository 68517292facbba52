"""Training with any tokenizer file (docs/tokenizers.md, "Training with another tokenizer"). Two BPE
tokenizers trained here by the `tokenizers` library: GPT-2's shape (byte-level, a bare tokenizer.json
whose one special token is <|endoftext|>) and Llama's (byte fallback, with its tokenizer_config.json).
Every shared TinyStories story gets that library's ids from every file our reader takes (the
tokenizer.json, the GGUF and run.c files made from it, run.c itself), special tokens inside the text too;
pretokenize frames them with the BOS/EOS transformers gives; a model trained on them runs in run.c as in
sample.py, and its Hugging Face export loads in transformers with the same ids. Also: GPT-2's class
defaults, download_tokenizer from a local folder, and vocabularies too big for uint16 shards."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import dataloader as dl
import gguf_meta as GM
import hf_tokenizer
import tinystories as ts
import tokenizer as T
import vocab as V
from binfile import model_export
from conftest import REPO
from model import ModelArgs, Transformer
from test_hf_tokenizer import trained

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a test-only dependency")
transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
SPECIAL = {"gpt2": "<|endoftext|>", "fallback": "</s>"}  # a special token each, put inside texts
LLAMA_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@pytest.fixture(scope="module")
def hf(shared, tmp_path_factory):
    """{"gpt2": a bare GPT-2-style tokenizer.json, "fallback": a Llama-style one with its tokenizer_config.json}."""
    d = tmp_path_factory.mktemp("any_tok")
    out = {}
    for name, flavour in (("gpt2", "gpt2"), ("fallback", "metaspace_first")):
        (d / name).mkdir()
        out[name] = d / name / "tokenizer.json"
        trained(shared, flavour).save(str(out[name]))
    (d / "fallback" / "tokenizer_config.json").write_text(json.dumps(LLAMA_CONFIG))
    return out


@pytest.fixture(scope="module")
def stories(shared):
    """Every story of every shared TinyStories file, as pretokenize reads them."""
    return [s for f in sorted((shared / "tinystories").iterdir()) for s in ts.iter_stories(f)]


def auto_tokenizer(path, tmp_path, **config):
    """transformers' tokenizer of a tokenizer.json: its folder as it is, or a copy with config.json (GPT-2's and
    GPT-Neo's published folders name the model type there, which picks transformers' tokenizer class)."""
    if config:
        d = tmp_path / f"hf_{len(list(tmp_path.glob('hf_*')))}"
        d.mkdir()
        shutil.copy(path, d / "tokenizer.json")
        (d / "config.json").write_text(json.dumps(config))
        path = d / "tokenizer.json"
    return transformers.AutoTokenizer.from_pretrained(path.parent)


def gpt2_files(folder, n_tokens):
    """GPT-2's two older files, vocab.json and merges.txt, of a GPT-2-shaped vocabulary made without training
    (the 256 bytes, n_tokens - 257 merges of two bytes into one token, then <|endoftext|>: GPT-2's own is
    256 + 50,000 + 1), and the tokenizer.json hf_tokenizer makes of them, whose path this returns."""
    a = V.byte_alphabet()
    pairs = [x + " " + y for x in a for y in a][:n_tokens - 257]
    vocab = {**{c: i for i, c in enumerate(a)}, **{p.replace(" ", ""): 256 + k for k, p in enumerate(pairs)},
             "<|endoftext|>": n_tokens - 1}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(pairs) + "\n")
    made = hf_tokenizer.gpt2_tokenizer_json(folder / "vocab.json", folder / "merges.txt")
    (folder / "tokenizer.json").write_text(json.dumps(made))
    return folder / "tokenizer.json"


def one_line_error(capsys, *words):
    """The one line of error a command wrote (besides its progress bar), holding every one of words."""
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    return lines[0]


# ---------------------------------------------------------------------------- reading GPT-2's files

def test_bare_gpt2_tokenizer_reads_as_transformers_gpt2_class(hf, tmp_path):
    """BOS and EOS of a bare byte-level tokenizer.json are <|endoftext|>, as transformers' GPT-2 class has them
    (which GPT-2's and GPT-Neo's published folders pick); no BOS in front of a prompt, as there."""
    path = hf["gpt2"]
    tok, end = T.Tokenizer(path), tokenizers.Tokenizer.from_file(str(path)).token_to_id("<|endoftext|>")
    for model_type in ("gpt2", "gpt_neo"):
        ref = auto_tokenizer(path, tmp_path, model_type=model_type)
        assert (tok.bos_id, tok.eos_id) == (ref.bos_token_id, ref.eos_token_id) == (end, end)
        assert tok.prompt("Once upon a time") == ref("Once upon a time").input_ids
    assert tok.prompt("") == [end] and tok.stops() == (end,) and not tok.add_bos
    assert tok.decode(tok.prompt("") + tok.encode("Once upon a time", False, True)) == "Once upon a time"
    # GPT-Neo's folder names <|endoftext|> as unk, BOS and EOS (class GPT2Tokenizer): the same vocabulary
    neo = tmp_path / "neo"
    neo.mkdir()
    shutil.copy(path, neo / "tokenizer.json")
    (neo / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}))
    assert T.Tokenizer(neo).identity == tok.identity and T.Tokenizer(neo).vocab.types[end] == V.CONTROL
    # another class, which has no such defaults: no BOS, as in transformers
    (neo / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert T.Tokenizer(neo).bos_id == -1 and auto_tokenizer(neo / "tokenizer.json", tmp_path).bos_token is None
    # our Hugging Face export names them: the same vocabulary when read back
    hf_tokenizer.write_tokenizer(tok.vocab, neo, 256)
    assert T.Tokenizer(neo).identity == tok.identity


def test_a_few_stories_quick(hf, shared, monkeypatch):
    """The quick tier's parity check: the first stories of one file (every story, every file: the slow test),
    also with a word cache that fills and starts over many times (it holds at most CACHED_WORDS words)."""
    texts = list(ts.iter_stories(shared / "tinystories" / "TinyStoriesV2-GPT4-train.head-10k-lines.txt"))[:80]
    want = {}
    for name, path in hf.items():
        ref = tokenizers.Tokenizer.from_file(str(path))
        texts2 = texts + [a + SPECIAL[name] + b for a, b in zip(texts[::2], texts[1::2])]
        want[name] = [e.ids for e in ref.encode_batch(texts2, add_special_tokens=False)]
        tok = T.Tokenizer(path)
        assert [tok.encode(t, False, False) for t in texts2] == want[name], name
    monkeypatch.setattr(V, "CACHED_WORDS", 50)
    tok = T.Tokenizer(hf["gpt2"])
    assert [tok.encode(t, False, False) for t in texts] == want["gpt2"][:len(texts)]
    assert 0 < len(V._tables(tok.vocab)[-1]) <= 50


@pytest.mark.slow  # ~7,500 texts through our encoder and run.c, twice
@pytest.mark.ci  # a sweep: test_a_few_stories_quick checks the same on a few
@pytest.mark.parametrize("name", ["gpt2", "fallback"])
def test_every_story_every_file_gives_the_tokenizers_ids(hf, stories, run_bin, tmp_path, name):
    ref, tok = tokenizers.Tokenizer.from_file(str(hf[name])), T.Tokenizer(hf[name])
    kvs, notes = GM.tokenizer_kvs(tok.vocab)
    (tmp_path / "tok.gguf").write_bytes(GM.header(kvs, []))  # a GGUF holding only the vocabulary
    others = {"run.c file": T.Tokenizer(tok.export(tmp_path / "tok.bin")), "GGUF": T.Tokenizer(tmp_path / "tok.gguf")}
    # Llama's shape in a GGUF merges by score, as llama.cpp does (tokenizer_kvs says so): the same vocabulary,
    # other ids on some texts. GPT-2's shape is exact.
    assert bool(notes) == (name == "fallback")
    pairs = list(zip(stories[::2], stories[1::2]))[:500]
    texts = stories + [a + SPECIAL[name] + b for a, b in pairs]
    want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    got = [tok.encode(s, False, False) for s in texts]
    bad = [s[:60] for s, a, b in zip(texts, got, want) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[:3]}"
    assert [tok.decode(ids) for ids in want] == stories + [a + b for a, b in pairs]  # special tokens drop out
    # the other files hold the very same vocabulary (so our encoder gives the same ids from them), and do
    for what, t in others.items():
        assert t.identity == tok.identity, what
        if not (what == "GGUF" and notes):
            assert t.vocab == tok.vocab, what
            assert [t.encode(s, False, False) for s in texts[-300:]] == want[-300:], what
    # run.c: the stories joined by the special token, in pieces that fit one command-line argument
    model = tmp_path / "m.bin"
    model_export(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=tok.n_words, max_seq_len=32)),
                 model, vocab_id=tok.identity)
    chunks, size = [[]], 0
    for s in stories:
        size += len(s.encode()) + len(SPECIAL[name])
        if size > 100_000:
            chunks.append([])
            size = len(s.encode())
        chunks[-1].append(s)
    chunks = [SPECIAL[name].join(c) for c in chunks]
    for text, ids in zip(chunks, ref.encode_batch(chunks, add_special_tokens=False)):
        r = subprocess.run([str(run_bin), str(model), "-z", str(tmp_path / "tok.bin"), "-m", "tokenize", "-i", text],
                           capture_output=True, timeout=60)
        assert r.returncode == 0 and [int(x) for x in r.stdout.split()] == ids.ids, r.stderr[-300:]


# ---------------------------------------------------------------------------- pretokenize

def reference_shard(files, path, tmp_path, **config):
    """{"train", "val": the tokens pretokenize should write}: the `tokenizers` ids of each story framed by
    transformers' BOS and EOS."""
    ref, hf_tok = tokenizers.Tokenizer.from_file(str(path)), auto_tokenizer(path, tmp_path, **config)
    assert hf_tok.bos_token_id is not None and hf_tok.eos_token_id is not None
    out = {"train": [], "val": []}
    for story, is_val in ts.iter_split(files):
        ids = ref.encode(story, add_special_tokens=False).ids
        out["val" if is_val else "train"] += [hf_tok.bos_token_id, *ids, hf_tok.eos_token_id]
    return out


def test_pretokenize_frames_the_reference_ids_quick(hf, shared, tmp_path, capsys):
    """A bare GPT-2-style tokenizer.json pretokenizes (--tokenizer=PATH): <|endoftext|> story <|endoftext|>."""
    files = [shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"]
    assert ts.main(["pretokenize", f"--tokenizer={hf['gpt2']}", f"--data_dir={tmp_path}", "--input", str(files[0]),
                    "--workers=1"]) == 0
    shards = dl.split_shards("train", T.Tokenizer(hf["gpt2"]).n_words, "gpt2", tmp_path, tokenizer=hf["gpt2"])
    assert dl.load_shard(shards[0][0]).tolist() == reference_shard(files, hf["gpt2"], tmp_path, model_type="gpt2")["train"]
    # the tokenizer is kept where a run on these shards looks for the vocabulary's (as run.c's file: a
    # tokenizer.json may need configs beside it), so that its checkpoints carry it
    kept = dl.tokenizer_path(T.Tokenizer(hf["gpt2"]).n_words, "gpt2", tmp_path)
    assert kept == tmp_path / "gpt2.bin" and T.Tokenizer(kept).identity == T.Tokenizer(hf["gpt2"]).identity


@pytest.mark.slow  # every story of two files, with worker processes, twice
@pytest.mark.parametrize("name", ["gpt2", "fallback"])
def test_pretokenize_shards_are_the_reference_ids(hf, shared, tmp_path, name):
    files = [shared / "tinystories" / f for f in ("TinyStories-train.head-2MiB.txt", "tinystories-3000-stories.json")]
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(hf[name], data / f"{name}.json")  # vocab_source=NAME finds data/NAME.json
    if name == "fallback":
        shutil.copy(hf[name].parent / "tokenizer_config.json", data)
    assert ts.main(["pretokenize", f"--vocab_source={name}", f"--data_dir={data}", "--input", *map(str, files),
                    "--workers=2"]) == 0
    want = reference_shard(files, hf[name], tmp_path, **({"model_type": "gpt2"} if name == "gpt2" else {}))
    n = T.Tokenizer(data / f"{name}.json").n_words
    for split in ("train", "val"):
        got = np.concatenate([dl.load_shard(p) for p, _ in dl.split_shards(split, n, name, data)])
        assert got.tolist() == want[split], split


def test_vocabulary_over_uint16_is_refused_in_one_line(shared, tmp_path, capsys):
    story = shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"
    data = tmp_path / "data"
    big = gpt2_files(tmp_path / "big", 65536)
    assert ts.main(["pretokenize", f"--tokenizer={big}", f"--data_dir={data}", "--input", str(story)]) == 1
    one_line_error(capsys, f"tokenizer {big} has 65,536 tokens", "uint16", "at most 65535")
    assert not data.exists()


@pytest.mark.slow  # a 65,535-token tokenizer.json read six times
def test_vocabulary_of_65535_fits(shared, tmp_path):
    """The last id, 65534, is <|endoftext|>, which frames every story."""
    story, data = shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt", tmp_path / "data"
    top = gpt2_files(tmp_path / "top", 65535)
    assert ts.main(["pretokenize", f"--tokenizer={top}", f"--data_dir={data}", "--input", str(story),
                    "--workers=1"]) == 0
    ref = tokenizers.Tokenizer.from_file(str(top))
    want = [t for s in ts.iter_stories(story) for t in (65534, *ref.encode(s, add_special_tokens=False).ids, 65534)]
    assert dl.load_shard(dl.split_shards("train", 65535, "top", data)[0][0]).tolist() == want


# ---------------------------------------------------------------------------- download_tokenizer

def test_gpt2_files_convert_as_transformers_reads_them(hf, shared, tmp_path):
    """vocab.json and merges.txt (how GPT-Neo publishes its vocabulary) made into a tokenizer.json: the ids of
    transformers' GPT-2 tokenizer on those files, in the tokenizers library and in ours."""
    d = tmp_path / "slow"
    d.mkdir()
    model = json.loads(hf["gpt2"].read_text())["model"]
    (d / "vocab.json").write_text(json.dumps(model["vocab"]))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in model["merges"]) + "\n")
    (d / "made.json").write_text(json.dumps(hf_tokenizer.gpt2_tokenizer_json(d / "vocab.json", d / "merges.txt")))
    ref = transformers.GPT2Tokenizer.from_pretrained(d)
    made, ours = tokenizers.Tokenizer.from_file(str(d / "made.json")), T.Tokenizer(d / "made.json")
    texts = list(ts.iter_stories(shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt")) + ["a<|endoftext|>b"]
    want = [ref(t).input_ids for t in texts]
    assert [made.encode(t).ids for t in texts] == want == [ours.encode(t, False, False) for t in texts]
    assert ours.identity == T.Tokenizer(hf["gpt2"]).identity
    (d / "merges.txt").write_text("#version: 0.2\nh e\nthree parts here\n")
    with pytest.raises(ValueError, match="merges.txt: line 3 is not a merge of two tokens"):
        hf_tokenizer.gpt2_tokenizer_json(d / "vocab.json", d / "merges.txt")


@pytest.mark.parametrize("tokens", [pytest.param(50257, marks=pytest.mark.slow), 600])
def test_download_tokenizer_from_a_local_folder_checks_the_file(hf, tmp_path, capsys, monkeypatch, tokens):
    """GPT-2's shape (50,257 tokens, 50,000 merges: slow), and in the quick tier the same checks of a smaller
    shape (the one the command asks for set to it)."""
    if tokens != ts.GPT2_SHAPE["tokens"]:
        monkeypatch.setattr(ts, "GPT2_SHAPE", {"tokens": tokens, "merges": tokens - 257, "end_id": tokens - 1})
    mirror, data = tmp_path / "mirror", tmp_path / "data"
    assert ts.main(["pretokenize", "--vocab_source=gpt2", f"--data_dir={data}"]) == 1  # says what gets it
    one_line_error(capsys, f"{data / 'gpt2.json'} not found: run `python tinystories.py download_tokenizer gpt2 "
                   f"--data_dir={data}` first")
    src = gpt2_files(mirror, tokens)
    assert ts.main(["download_tokenizer", "gpt2", f"--source={mirror}", f"--data_dir={data}"]) == 0
    assert (data / "gpt2.json").read_bytes() == src.read_bytes()
    assert dl.tokenizer_path(tokens, "gpt2", data) == data / "gpt2.json"  # where vocab_source=gpt2 looks
    assert "pretokenize --vocab_source=gpt2" in capsys.readouterr().out
    assert ts.main(["download_tokenizer", "gpt2", f"--source={src}", f"--data_dir={data}"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    # GPT-Neo's comes as vocab.json and merges.txt: the same vocabulary as a tokenizer.json
    assert ts.main(["download_tokenizer", "gptneo", f"--source={mirror}", f"--data_dir={data}"]) == 0
    assert T.Tokenizer(data / "gptneo.json").identity == T.Tokenizer(data / "gpt2.json").identity
    assert sorted(p.name for p in data.iterdir()) == ["gpt2.json", "gptneo.json"]
    # a tokenizer of another shape is deleted, and says what it holds
    (data / "gpt2.json").unlink()
    assert ts.main(["download_tokenizer", "gpt2", f"--source={hf['gpt2']}", f"--data_dir={data}"]) == 1
    one_line_error(capsys, "not GPT-2's tokenizer", "1,024 tokens", f"expected {tokens:,}", "deleted it")
    assert sorted(p.name for p in data.iterdir()) == ["gptneo.json"]
    # a file of another vocabulary already there is never overwritten
    shutil.copy(hf["gpt2"], data / "gpt2.json")
    assert ts.main(["download_tokenizer", "gpt2", f"--source={mirror}", f"--data_dir={data}"]) == 1
    one_line_error(capsys, f"{data / 'gpt2.json'} exists and is not GPT-2's tokenizer")
    assert (data / "gpt2.json").read_bytes() == hf["gpt2"].read_bytes()
    assert ts.main(["download_tokenizer", "gpt3", f"--data_dir={data}"]) == 1
    one_line_error(capsys, "gpt3: unknown; choose from gpt2, gptneo")


# ---------------------------------------------------------------------------- end to end

def run(*cmd, cwd=None):
    r = subprocess.run([*map(str, cmd)], cwd=cwd, capture_output=True, timeout=300)
    assert r.returncode == 0, (r.stdout[-2000:] + r.stderr[-2000:]).decode(errors="replace")
    return r


@pytest.mark.slow  # a training run, exports and generation in processes of their own
def test_train_export_and_run_with_a_gpt2_style_tokenizer(hf, shared, run_bin, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    shutil.copy(hf["gpt2"], data / "mygpt.json")
    tok = T.Tokenizer(data / "mygpt.json")
    assert ts.main(["pretokenize", "--vocab_source=mygpt", f"--data_dir={data}", "--input",
                    str(shared / "tinystories" / "TinyStories-train.head-2MiB.txt"), "--workers=2"]) == 0
    py = sys.executable
    run(py, REPO / "train.py", "--vocab_source=mygpt", f"--vocab_size={tok.n_words}", "--dim=32", "--n_layers=2",
        "--n_heads=4", "--max_seq_len=64", "--batch_size=8", "--max_iters=40", "--eval_interval=40", "--eval_iters=2",
        "--warmup_iters=2", "--log_interval=10", "--device=cpu", f"--data_dir={data}", f"--out_dir={out}")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    # a tokenizer.json is kept as its vocabulary in run.c's file (its configs would have to travel with it)
    assert ckpt["tokenizer"] == f"tok{tok.n_words}.bin" and ckpt["vocab_identity"] == tok.identity.hex()
    run(py, REPO / "export.py", out / "model.bin", f"--checkpoint={out / 'ckpt.pt'}", f"--to_hf={out / 'hf'}")
    assert T.Tokenizer(out / f"tok{tok.n_words}.bin").identity == tok.identity
    stories = []
    for prompt in ("", "Once upon a time"):
        k, new = len(tok.prompt(prompt)), 40  # run.c's -n counts the prompt's positions, sample.py new tokens
        story = run(run_bin, out / "model.bin", "-t", "0", "-n", k + new - 1, *(["-i", prompt] if prompt else [])).stdout
        for checkpoint in (out / "ckpt.pt", out / "model.bin"):
            r = run(py, REPO / "sample.py", f"--checkpoint={checkpoint}", "--temperature=0", f"--max_new_tokens={new}",
                    f"--start={prompt}", "--device=cpu")
            assert r.stdout.decode() == story.decode(errors="replace"), (prompt, checkpoint)
        stories.append(story.decode(errors="replace").strip())
    assert stories[1].startswith("Once upon a time") and len(stories[1]) > len("Once upon a time")
    # the Hugging Face export: transformers reads the same ids, BOS and EOS, and continues as sample.py
    hf_tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    texts = list(ts.iter_stories(shared / "tinystories" / "TinyStoriesV2-GPT4-train.sample.txt"))
    assert [hf_tok(t).input_ids for t in texts] == [tok.encode(t, False, False) for t in texts]
    assert hf_tok.bos_token == hf_tok.eos_token == "<|endoftext|>"
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    ids = torch.tensor([tok.prompt("Once upon a time")])
    got = model.generate(ids, do_sample=False, max_new_tokens=40)[0, ids.shape[1]:].tolist()
    got = got[:next((i for i, t in enumerate(got) if t in tok.stops()), len(got))]
    assert tok.decode(ids[0].tolist() + got) == stories[1]


def test_no_shards_advice_names_the_tokenizer_file_it_knows(tmp_path):
    """A named vocabulary without shards: the pretokenize command names data/NAME.json when it is there."""
    cmd = dl.prepare_commands(512, "mytok", data_dir=str(tmp_path))
    assert "--tokenizer=TOKENIZER_FILE" in cmd and f"--data_dir={tmp_path}" in cmd
    (tmp_path / "mytok.json").write_text("{}")
    cmd = dl.prepare_commands(512, "mytok", data_dir=str(tmp_path))
    assert f"--tokenizer={tmp_path / 'mytok.json'} --input YOUR_STORIES" in cmd, cmd

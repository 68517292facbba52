"""Hugging Face tokenizers both ways. Import: a tokenizer.json of type BPE (byte-level like GPT-2's,
byte fallback like Llama's, in each way transformers and tokenizers write them) becomes our Vocab, and
run.c and our Python encoder give the `tokenizers` library's ids on the ~300 parity prompts. Export:
the tokenizer.json we write loads in `tokenizers`/AutoTokenizer with sentencepiece's ids (except the
documented cases), and pipeline("text-generation") gives sample.py's greedy text. Unsupported or
broken tokenizer files get one line."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tokenizer as T
import vocab as V
from binfile import model_export
from model import ModelArgs, Transformer
from prompts import SPECIAL, prompts

tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a test-only dependency")
transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
REPO = Path(__file__).resolve().parent.parent
FLAVOURS = ["bytelevel", "bytelevel_prefix", "metaspace_first", "metaspace_always", "ours_llama2", "ours_tok512",
            "ours_specials"]


def trained(shared, flavour):
    """A tokenizers BPE trained on shared TinyStories text, in the given flavour (FLAVOURS[:4], or "gpt2")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    text = (shared / "tinystories" / "TinyStories-train.head-2MiB.txt").read_text()[:400_000]
    if flavour.startswith("bytelevel") or flavour == "gpt2":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=flavour.endswith("prefix"))
        tok.decoder = decoders.ByteLevel()
        specials, alphabet, size = ["<unk>", "<|start_story|>", "<|end_story|>"], pre_tokenizers.ByteLevel.alphabet(), 1024
        if flavour == "gpt2":  # GPT-2's shape: <|endoftext|> its one special token, a ByteLevel post-processor
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
            specials = ["<|endoftext|>"]
    else:  # Llama's shape as tokenizers writes it: Metaspace, byte fallback, <0xHH> tokens
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=flavour.split("_")[1],
                                                     split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        specials, alphabet, size = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))], [], 700
    tok.train_from_iterator(text.split("\n"), trainers.BpeTrainer(vocab_size=size, special_tokens=specials,
                                                        initial_alphabet=alphabet, show_progress=False))
    return tok


@pytest.fixture(scope="session")
def hf_tokenizers(shared, tmp_path_factory):
    """{flavour: tokenizer.json path}: four trained by `tokenizers`, three written by hf.write_tokenizer."""
    import hf_tokenizer
    import tinystories
    d = tmp_path_factory.mktemp("hf_tok")
    out = {}
    for f in FLAVOURS[:4]:
        out[f] = d / f / "tokenizer.json"
        out[f].parent.mkdir()
        trained(shared, f).save(str(out[f]))
    specials = tinystories.train_vocab(400, [shared / "tinystories" / "TinyStories-train.head-2MiB.txt"], d,
                                       max_stories=500, special_tokens=["<|start_story|>", "<|end_story|>"])
    for f, model in (("ours_llama2", shared / "models" / "tokenizer.model"),
                     ("ours_tok512", shared / "models" / "tok512.model"), ("ours_specials", specials)):
        (d / f).mkdir()
        hf_tokenizer.write_tokenizer(T.Tokenizer(model).vocab, d / f, 256)
        out[f] = d / f / "tokenizer.json"
        out[f.replace("ours_", "model_")] = model
    return out


@pytest.mark.parametrize("flavour", [pytest.param(f, marks=pytest.mark.slow) if f == "ours_llama2" else f
                                     for f in FLAVOURS])  # Llama 2's 32,000 tokens: slow
def test_import_matches_tokenizers(hf_tokenizers, run_bin, tmp_path, flavour):
    path = hf_tokenizers[flavour]
    ref = tokenizers.Tokenizer.from_file(str(path))
    mine = T.Tokenizer(path)
    assert mine.sp_model is None and mine.n_words == ref.get_vocab_size()
    tok_bin = V.write_bin(mine.vocab, tmp_path / "tok.bin")
    model_bin = tmp_path / "m.bin"
    model_export(Transformer(ModelArgs(dim=16, n_layers=1, n_heads=2, vocab_size=mine.n_words, max_seq_len=32)),
                 model_bin, vocab_id=mine.identity)
    bad_py, bad_c = [], []
    for p in prompts() + SPECIAL:
        want = ref.encode(p, add_special_tokens=False).ids
        if mine.encode(p, bos=False, eos=False) != want:
            bad_py.append(p)
        r = subprocess.run([str(run_bin), str(model_bin), "-z", str(tok_bin), "-m", "tokenize", "-i", p],
                           capture_output=True, timeout=60)
        if [int(x) for x in r.stdout.split()] != want:
            bad_c.append((p, r.stderr[-200:]))
    assert not bad_py, f"Python: {len(bad_py)} prompts differ, e.g. {bad_py[:3]}"
    assert not bad_c, f"run.c: {len(bad_c)} prompts differ, e.g. {bad_c[:3]}"
    # with the template (BOS where the tokenizer adds one), and back to text
    text = "Once upon a time, Lily saw a big dog."
    assert mine.encode(text, bos=mine.add_bos, eos=False) == ref.encode(text).ids
    assert mine.decode(ref.encode(text).ids) == ref.decode(ref.encode(text).ids)


# Where HF's own semantics differ from sentencepiece's, so that the tokenizer.json we write cannot agree:
# HF reads its added tokens (<s>, </s>, <unk>, ...) out of the text, sentencepiece never reads control
# tokens; and HF puts the dummy "▁" before every piece of text between special tokens, sentencepiece only
# before the whole text.
def hf_reads_differently(p):
    return any(s in p for s in ("<s>", "</s>", "<unk>", "<|start_story|>", "<|end_story|>"))


@pytest.mark.parametrize("name", ["llama2", "tok512", "specials"])
def test_export_matches_sentencepiece(hf_tokenizers, name):
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(hf_tokenizers[f"model_{name}"]))
    ref = tokenizers.Tokenizer.from_file(str(hf_tokenizers[f"ours_{name}"]))
    differ = [p for p in prompts() + SPECIAL if ref.encode(p, add_special_tokens=False).ids != sp.encode(p)]
    assert all(hf_reads_differently(p) for p in differ), [p for p in differ if not hf_reads_differently(p)]
    assert "<s>hi</s>" in differ and len(differ) <= (9 if name == "specials" else 2), differ
    assert ref.encode("Once upon a time").ids == [1] + sp.encode("Once upon a time")  # BOS from the template
    # the same vocabulary after the trip: the identity survives
    assert T.Tokenizer(hf_tokenizers[f"ours_{name}"]).identity == T.Tokenizer(hf_tokenizers[f"model_{name}"]).identity


@pytest.mark.slow  # processes of their own
def test_to_hf_tokenizer_loads_and_pipeline_gives_sample_py_text(shared, tmp_path):
    """stories260K + tok512 through export.py --to_hf: AutoTokenizer and pipeline work, and the greedy
    text is sample.py's (and run.c's, from the .bin export.py writes with its tokenizer beside)."""
    shutil.copy(shared / "models" / "stories260K.bin", tmp_path / "s.bin")
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "export.py"), str(out / "model.bin"), f"--bin={tmp_path / 's.bin'}",
                        f"--tokenizer={shared / 'models' / 'tok512.model'}", f"--to_hf={out / 'hf'}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tok = transformers.AutoTokenizer.from_pretrained(out / "hf")
    from sentencepiece import SentencePieceProcessor
    sp = SentencePieceProcessor(model_file=str(shared / "models" / "tok512.model"))
    assert tok("Once upon a time").input_ids == [1] + sp.encode("Once upon a time")
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    pipe = transformers.pipeline("text-generation", model=str(out / "hf"))
    got = pipe("Once upon a time", do_sample=False, max_new_tokens=80)[0]["generated_text"]
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={out / 'model.bin'}",
                        "--start=Once upon a time", "--temperature=0", "--max_new_tokens=80", "--device=cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == got + "\n" and got.startswith("Once upon a time, there was a little girl named Lily.")
    assert json.loads((out / "hf" / "generation_config.json").read_text())["eos_token_id"] == [1, 2]  # BOS, EOS


def broken(tmp_path, name, edit, base):
    """A copy of the tokenizer.json at base with edit(obj) applied, in its own folder."""
    d = tmp_path / name
    d.mkdir()
    obj = json.loads(base.read_text())
    edit(obj)
    (d / "tokenizer.json").write_text(json.dumps(obj))
    return d


def set_(path, value):
    def edit(obj):
        *keys, last = path
        for k in keys:
            obj = obj[k]
        obj[last] = value
    return edit


@pytest.mark.parametrize("case,words", [
    ("wordpiece", "model type 'WordPiece' is not supported"),
    ("unigram", "model type 'Unigram' is not supported"),
    ("nfkc", "normalizer ['NFKC'] with pre_tokenizer"),
    ("no_regex", "use_regex=false"),
    ("template_missing", "the template names '<bos>'"),
    ("template_wrong_id", "is not that token of the vocabulary"),
    ("template_after", "template ['A', 'S'] is not supported"),
    ("lstrip", "lstrip=true"),
    ("merge_missing", "names a token the vocabulary lacks"),
    ("bos_missing", "bos_token '<nope>'"),
    ("not_json", "not a readable JSON"),
    ("vocab_type", "model.vocab must map"),
    ("dropout", "dropout"),
])
def test_unsupported_or_broken_tokenizer_is_one_line(hf_tokenizers, tmp_path, case, words):
    base = hf_tokenizers["bytelevel"]
    template = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                                                        {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [], "special_tokens": {}}
    edits = {
        "wordpiece": set_(["model", "type"], "WordPiece"),
        "unigram": set_(["model", "type"], "Unigram"),
        "nfkc": set_(["normalizer"], {"type": "NFKC"}),
        "no_regex": set_(["pre_tokenizer", "use_regex"], False),
        "template_missing": set_(["post_processor"], template),
        "template_wrong_id": set_(["post_processor"], {**template, "single": [
            {"SpecialToken": {"id": "<|end_story|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {"<|end_story|>": {"id": "<|end_story|>", "ids": [5], "tokens": ["<|end_story|>"]}}}),
        "template_after": set_(["post_processor"], {**template, "single": [
            {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<|start_story|>", "type_id": 0}}],
            "special_tokens": {"<|start_story|>": {"id": "<|start_story|>", "ids": [1], "tokens": ["<|start_story|>"]}}}),
        "lstrip": lambda o: o["added_tokens"][1].update(lstrip=True),
        "merge_missing": lambda o: o["model"]["merges"].insert(0, ["Q", "nonexistent"]),
        "bos_missing": None,
        "not_json": None,
        "vocab_type": set_(["model", "vocab"], ["a", "b"]),
        "dropout": set_(["model", "dropout"], 0.1),
    }
    if case == "not_json":
        d = tmp_path / case
        d.mkdir()
        (d / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
    else:
        d = broken(tmp_path, case, edits[case] or (lambda o: None), base)
    if case == "bos_missing":
        (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<nope>"}))
    r = subprocess.run([sys.executable, str(REPO / "tokenizer.py"), "-t", str(d / "tokenizer.json"), "-o",
                        str(tmp_path / "t.bin")], capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(d / "tokenizer.json") in lines[0] and words in lines[0], lines[0]
    assert not (tmp_path / "t.bin").exists()


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_model_vocab_larger_than_tokenizer_is_padded(hf_tokenizers, run_bin, tmp_path):
    """HF models often have more embedding rows than tokens: the rest become unused tokens."""
    d = tmp_path / "hf"
    config = transformers.LlamaConfig(vocab_size=1088, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(d)
    shutil.copy(hf_tokenizers["bytelevel"], d / "tokenizer.json")
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "export.py"), str(out / "m.bin"), f"--hf={d}"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    v = V.read_bin(out / "tok1088.bin")
    assert len(v) == 1088 and v.types[1024:] == [V.UNUSED] * 64 and v.pieces[1024:] == [b""] * 64
    r = subprocess.run([str(run_bin), str(out / "m.bin"), "-m", "tokenize", "-i", "Once upon a time"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == [str(i) for i in T.Tokenizer(d).encode("Once upon a time", False, False)]

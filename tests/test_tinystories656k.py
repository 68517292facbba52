"""The TinyStories-656K case, offline: a twin of that Hugging Face model (a transformers
LlamaForCausalLM with its shape, a `tokenizers` byte-level BPE trained on ../shared text with
<|start_story|> and <|end_story|>, both saved with save_pretrained) goes through `export.py --hf` with
no other step, and run.c, sample.py and transformers agree on the template prompt's ids, on the
logits at every position, and on a greedy story that ends at <|end_story|> (planted in the weights)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is a test-only dependency")

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "<|start_story|>Once upon a time, "
STEPS = 4  # the planted <|end_story|> is the 4th token the model generates


def train_tokenizer(shared):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2048, special_tokens=["<unk>", "<|start_story|>", "<|end_story|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = (shared / "tinystories" / "TinyStoriesV2-GPT4-train.head-10k-lines.txt").read_text()
    tok.train_from_iterator([text], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|start_story|>",
                                                eos_token="<|end_story|>", unk_token="<unk>", pad_token="<unk>")


def plant_end(model, ids, end):
    """Make <|end_story|> the greedy choice exactly at generated step STEPS: its (tied) embedding row
    becomes the part of the last hidden state orthogonal to the earlier ones, so its logit is 0 before
    (below the winner's) and large there. Returns the greedy tokens before it."""
    with torch.no_grad():
        seq, hidden = list(ids), []
        for _ in range(STEPS):
            h = model.model(torch.tensor([seq])).last_hidden_state[0, -1]
            hidden.append(h)
            seq.append(int(model.lm_head(h).argmax()))
        q, _ = torch.linalg.qr(torch.stack(hidden[:-1], dim=1))  # an orthonormal basis of the earlier states
        u = hidden[-1] - q @ (q.T @ hidden[-1])
        top = model.lm_head(hidden[-1]).max()
        model.model.embed_tokens.weight[end] = u * (2 * top / (u @ hidden[-1]))
    return seq[len(ids):-1]


@pytest.fixture(scope="module")
def twin(shared, tmp_path_factory):
    """The HF directory of the twin and what export.py made of it: (hf_dir, model.bin, tokenizer, generated)."""
    d = tmp_path_factory.mktemp("656K")
    hf_dir = d / "TinyStories-656K"
    tok = train_tokenizer(shared)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1 and larger weights: a wrong permutation or norm must show
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if name.endswith("norm.weight") else 0.08 * torch.randn_like(p))
    ids = tok(TEMPLATE).input_ids
    before = plant_end(model, ids, tok.eos_token_id)
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    out = d / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "export.py"), str(out / "model.bin"), f"--hf={hf_dir}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "tok2048.bin").is_file(), r.stdout  # written beside the model, where run.c looks
    return hf_dir, out / "model.bin", tok, ids, before


@pytest.mark.slow  # over 2 s: the quick tier keeps under a minute
def test_template_ids_agree(twin, run_bin):
    from tokenizer import Tokenizer
    hf_dir, model_bin, tok, ids, _ = twin
    assert ids[0] == tok.convert_tokens_to_ids("<|start_story|>") and len(ids) > 5
    mine = Tokenizer(model_bin.parent / "tok2048.bin")  # what sample.py loads for model.bin
    assert mine.prompt(TEMPLATE) == ids
    assert (mine.bos_id, mine.eos_id, mine.end_id) == (ids[0], tok.eos_token_id, tok.eos_token_id)
    r = subprocess.run([str(run_bin), str(model_bin), "-m", "tokenize", "-i", TEMPLATE], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [int(x) for x in r.stdout.split()] == ids
    assert Tokenizer(hf_dir).identity == mine.identity  # the same vocabulary, read from tokenizer.json or our file


@pytest.mark.slow  # its model (the module's fixture) takes 3 s to build: the quick tier keeps under a minute
def test_logits_agree(twin, run_bin, tmp_path):
    import binfile
    hf_dir, model_bin, _, ids, _ = twin
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
        ours = binfile.load_bin(model_bin)(torch.tensor([ids]))[0][0].numpy()  # sample.py's model
    r = subprocess.run([str(run_bin), str(model_bin), "-m", "logits", "-i", " ".join(map(str, ids)), "-o",
                        str(tmp_path / "l.bin")], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    c = np.fromfile(tmp_path / "l.bin", np.float32).reshape(len(ids), -1)
    np.testing.assert_allclose(ours, want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(c, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # processes of their own
def test_greedy_story_stops_at_end_story(twin, run_bin):
    hf_dir, model_bin, tok, ids, before = twin
    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=50, do_sample=False)[0].tolist()
    end = tok.eos_token_id
    assert out[len(ids):] == before + [end] and end not in before  # transformers stops at the planted token
    text = tok.decode(out, skip_special_tokens=True)
    assert text.startswith("Once upon a time, ") and len(text) > len("Once upon a time, ")
    r = subprocess.run([str(run_bin), str(model_bin), "-t", "0", "-i", TEMPLATE, "-n", "100"], capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode(errors="replace") == text + "\n"  # a random model may emit stray UTF-8 bytes
    r = subprocess.run([sys.executable, str(REPO / "sample.py"), f"--checkpoint={model_bin}", f"--start={TEMPLATE}",
                        "--temperature=0", "--max_new_tokens=100", "--device=cpu"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == text + "\n"
    # model.generate, the loop sample.py runs: stops there; without the stop it goes on
    import binfile
    from tokenizer import Tokenizer
    m = binfile.load_bin(model_bin)
    stops = Tokenizer(model_bin.parent / "tok2048.bin").stops()
    y = m.generate(torch.tensor([ids]), 20, temperature=0.0, stop_tokens=stops)[0].tolist()
    assert y == out
    y = m.generate(torch.tensor([ids]), 20, temperature=0.0, stop_tokens=())[0].tolist()
    assert y[:len(out)] == out and len(y) == len(ids) + 20

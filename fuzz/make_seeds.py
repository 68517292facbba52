"""
fuzz/make_seeds.py: the fuzzer's seeds, one file per format run.c reads, made by the project's own writers.

    python fuzz/make_seeds.py fuzz/seeds          # make fuzz runs this first

Models are tiny (a few KB: an execution takes about a millisecond under the sanitizers) and share the
vocabulary of the tokenizer seeds, so that mutations get past the tokenizer check into generation.
To cover a new format, add one line: to MODELS for a .bin version or weight type (its export.py
arguments), to TOKENIZERS for a tokenizer file kind (the function that writes it). The fuzzer takes
every model_*.bin and tok_*.bin in the folder and pairs each model with each tokenizer.
"""
import json
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from binfile import model_export  # noqa: E402
from model import ModelArgs, Transformer  # noqa: E402

VOCAB = 384  # 3 control + 256 byte pieces + the characters of stories() + some merges
BASE = dict(dim=16, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, hidden_dim=32, max_seq_len=32)

ODD = dict(vocab_size=VOCAB - 1, dim=18, n_heads=3, n_kv_heads=3, hidden_dim=36)  # rows and sizes not multiples of 4


def flat(m):  # every logit 0: top-p below 1/vocab finds no token above llama2.c's cutoff
    m.output.weight.zero_()


def big_values(m):  # values past fp16's range: the q8_0 KV cache must widen to fp32
    m.layers[1].attention.wv.weight.mul_(1e5)


# file name: (changes to BASE, model_export arguments[, an edit of the weights])
MODELS = {
    "model_v0.bin": ({}, dict(version=0)),
    "model_v1.bin": ({}, dict(version=1)),
    "model_v1_untied_mqa.bin": (dict(tie_embeddings=False, n_kv_heads=1), dict(version=1)),
    "model_v2.bin": ({}, dict(version=2, group_size=8)),
    "model_v3_fp32.bin": (dict(rope_theta=500.0, norm_eps=1e-6), dict(version=3, dtype="fp32")),
    "model_v3_bf16.bin": (dict(tie_embeddings=False), dict(version=3, dtype="bf16")),
    "model_v3_q8_0_gs4.bin": ({}, dict(version=3, dtype="q8_0", group_size=4)),  # run.c's small-group kernel
    "model_v3_q8_0_gs32.bin": (dict(dim=64, hidden_dim=64), dict(version=3, dtype="q8_0", group_size=32)),
    "model_v3_q4_gs4.bin": ({}, dict(version=3, dtype="q4", group_size=4)),
    "model_v3_q4_gs32.bin": (dict(dim=64, hidden_dim=64), dict(version=3, dtype="q4", group_size=32)),
    "model_v3_q4_q8_gs2.bin": (dict(tie_embeddings=False), dict(version=3, dtype="q4_q8", group_size=2)),  # older q4
    "model_v3_vocab64.bin": (dict(vocab_size=64), dict(version=3)),  # no tokenizer of its size
    "model_v2_odd.bin": (ODD, dict(version=2, group_size=2)),  # the plain q8 kernel; v2 scales off 4-byte alignment
    "model_v3_fp32_odd.bin": ({**ODD, "tie_embeddings": False}, dict(version=3, dtype="fp32")),
    "model_v3_bf16_odd.bin": (ODD, dict(version=3, dtype="bf16")),
    "model_v1_flat.bin": (dict(tie_embeddings=False), dict(version=1), flat),
    "model_v3_q8_0_big_values.bin": ({}, dict(version=3, dtype="q8_0", group_size=4), big_values),
}


def stories(n=300, seed=0):
    """Synthetic stories: words, digits, punctuation, runs of spaces and some UTF-8 (no data files needed)."""
    rnd = random.Random(seed)
    words = ("once upon a time there was little girl boy named Lily Tim who loved to play in the park "
             "with big red ball and her mom said happy sad dog cat sun 7 42 1999 café naïve 😀 ▁").split()
    out = []
    for _ in range(n):
        sentences = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))).capitalize() + rnd.choice(".!?")
                     for _ in range(rnd.randint(1, 4))]
        out.append(rnd.choice([" ", "  ", "\n"]).join(sentences))
    return out


def sentencepiece_tokenizer(special_tokens=(), vocab=VOCAB, legacy=False):
    """A vocabulary trained by tinystories.train_vocab, exported by tokenizer.py: in our tokenizer file
    format, or llama2.c's (legacy)."""
    def write(path):
        import tinystories
        from tokenizer import Tokenizer
        with tempfile.TemporaryDirectory() as d:
            text = Path(d) / "stories.json"
            text.write_text(json.dumps({"texts": stories()}))
            model = tinystories.train_vocab(vocab, [text], data_dir=d, special_tokens=special_tokens)
            Tokenizer(model).export(path, legacy=legacy)
    return write


# file name: a function writing it
TOKENIZERS = {
    "tok_384.bin": sentencepiece_tokenizer(),
    "tok_384_legacy.bin": sentencepiece_tokenizer(legacy=True),  # llama2.c's tokenizer file
    "tok_384_special.bin": sentencepiece_tokenizer(("<|start_story|>", "<|end_story|>")),
    "tok_383.bin": sentencepiece_tokenizer(vocab=VOCAB - 1, legacy=True),  # the odd models' vocabulary
}


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (changes, kwargs, *edit) in MODELS.items():
        torch.manual_seed(0)
        model = Transformer(ModelArgs(**{**BASE, **changes}))
        with torch.no_grad():  # norms away from 1 and weights of the size trained models have
            for pname, p in model.named_parameters():
                p.mul_(5) if not pname.endswith("norm.weight") else p.uniform_(0.5, 1.5)
            for e in edit:
                e(model)
        model_export(model, out / name, **kwargs)
    for name, write in TOKENIZERS.items():
        write(out / name)
    print(f"wrote {len(MODELS)} models and {len(TOKENIZERS)} tokenizers to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else REPO / "fuzz" / "seeds")

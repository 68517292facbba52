"""
tokenizer.py: a model's tokenizer from any file it comes in, and the command line that writes run.c's
tokenizer file.

    python tokenizer.py -t data/tok512.model                 # writes data/tok512.bin (run.c's format)
    python tokenizer.py -t data/tok512.model --legacy        # llama2.c's format, byte-identical to its files
    python tokenizer.py -t hf_dir/tokenizer.json -o tok.bin  # a Hugging Face BPE tokenizer, for run.c

A vocabulary (vocab.py's Vocab) is read from a sentencepiece .model, a Hugging Face tokenizer.json
(hf_tokenizer.py), a GGUF (gguf_meta.py) or a run.c tokenizer file of either format (vocab.py), and
encodes and decodes the same way from all of them: a .model through sentencepiece itself, the others
through vocab.py's BPE encoder, which run.c's encoder mirrors step for step.
"""
import argparse
import struct
import sys
import tempfile
from pathlib import Path

import gguf_meta
import hf_tokenizer
from configurator import one_line_errors
from vocab import ADD_BOS, MAGIC, decode, encode, identity, read_bin, read_sentencepiece, write_bin


# -----------------------------------------------------------------------------
# one entry point for every kind of tokenizer file

def read_vocab(path):
    """(Vocab, kind, why run.c cannot encode like it or '') of a tokenizer file. kind: "sentencepiece"
    (a .model), "hf" (tokenizer.json or a Hugging Face directory), "bin" (a run.c tokenizer file), "gguf"
    (a llama.cpp model file's tokenizer, gguf_meta.py)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: tokenizer not found")
    if p.is_dir() or p.suffix == ".json":
        return hf_tokenizer.read_tokenizer(p), "hf", ""
    with open(p, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return gguf_meta.read_vocab(p), "gguf", ""
    if len(head) == 4 and struct.unpack("<I", head)[0] == MAGIC or p.suffix == ".bin":
        return read_bin(p), "bin", ""
    v, problem = read_sentencepiece(p)
    return v, "sentencepiece", problem


class Tokenizer:
    """A model's tokenizer from any file read_vocab reads. encode/decode are sentencepiece's own for a
    .model, else this file's encoder (which run.c's mirrors)."""

    def __init__(self, path):
        self.path = self.model_path = Path(path)
        self.vocab, self.kind, self.problem = read_vocab(self.path)
        self.sp_model = None
        if self.kind == "sentencepiece":
            from sentencepiece import SentencePieceProcessor
            self.sp_model = SentencePieceProcessor(model_file=str(self.path))
        v = self.vocab
        self.n_words, self.bos_id, self.eos_id, self.end_id = len(v), v.bos, v.eos, v.end
        self.add_bos = bool(v.flags & ADD_BOS)
        self.identity = identity(v)

    def encode(self, s, bos, eos):
        assert isinstance(s, str), "encode takes one string"
        ids = self.sp_model.encode(s) if self.sp_model else encode(self.vocab, s)
        if bos and self.bos_id >= 0:
            ids = [self.bos_id] + ids
        if eos and self.eos_id >= 0:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids):
        if self.sp_model:  # control tokens (BOS/EOS) decode to nothing, byte pieces are reassembled into UTF-8
            return self.sp_model.decode([int(i) for i in ids])
        return decode(self.vocab, [int(i) for i in ids])

    def prompt(self, text):
        """The ids a story with this prompt starts with: BOS (where the vocabulary adds one) and the text."""
        ids = self.encode(text, bos=self.add_bos, eos=False)
        if not ids and self.bos_id >= 0:
            ids = [self.bos_id]
        if not ids:
            raise ValueError(f"{self.path}: this vocabulary has no BOS token to start a story: give a prompt")
        return ids

    def stops(self, end="auto"):
        """Token ids that end a story: BOS, EOS and the end-of-story token ('auto': the vocabulary's,
        '': none, else the text of one special token)."""
        if end == "auto":
            end_id = self.end_id
        elif end == "":
            end_id = -1
        else:
            want = end.encode("utf-8")
            end_id = next((i for i, p in enumerate(self.vocab.pieces) if p == want), -1)
            if end_id < 0:
                raise ValueError(f"end token {end!r} is not a token of {self.path}")
        return tuple(sorted({i for i in (self.bos_id, self.eos_id, end_id) if i >= 0}))

    def bin_path(self):
        """Where export writes by default: the tokenizer's path with .bin (a directory: tok{N}.bin in it)."""
        return self.path / f"tok{self.n_words}.bin" if self.path.is_dir() else self.path.with_suffix(".bin")

    def export(self, path=None, legacy=False):
        """Write the run.c tokenizer file (default: the tokenizer's path with .bin); returns its path."""
        path = Path(path or self.bin_path())
        if self.problem and not legacy:
            raise ValueError(f"{self.path}: run.c cannot encode like this tokenizer: {self.problem} "
                             "(--legacy writes llama2.c's file anyway)")
        return write_bin(self.vocab, path, legacy)


def check_identity(model_id, model_path, tok, note=print):
    """ValueError when a model and a tokenizer both carry an identity and they differ; a note when only
    one of them does. model_id: bytes or None."""
    if model_id and tok.identity and model_id != tok.identity:
        raise ValueError(f"{tok.path} is not the tokenizer of {model_path} (vocabulary {tok.identity.hex()[:12]}, "
                         f"the model's {model_id.hex()[:12]}): use the model's own tokenizer")
    if bool(model_id) != bool(tok.identity):
        legacy = tok.path if model_id else model_path
        note(f"note: {legacy} carries no vocabulary identity (an older file): cannot check that {tok.path} is "
             f"{model_path}'s tokenizer")


def beside(model_path, vocab_size):
    """Where run.c's find_tokenizer looks for a model's tokenizer, in its order: tok{vocab_size}.bin,
    then tokenizer.bin (dataloader.py's names), each in the model's folder, then in the current one.
    export.py writes the first of them."""
    folder = Path(model_path).parent
    return [d / name for name in (f"tok{vocab_size}.bin", "tokenizer.bin") for d in (folder, Path("."))]


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description="Write a tokenizer (.model, tokenizer.json, HF directory) as "
                                     "run.c's tokenizer file")
    # checked after parsing, so that a misspelt flag is named rather than reported as -t missing
    parser.add_argument("-t", "--tokenizer-model", help="(required) a sentencepiece .model, a tokenizer.json "
                        "or a Hugging Face directory")
    parser.add_argument("-o", "--output", default=None, help="output path (default: the model path with .bin)")
    parser.add_argument("--legacy", action="store_true", help="llama2.c's format (no token types, special tokens "
                        "or identity), byte-identical to the files llama2.c ships")
    args = one_line_errors(parser).parse_args(argv)
    if args.tokenizer_model is None:
        parser.error("the following arguments are required: -t/--tokenizer-model")
    try:
        tok = Tokenizer(args.tokenizer_model)
        if args.output is None and tok.bin_path().exists():  # never replace another file unasked
            with tempfile.TemporaryDirectory() as d:
                if tok.export(Path(d) / "tok.bin", args.legacy).read_bytes() != tok.bin_path().read_bytes():
                    raise ValueError(f"{tok.bin_path()} exists and holds another file: pass -o PATH to write "
                                     "elsewhere, or remove it")
        out = tok.export(args.output, args.legacy)
    except (OSError, ValueError) as e:
        print(f"tokenizer.py: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

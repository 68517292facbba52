"""
tokenizer.py: a thin wrapper around a sentencepiece model, and its export to run.c's tokenizer file.

    python tokenizer.py -t data/tok512.model      # writes data/tok512.bin

The .bin file (the format llama2.c's run.c reads; all little-endian):
    i32 max_token_length                      longest token in bytes
    then for every token id 0..n_words-1:
        f32 score                             the sentencepiece score (merge priority for BPE)
        i32 len                               byte length of the text below
        len bytes                             the token text, UTF-8
Token text is the sentencepiece piece with its whitespace marker U+2581 turned into a plain space,
except BOS and EOS, written as "\\n<s>\\n" and "\\n</s>\\n" so a raw dump of them is readable.
Byte-fallback pieces keep their "<0x0A>" spelling; run.c decodes those itself. These rules give
files byte-identical to the tok512.bin / tokenizer.bin that llama2.c ships.
"""
import argparse
import os
import struct
import sys
from pathlib import Path

from sentencepiece import SentencePieceProcessor


class Tokenizer:
    def __init__(self, model_path):
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: tokenizer model not found")
        try:
            self.sp_model = SentencePieceProcessor(model_file=str(self.model_path))
        except (RuntimeError, OSError) as e:
            # sentencepiece's own message is a multi-line C++ status; keep the first line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else "unreadable"
            raise ValueError(f"{self.model_path}: not a sentencepiece model ({reason})") from None
        self.n_words = self.sp_model.vocab_size()  # vocabulary size, every id is < n_words
        self.bos_id = self.sp_model.bos_id()
        self.eos_id = self.sp_model.eos_id()

    def encode(self, s, bos, eos):
        assert isinstance(s, str), "encode takes one string"
        ids = self.sp_model.encode(s)
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids):
        # control tokens (BOS/EOS) decode to nothing, byte pieces are reassembled into UTF-8
        return self.sp_model.decode([int(i) for i in ids])

    def export(self, path=None):
        """Write the run.c tokenizer file (default: the model path with .bin); returns its path."""
        path = Path(path) if path is not None else self.model_path.with_suffix(".bin")
        tokens, scores = [], []
        for i in range(self.n_words):
            if i == self.bos_id:
                text = "\n<s>\n"
            elif i == self.eos_id:
                text = "\n</s>\n"
            else:
                text = self.sp_model.id_to_piece(i).replace("\u2581", " ")
            tokens.append(text.encode("utf-8"))
            scores.append(self.sp_model.get_score(i))
        out = [struct.pack("<i", max(len(t) for t in tokens))]
        for t, s in zip(tokens, scores):
            out.append(struct.pack("<fi", s, len(t)))
            out.append(t)
        # temp file + rename: a crash never leaves a half-written tokenizer next to a model
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(out))
        os.replace(tmp, path)
        return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a sentencepiece model to run.c's tokenizer .bin")
    parser.add_argument("-t", "--tokenizer-model", required=True, help="path to the .model file")
    parser.add_argument("-o", "--output", default=None, help="output path (default: the model path with .bin)")
    args = parser.parse_args(argv)
    try:
        out = Tokenizer(args.tokenizer_model).export(args.output)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""pretrained.py: a trained model and its tokenizer from any file: a train.py checkpoint, a run.c .bin of
any version, a Hugging Face Llama directory or a GGUF, told apart by content, not by name.

    found = load_pretrained("stories260K.bin")     # found.model (fp32, eval), found.identity, found.tokenizer
    tok = pick_tokenizer(found, "tok512.model", print)   # the tokenizer to use with it, checked

train.py's --init_from=PATH starts fine-tuning from it. A model's tokenizer is the one inside its file
(a GGUF's vocabulary, a Hugging Face directory's tokenizer), the copy train.py keeps beside a checkpoint
(checkpoint.checkpoint_tokenizer), or the run.c tokenizer beside a .bin (tokenizer.beside); a tokenizer
given instead is checked against the model by vocabulary identity, or, for a model too old to carry one,
against the llama2.c tokenizer file beside it, token text by token text.
"""
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from binfile import QUANTISED, load_bin, read_header
from checkpoint import checkpoint_tokenizer, load_checkpoint
from fileio import regular_file
from gguf_file import gguf_import
from gguf_meta import Q8_0_T, read_gguf
from hf import hf_import
import tokenizer as T
import vocab as V


@dataclass
class Pretrained:
    model: object              # model.Transformer, fp32 weights, eval mode, on the CPU
    kind: str                  # "checkpoint", "bin", "hf" or "gguf"
    identity: Optional[bytes]  # the vocabulary identity the file carries (HF, GGUF: their own tokenizer's)
    tokenizer: Optional[Path]  # the model's own tokenizer file, when one was found
    tokenizer_note: str = ""   # where the tokenizer was looked for when none was found, or how it was found
    notes: list = field(default_factory=list)  # what loading did to the weights (dequantised ...)
    config: dict = field(default_factory=dict)  # a checkpoint's training settings ({} for other files)


def kind_of(path):
    """'hf' (a directory), 'gguf', 'checkpoint' (a zip or pickle file) or 'bin'; ValueError when the path
    is none of them (missing, a FIFO ...)."""
    if os.path.isdir(path):
        return "hf"
    regular_file(path, "model file")  # a FIFO would block the read
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF":
        return "gguf"
    return "checkpoint" if head[:2] == b"PK" or head[:1] == b"\x80" else "bin"


def own_vocabulary(path):
    """(identity, tokenizer path, note) of a file that holds its tokenizer (GGUF, HF directory)."""
    try:
        return T.Tokenizer(path).identity, Path(path), ""
    except (OSError, ValueError) as e:
        return None, None, f"its tokenizer cannot be read ({str(e).splitlines()[0]})"


def load_pretrained(path):
    """Pretrained of the model in path: its weights exactly as stored (bf16 upcast, q8_0 and q4 dequantised,
    with a note saying so), and its tokenizer when it has one. ValueError in one line naming the file."""
    kind = kind_of(path)
    if kind == "checkpoint":
        model, ckpt = load_checkpoint(path)
        ident = ckpt.get("vocab_identity")
        ident = bytes.fromhex(ident) if isinstance(ident, str) else None
        try:
            tok, note = checkpoint_tokenizer(path, ckpt)
        except ValueError as e:
            tok, note = None, str(e)
        if tok is not None and not tok.is_file():
            tok, note = None, f"{tok}, the vocabulary {path} names, is missing"
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        return Pretrained(model, kind, ident, tok, note.removeprefix("note: "), config=config)
    if kind == "bin":
        try:
            h = read_header(path)
            model = load_bin(path)
        except ValueError as e:
            raise ValueError(f"{path} is neither a train.py checkpoint (a zip or pickle file), a GGUF, a Hugging "
                             f"Face directory nor a run.c .bin model ({e})") from None
        notes = [f"{path} holds {h['weight_type']} weights: dequantised to fp32 (the fine-tuned model is fp32; "
                 "export.py quantises it again)"] if h["weight_type"] in QUANTISED else []
        where = T.beside(path, h["vocab_size"])
        tok = next((p for p in where if p.is_file()), None)
        note = "" if tok else f"looked for {' and '.join(map(str, where))}"
        return Pretrained(model, kind, h["vocab_id"], tok, note, notes)
    if kind == "gguf":
        model = gguf_import(path)
        notes = [f"{path} holds q8_0 tensors: dequantised to fp32 (the fine-tuned model is fp32)"] \
            if any(t[0] == Q8_0_T for t in read_gguf(path)[1].values()) else []
        return Pretrained(model, kind, *own_vocabulary(path), notes)
    if not os.path.exists(os.path.join(path, "config.json")):
        ckpt = os.path.join(path, "ckpt.pt")
        raise ValueError(f"{path} is a folder without config.json, not a Hugging Face model" +
                         (f": pass its checkpoint, {ckpt}" if os.path.isfile(ckpt) else ""))
    model = hf_import(path)
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer.model")):
        return Pretrained(model, kind, None, None, f"{path} has no tokenizer.json or tokenizer.model")
    return Pretrained(model, kind, *own_vocabulary(path))


def same_texts(tok, legacy_path):
    """Whether tok's token texts are those of a llama2.c tokenizer file. That format spells BOS and EOS its
    own way, so tok is written in it (vocab.write_bin) and both are read back by the same reader."""
    with tempfile.TemporaryDirectory() as d:
        V.write_bin(tok.vocab, Path(d) / "legacy.bin", legacy=True)
        return V.read_bin(Path(d) / "legacy.bin").pieces == V.read_bin(legacy_path).pieces


def pick_tokenizer(found, given, path, note):
    """The tokenizer.Tokenizer to train found's model with: given (a path, or "" for the model's own), checked
    against the model: by vocabulary identity; for a model that carries none, against the tokenizer beside
    it (by identity, or token text by token text for a llama2.c file). ValueError in one line when there is
    none, or it is not the model's (another size or vocabulary). A llama2.c tokenizer file has no identity:
    shards are then checked by its sha256, so they must be made with that very file. note(msg) says what
    could and could not be checked."""
    n = found.model.args.vocab_size
    if not given and found.tokenizer is None:
        why = f" ({found.tokenizer_note})" if found.tokenizer_note else ""
        raise ValueError(f"no tokenizer found for {path}{why}: pass --tokenizer=PATH (the model's .model, "
                         "tokenizer.json, HF directory, GGUF or run.c tokenizer file)")
    where, own = given or found.tokenizer, found.tokenizer
    try:
        tok = T.Tokenizer(where)
    except (OSError, ValueError) as e:
        raise ValueError(f"{'--tokenizer=' if given else ''}{e}") from None
    if tok.n_words != n:
        raise ValueError(f"tokenizer {where} has {tok.n_words} tokens, {path} has vocab_size={n}")
    if tok.identity is None:
        note(f"note: {where} is a llama2.c tokenizer file, which carries no vocabulary identity: the shards must be "
             f"made with this very file (pretokenize --tokenizer={where}; checked by its sha256), or pass "
             "--tokenizer=PATH of the .model it came from")
    if found.identity is not None and tok.identity is not None:
        T.check_identity(found.identity, path, tok, note)
    elif not given:
        if tok.identity is not None:
            note(f"note: {path} carries no vocabulary identity: using {own}, found beside it")
    elif own is not None and T.Tokenizer(own).identity is not None and tok.identity is not None:
        T.check_identity(T.Tokenizer(own).identity, own, tok, note)
    elif own is not None and T.Tokenizer(own).identity is None:  # a llama2.c tokenizer beside a llama2.c model
        if not same_texts(tok, own):
            raise ValueError(f"{where} is not the vocabulary of {path}: its token texts differ from those of {own} "
                             "beside it")
        note(f"note: {path} carries no vocabulary identity: checked that the {n} token texts of {where} are "
             f"those of {own} beside it")
    else:
        note(f"note: {path} and {where} cannot be compared by vocabulary identity: only the size ({n} tokens) "
             "was checked")
    return tok

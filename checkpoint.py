"""checkpoint.py: reading train.py's checkpoints, safely: one ValueError line naming the file for
anything that is not a checkpoint of a model that fits its weights.

train.py writes ckpt.pt (fileio.atomic_write) and reads it back here to resume; sample.py and
export.py load models from it with load_checkpoint, and find its vocabulary with checkpoint_tokenizer.
"""
import warnings
from pathlib import Path

import torch

import dataloader
from fileio import printable, regular_file
from model import ModelArgs, Transformer, check_args


def torch_file(path, what, device="cpu"):
    """What a torch.save file holds, tensors and plain containers only (weights_only: a crafted pickle
    cannot run code), torch's warnings about odd pickles silenced: the error, if any, is one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch.load raises many types (pickle, zip, refused globals, ...)
        first = printable(str(e).strip().splitlines()[0], 200) if str(e).strip() else ""
        raise ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {first})") from None


def read_checkpoint(path, device="cpu"):
    """The dict in a train.py checkpoint, or ValueError in one line naming the file.

    weights_only=True: the file is unpickled with tensors and plain containers only, so a crafted
    ckpt.pt cannot run code. Needs "model" (a state dict) and "model_args" (ModelArgs fields).
    """
    regular_file(path, "checkpoint")
    ckpt = torch_file(path, "train.py checkpoint", device)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("model_args"), dict)):
        raise ValueError(f"{path}: not a train.py checkpoint (needs 'model' and 'model_args')")
    return ckpt


def checkpoint_args(ckpt, path):
    """The ModelArgs of a checkpoint read by read_checkpoint (ValueError when they make no model, or
    not the model its weights are: see check_shapes)."""
    try:
        args = ModelArgs(**ckpt["model_args"])
        check_args(args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: model_args do not make a model: {printable(str(e), 300)}") from None
    check_shapes(args, ckpt, path)
    return args


def check_shapes(args, ckpt, path):
    """ValueError unless every weight in the checkpoint has the shape args give it. The model is
    built on the meta device (no memory), so model_args asking for dim=10**9 fail here, in one line,
    instead of allocating terabytes before the weights are looked at."""
    # the meta model costs time per layer: a checkpoint must hold a weight for each tensor first (its
    # 2 + 9 per layer, and the classifier unless tied), so n_layers=65535 beside 20 weights is refused
    # in O(1), not after a minute of building layers (pyfuzz ckpt 920)
    n_tensors = 2 + 9 * args.n_layers + (not args.tie_embeddings)
    if len(ckpt["model"]) < n_tensors:
        raise ValueError(f"{path}: weights do not match its model_args: n_layers={args.n_layers} needs {n_tensors} "
                         f"weights, the checkpoint holds {len(ckpt['model'])}")
    try:
        with torch.device("meta"):
            want = {k: tuple(v.shape) for k, v in Transformer(args).state_dict().items()}
    except RuntimeError as e:
        raise ValueError(f"{path}: model_args make no model that fits in memory ({str(e).splitlines()[0]})") from None
    missing = sorted(set(want) - {k.removeprefix("_orig_mod.") for k in ckpt["model"]})
    if missing:  # before the model is built for real: its size is the model_args', not the file's
        raise ValueError(f"{path}: weights do not match its model_args: {missing[0]} is missing "
                         f"({len(missing)} in all)")
    for k, v in ckpt["model"].items():
        k = k.removeprefix("_orig_mod.")
        shape = tuple(getattr(v, "shape", ()))
        if k in want and shape != want[k]:
            raise ValueError(f"{path}: weights do not match its model_args: {printable(k)} is {shape}, model_args "
                             f"make it {want[k]}")


def load_weights(model, ckpt, path):
    """Copy a checkpoint's weights into model, strictly: a missing, extra or misshapen one is a ValueError."""
    # torch.compile'd models save their weights under "_orig_mod."
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
        raise ValueError(f"{path}: weights do not match its model_args: {printable(detail, 300)}") from None


def load_checkpoint(path, device="cpu"):
    """(model in eval mode on device, the checkpoint dict) of a train.py checkpoint."""
    ckpt = read_checkpoint(path, device)
    model = Transformer(checkpoint_args(ckpt, path))
    load_weights(model, ckpt, path)
    return model.to(device).eval(), ckpt


def checkpoint_tokenizer(path, ckpt):
    """(tokenizer file, note or "") of a train.py checkpoint: the copy of its run's vocabulary that
    train.py keeps in out_dir, beside ckpt.pt, under the name ckpt["tokenizer"] gives. A checkpoint
    written before runs carried their vocabulary is looked up by dataloader.py's rule in the data
    folder its config names, and the note says so. ValueError when neither says where it is."""
    name = ckpt.get("tokenizer")
    if name is not None:
        if not isinstance(name, str) or name != Path(name).name or name in ("", ".", ".."):
            raise ValueError(f"{path}: its tokenizer {name!r} is not a file name beside it")
        return Path(path).parent / name, ""
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    try:
        found = dataloader.tokenizer_path(ckpt["model_args"].get("vocab_size", 0), config.get("vocab_source", "custom"),
                                          config.get("data_dir"))
    except dataloader.DataError as e:
        raise ValueError(f"{path}: holds no vocabulary and names none: {e}") from None
    why = "its run had no tokenizer file" if "tokenizer" in ckpt else "an older checkpoint"
    return found, f"note: {path} holds no vocabulary ({why}): using {found}"

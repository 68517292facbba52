"""Train a Llama on pretokenized TinyStories, in one process or several (DDP via torchrun).

    python train.py --dim=64 --n_layers=5 --n_kv_heads=4      # a stories260K-shaped model
    python train.py config/stories15M.py --batch_size=16       # a preset, with one setting changed
    python train.py --init_from=resume                         # continue out/ckpt.pt exactly
    python train.py config/finetune.py --init_from=stories260K.bin --tokenizer=tok512.model   # fine-tune
    torchrun --standalone --nproc_per_node=4 train.py config/stories42M.py

Needs pretokenized data (tinystories.py): download, train_vocab --vocab_size=N, pretokenize
--vocab_size=N. Every setting below can be changed by a config file or --key=value
(configurator.py); `python train.py --help` lists them.

Fine-tuning (--init_from=PATH: a ckpt.pt, a run.c .bin, a GGUF or a Hugging Face directory) starts
from the file's weights with a fresh optimizer and schedule at iteration 0. The model's shape and
vocabulary are the file's (a setting given that would change them is refused); its tokenizer is
--tokenizer, else the one in or beside the file (pretrained.py), and the shards must be made with it:
by default they are read from data/NAME/, NAME being the one pretokenize --tokenizer=THAT gives.

What a run writes to out_dir: ckpt.pt (model, optimizer, iteration, RNG and data position, written
to a temp file and renamed), metrics.jsonl (one JSON object per log line and per evaluation).
The data order is a pure function of (seed, iteration, micro-batch): micro-batch j of iteration i
is batch i of the data iterator's "rank j of gradient_accumulation_steps". Any split of the
micro-batches over DDP processes therefore trains on exactly the same data, and a resumed run
continues the very same stream. Ctrl-C (or SIGTERM) stops after the current iteration and saves
a checkpoint; a second Ctrl-C stops at once.
"""
import errno
import glob
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from checkpoint import check_shapes, checkpoint_tokenizer, load_weights, read_checkpoint
from configurator import configure_or_exit, load_config_file
import dataloader
from fileio import atomic_write, printable, temp_path
from machine import cpu_reading, others_busy, peak_flops, use_free_cores
from model import ModelArgs, Transformer, check_args, ffn_hidden_dim
from pretrained import load_pretrained, pick_tokenizer
from tokenizer import Tokenizer

try:
    import fcntl  # the out_dir lock (POSIX); without it (Windows) runs are not locked
except ImportError:
    fcntl = None

# -----------------------------------------------------------------------------
# settings (defaults: a run that finishes on a laptop CPU; config/ holds the real recipes)
# I/O
out_dir = "out"  # where ckpt.pt, metrics.jsonl and the run's tokenizer go
eval_interval = 500  # evaluate (and maybe checkpoint) every this many iterations
log_interval = 10  # print a log line every this many iterations
eval_iters = 20  # batches per split in an evaluation
eval_only = False  # evaluate once and exit
always_save_checkpoint = False  # checkpoint at every evaluation, not only when val loss improves
init_from = "scratch"  # "scratch", "resume" (out_dir/ckpt.pt), or a model to fine-tune: ckpt.pt, .bin, .gguf, HF dir
overwrite = False  # init_from=scratch or PATH into an out_dir that holds a ckpt.pt: replace it (else refused)
tokenizer = ""  # init_from=PATH: the model's tokenizer file ("": the one in or beside the model's file)
# wandb logging (needs `pip install wandb`; imported only when enabled)
wandb_log = False  # log to Weights & Biases too
wandb_project = "storyllama"  # its project
wandb_run_name = "run" + datetime.now().strftime("%Y_%m_%d_%H_%M_%S")  # its run name
# data
batch_size = 32  # micro-batch size: sequences per forward/backward
max_seq_len = 256  # context length: tokens per training window
vocab_source = "custom"  # "custom" (data/tok{vocab_size}.model), "llama2" (Meta's 32000) or NAME (data/NAME.json...)
vocab_size = 512  # tokens in the vocabulary (custom: data/tok{vocab_size}.model)
data_dir = None  # where the shards and vocabularies are (None: $STORYLLAMA_DATA or data/)
dataset = "stories"  # "stories" (data/tok{N}/), or "instruct" (data/tok{N}-instruct/: records, loss on their stories)
seed = 1337  # model init, dropout and data order
bos_aligned = False  # start every training window at the start of a story
# model
dim = 288  # model width
n_layers = 6  # transformer blocks
n_heads = 8  # attention heads (head size dim / n_heads)
n_kv_heads = None  # key/value heads, grouped-query attention (None: n_heads, none)
multiple_of = 32  # the feed-forward width is rounded up to a multiple of this
dropout = 0.0  # dropout probability in attention and feed-forward
tie_embeddings = True  # the classifier shares the token embedding's weights
freeze_embeddings = False  # do not train the token embedding (nor the classifier when it is tied to it)
# optimizer: "adamw" (AdamW for every weight) or "muon" (Muon for the matrices inside the blocks,
# AdamW for the embedding, the classifier and the norm gains)
optimizer = "adamw"  # adamw, or muon (Muon for the blocks' matrices, AdamW for the rest)
gradient_accumulation_steps = 1  # micro-batches per iteration, over all processes together
learning_rate = 1e-3  # AdamW's peak learning rate
muon_lr = 0.02  # Muon's peak learning rate
muon_momentum = 0.95  # Muon's momentum
max_iters = 5000  # iterations (optimizer steps) to train for
max_minutes = 0.0  # > 0: also a budget of training time (evaluations and checkpoints not counted)
weight_decay = 1e-1  # decoupled: each step shrinks decayed weights by lr * weight_decay
beta1 = 0.9  # AdamW's first-moment decay
beta2 = 0.95  # AdamW's second-moment decay
grad_clip = 1.0  # clip the gradient norm at this value; 0 disables
# learning rate schedule: linear warm-up over warmup_iters, then "cosine" decay to min_lr, or "wsd"
# (warm-up, stable, decay): the peak until the last decay_frac of the run, then linear to min_lr.
# The run's progress is the larger of iterations (to lr_decay_iters) and time (of max_minutes) spent.
decay_lr = True  # schedule the learning rate (False: the peak throughout)
lr_schedule = "cosine"  # cosine, or wsd (warm-up, stable, decay)
warmup_iters = 100  # iterations of linear warm-up
decay_frac = 0.2  # wsd: the last fraction of the run that decays
lr_decay_iters = None  # the iteration where the decay reaches min_lr (None: max_iters)
min_lr = None  # the floor (None: learning_rate / 10; every group's is the same fraction of its peak)
# system
device = "cuda" if torch.cuda.is_available() else "cpu"  # where to train: cpu, cuda, cuda:1, mps
dtype = "auto"  # float32, bfloat16, float16 (with a GradScaler); auto: bf16/fp16 on CUDA, fp32 elsewhere
compile = False  # torch.compile the model
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items()
               if not k.startswith("_") and isinstance(v, (int, float, bool, str, type(None)))]
defaults = {k: globals()[k] for k in config_keys}
none_types = {"data_dir": str, "n_kv_heads": int, "lr_decay_iters": int, "min_lr": float}
# where a run's machine and mode are set, not its recipe: never taken from a checkpoint
SYSTEM_KEYS = ("out_dir", "init_from", "overwrite", "eval_only", "device", "dtype", "compile", "wandb_log",
               "wandb_run_name")


def die(msg, code=1):
    print(f"train.py: error: {msg}", file=sys.stderr)
    sys.exit(code)


def resumable(ckpt, path):
    """ckpt (read_checkpoint's dict) when it holds what a resumed run reads, else a one-line die naming
    path and what is missing or malformed: the run's settings ("config", each of the type of train.py's
    own setting), its optimizers' state, iteration and best loss, and the optional parts' types."""
    def bad(what):
        die(f"{path}: not a checkpoint train.py can resume: {what}")
    config = ckpt.get("config")
    if not isinstance(config, dict):
        bad("it holds no 'config' (the settings of its run)" if config is None else "its 'config' is not a dict")
    for k, v in config.items():
        if k not in defaults or k in SYSTEM_KEYS:
            continue  # not read
        want = none_types.get(k) if defaults[k] is None else type(defaults[k])
        ok = (v is None and k in none_types) or type(v) is want or (want is float and type(v) is int)
        if not ok:
            bad(f"config {printable(k)}={printable(repr(v))} is not a {want.__name__}")
    opt = ckpt.get("optimizer")
    if not (isinstance(opt, dict) or isinstance(opt, list) and opt and all(isinstance(o, dict) for o in opt)):
        bad("it holds no optimizer state ('optimizer': a dict or a list of them)")
    if type(ckpt.get("iter_num")) is not int or ckpt["iter_num"] < 0:
        bad("its 'iter_num' is not an iteration number")
    if type(ckpt.get("best_val_loss")) not in (int, float):
        bad("its 'best_val_loss' is not a number")
    for key, kinds in (("train_seconds", (int, float)), ("scaler", dict), ("data_state", dict), ("rng", list),
                       ("init_from", str)):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], kinds):
            bad(f"its {key!r} is of type {type(ckpt[key]).__name__}")
    return ckpt


def given_settings(argv):
    """The settings the command line sets itself, by --key=value or in a config file (not by default)."""
    keys = set()
    for arg in argv:
        keys.update([arg[2:].partition("=")[0]] if arg.startswith("--") else load_config_file(arg))
    return keys


def start_fine_tune(path, given, notes):
    """The Pretrained model of init_from=PATH and the Tokenizer to train it with; config takes the model's
    shape and vocabulary. A setting given that would change them is a one-line error naming it."""
    if not os.path.exists(path):
        die(f"--init_from={path}: no such file or directory (expected 'scratch', 'resume' or a model to fine-tune: "
            "a ckpt.pt, a .bin, a .gguf or a Hugging Face directory)", 2)
    try:
        found = load_pretrained(path)
    except (ValueError, OSError) as e:
        die(str(e))
    a, hidden = found.model.args, ffn_hidden_dim(found.model.args)
    shape = dict(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads or a.n_heads,
                 vocab_size=a.vocab_size, tie_embeddings=a.tie_embeddings)
    for k, v in shape.items():
        mine = config[k] if k != "n_kv_heads" else config[k] or config["n_heads"]
        if k in given and mine != v:
            die(f"--{k}={config[k]} but {path} has {k}={v}: a fine-tune keeps the model's shape", 2)
    if "multiple_of" in given and ffn_hidden_dim(ModelArgs(dim=a.dim, multiple_of=config["multiple_of"])) != hidden:
        die(f"--multiple_of={config['multiple_of']} makes another hidden_dim than {path}'s {hidden}: a fine-tune "
            "keeps the model's shape", 2)
    try:
        tok = pick_tokenizer(found, config["tokenizer"], path, notes.append)
    except ValueError as e:
        die(str(e))
    if "max_seq_len" not in given:
        config["max_seq_len"] = a.max_seq_len
    elif config["max_seq_len"] > a.max_seq_len:
        notes.append(f"note: --max_seq_len={config['max_seq_len']} is longer than {path}'s context of "
                     f"{a.max_seq_len}: its positions past {a.max_seq_len} start untrained")
    config.update(shape, multiple_of=a.multiple_of)
    if "vocab_source" not in given:  # the shards pretokenize --tokenizer=THAT writes
        config["vocab_source"] = dataloader.vocab_name_of(tok.path)
    notes += [f"note: {n}" for n in found.notes]
    return found, tok


config = configure_or_exit(defaults, prog="train.py", none_types=none_types, script=__file__)
ckpt, ckpt_path = None, os.path.join(config["out_dir"], "ckpt.pt")
if config["init_from"] == "resume":
    # a resumed run keeps the checkpoint's recipe; arguments given now still override it
    if not os.path.isfile(ckpt_path):
        die(f"--init_from=resume: no checkpoint at {ckpt_path}")
    try:
        ckpt = resumable(read_checkpoint(ckpt_path), ckpt_path)
    except ValueError as e:
        die(str(e))
    recipe = {k: v for k, v in ckpt["config"].items() if k in defaults and k not in SYSTEM_KEYS}
    config = configure_or_exit({**defaults, **recipe}, prog="train.py", none_types=none_types, script=__file__)
    # what this run does differently from the checkpoint's (printed once the checkpoint has loaded)
    changed = [f"{k} {ckpt['config'][k]!r} -> {v!r}" for k, v in config.items()
               if k in ckpt["config"] and ckpt["config"][k] != v and k not in ("init_from", "wandb_run_name")]
given = given_settings(sys.argv[1:])
# a fine-tune: found is the model it starts from (init_from=PATH), run_tok its tokenizer; started_from is
# that file's path, which every checkpoint of the run records (a resumed fine-tune: its checkpoint's)
found, run_tok, started_from = None, None, ckpt and ckpt.get("init_from")
if config["init_from"] not in ("scratch", "resume"):
    start_notes = []
    found, run_tok = start_fine_tune(config["init_from"], given, start_notes)
    started_from = config["init_from"]
    for msg in start_notes if os.environ.get("RANK", "0") == "0" else ():  # torchrun's rank 0 (or no torchrun)
        print(msg)  # now: they say what a shard check further down may refuse
elif "tokenizer" in given:
    die("--tokenizer is for fine-tuning (--init_from=PATH); a run from scratch uses its vocab_source's, a "
        "resumed one its checkpoint's", 2)
globals().update(config)
lr_decay_iters = max_iters if lr_decay_iters is None else lr_decay_iters
min_lr = learning_rate / 10 if min_lr is None else min_lr

for name, lo in (("batch_size", 1), ("max_seq_len", 1), ("gradient_accumulation_steps", 1), ("max_iters", 0),
                 ("eval_interval", 1), ("log_interval", 1), ("eval_iters", 1), ("warmup_iters", 0)):
    if config[name] < lo:
        die(f"--{name}={config[name]}: must be >= {lo}", 2)
try:
    dataloader.check_vocab(vocab_size, vocab_source)
except dataloader.DataError as e:
    die(f"--{e}", 2)
if dtype not in ("auto", "float32", "bfloat16", "float16"):
    die(f"--dtype={dtype!r}: expected float32, bfloat16, float16 or auto", 2)
if optimizer not in ("adamw", "muon"):
    die(f"--optimizer={optimizer!r}: expected 'adamw' or 'muon'", 2)
if lr_schedule not in ("cosine", "wsd"):
    die(f"--lr_schedule={lr_schedule!r}: expected 'cosine' or 'wsd'", 2)
if not 0.0 < decay_frac <= 1.0:
    die(f"--decay_frac={decay_frac}: must be in (0, 1]", 2)
if max_minutes < 0.0:
    die(f"--max_minutes={max_minutes}: must be >= 0 (0: no time budget)", 2)
try:
    device_kind = torch.device(device).type
except RuntimeError as e:
    die(f"--device={device!r}: {str(e).splitlines()[0]} (expected cpu, cuda, cuda:N or mps)", 2)
if device_kind == "cuda" and not torch.cuda.is_available():
    why = "is a CPU-only build" if torch.version.cuda is None else "finds no CUDA GPU"
    die(f"--device={device}: this torch ({torch.__version__}) {why}; use --device=cpu", 2)
if device_kind == "mps" and not torch.backends.mps.is_available():
    die(f"--device={device}: this machine or torch build has no MPS; use --device=cpu", 2)

# -----------------------------------------------------------------------------
# processes, devices, precision
ddp = "RANK" in os.environ  # launched by torchrun
rank, local_rank, world_size = 0, 0, 1
if ddp:
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if gradient_accumulation_steps % world_size:
        die(f"--gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of the "
            f"{world_size} processes: each process runs an equal share of the micro-batches", 2)
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
master = rank == 0  # logs, evaluates and writes files
micro_steps = gradient_accumulation_steps // world_size  # micro-batches of this process per iteration
device_type = "cuda" if device.startswith("cuda") else ("mps" if device.startswith("mps") else "cpu")
if dtype == "auto":
    dtype = "float32" if device_type != "cuda" else ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
amp = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")  # fp16 needs loss scaling
torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (peak_flops assumes it)
torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(seed + rank)  # each rank its own dropout stream; DDP copies rank 0's weights
# on a CPU, the cores other processes leave free (checked again at every log line); OMP_NUM_THREADS wins
threads_reading = use_free_cores() if device_type == "cpu" else None
run_reading = cpu_reading()  # the machine at the start: at the end, what other processes took meanwhile
tokens_per_iter = gradient_accumulation_steps * batch_size * max_seq_len

# -----------------------------------------------------------------------------
# data: each split's shards are checked and indexed once; the evaluation batches are fixed
try:
    # The run's vocabulary travels with it: out_dir keeps a copy (written below) that every checkpoint
    # names, so export.py, sample.py and a resumed run need nothing from the data folder. A run starts
    # from the data folder's file; a resumed one keeps its own (an older checkpoint: the data folder's);
    # a fine-tune takes the model's (start_fine_tune).
    vocab_model = dataloader.tokenizer_path(vocab_size, vocab_source, data_dir) if run_tok is None else run_tok.path
    if ckpt is not None and ckpt.get("tokenizer") is not None:
        vocab_model = checkpoint_tokenizer(ckpt_path, ckpt)[0]
        if not vocab_model.is_file():
            raise ValueError(f"{vocab_model}: the run's vocabulary, which {ckpt_path} names, is missing")
    shards = {split: dataloader.split_shards(split, vocab_size, vocab_source, data_dir, vocab_model, dataset)
              for split in ("train", "val")}
    bytes_per_token = dataloader.bytes_per_token(shards["val"])
    train_batches = dataloader.Batches(shards["train"], batch_size, max_seq_len, seed, bos_aligned)
    # the vocabulary's identity goes into every checkpoint: sample.py, export.py and run.c check tokenizers by it
    run_tok = run_tok or (Tokenizer(vocab_model) if vocab_model.exists() else None)
    vocab_identity = run_tok.identity.hex() if run_tok is not None and run_tok.identity else None
    eval_batches = {split: dataloader.Batches(shards[split], batch_size, max_seq_len, seed + 1, bos_aligned)
                    for split in ("train", "val")}
except ValueError as e:  # dataloader.DataError, or an unreadable tokenizer model
    die(str(e))


def recipe_of(cfg):
    """The settings that make a run what it is (not where or how it runs), and the model a fine-tune
    started from."""
    recipe = {k: v for k, v in cfg.items() if k not in SYSTEM_KEYS}
    return recipe | {"init_from": started_from} if started_from else recipe


def finished_run():
    """The recipe of the run that finished in out_dir (metrics.jsonl's last record), or None."""
    try:
        with open(os.path.join(out_dir, "metrics.jsonl"), "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - (1 << 16), 0))
            last = json.loads(f.read().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return None
    return last.get("recipe") if isinstance(last, dict) and last.get("event") == "finished" else None


def keep_vocabulary():
    """Copy the run's tokenizer file into out_dir (unless it is there already); its name there, or
    None when the data folder has none (shards made elsewhere: the checkpoint then names none). A
    GGUF's or a Hugging Face tokenizer (whose tokenizer.json needs the configs beside it) is kept as
    its vocabulary in run.c's tokenizer file, tok{N}.bin, where run.c looks beside an exported model."""
    if run_tok is None:
        print(f"note: no tokenizer at {vocab_model}: the checkpoints will not carry their vocabulary")
        return None
    if run_tok.kind not in ("sentencepiece", "bin"):
        return run_tok.export(Path(out_dir) / f"tok{run_tok.n_words}.bin").name
    dest, data = Path(out_dir) / vocab_model.name, vocab_model.read_bytes()
    if not (dest.is_file() and dest.read_bytes() == data):
        atomic_write(dest, data)
    return vocab_model.name


def lock_out_dir():
    """Hold out_dir/train.lock while this process lives: a second train.py on the same out_dir is
    refused instead of sharing its checkpoint and metrics. flock is released by the kernel when the
    process dies, even by SIGKILL, so a crashed run leaves no stale lock."""
    f = open(os.path.join(out_dir, "train.lock"), "a+")
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            die(f"--out_dir={out_dir} is in use by another train.py (pid {f.read().strip() or '?'}); "
                "wait for it, or pick another --out_dir")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


if master:
    os.makedirs(out_dir, exist_ok=True)
    out_dir_lock = lock_out_dir()
    for stale in glob.glob(glob.escape(ckpt_path) + ".tmp*"):  # a write cut short (SIGKILL): ours to clear now
        os.remove(stale)
    if init_from != "resume" and os.path.exists(ckpt_path) and not overwrite:
        if finished_run() == recipe_of(config):  # the same command again, like the data steps: nothing to do
            print(f"nothing to do: {out_dir} holds this run, finished (python train.py --init_from=resume "
                  "--max_iters=N or --max_minutes=M trains it on; --overwrite=True trains it anew)")
            sys.exit(0)
        die(f"{ckpt_path} holds the checkpoint of an earlier run: continue it with --init_from=resume, or pass "
            f"--overwrite=True to train {'from scratch' if found is None else 'from ' + init_from} and replace it", 2)
    vocab_name = keep_vocabulary()
    print(f"tokens per iteration: {tokens_per_iter:,} = {gradient_accumulation_steps} micro-batches "
          f"({world_size} processes x {micro_steps}) x {batch_size} x {max_seq_len}; device {device}, {dtype}")

# -----------------------------------------------------------------------------
# model, optimizer, checkpoint
model_args = dict(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab_size,
                  multiple_of=multiple_of, max_seq_len=max_seq_len, dropout=dropout, tie_embeddings=tie_embeddings)
iter_num, best_val_loss = 0, float("inf")
if ckpt is not None:
    model_args = {**ckpt["model_args"], **model_args}  # fields train.py has no setting for stay as saved
    iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
if found is not None:  # the file's model (its hidden_dim, norm_eps, rope_theta ...) with this run's dropout
    model_args = {**asdict(found.model.args), "hidden_dim": ffn_hidden_dim(found.model.args), "dropout": dropout}
# training on shorter windows than the model had keeps its context (a fine-tune's, a resumed run's)
had = found.model.args.max_seq_len if found is not None else ckpt["model_args"].get("max_seq_len", 0) if ckpt else 0
model_args["max_seq_len"] = max(max_seq_len, had)
try:
    margs = ModelArgs(**model_args)
    check_args(margs)
except (TypeError, ValueError) as e:
    die(f"bad model shape: {e}", 2)
if ckpt is not None:
    try:
        check_shapes(margs, ckpt, ckpt_path)  # before anything is allocated
    except ValueError as e:
        die(f"{e} (the model now: {asdict(margs)})")
raw_model = Transformer(margs)
if ckpt is not None:
    try:
        load_weights(raw_model, ckpt, ckpt_path)
    except ValueError as e:
        die(f"{e} (the model now: {asdict(margs)})")
if found is not None:
    raw_model.load_state_dict(found.model.state_dict())
    found.model = None  # free the memory
if freeze_embeddings:  # its gradient is never computed and the optimizers never see it
    raw_model.tok_embeddings.weight.requires_grad_(False)
    if master:
        print("freeze_embeddings: the token embedding is not trained" + (
            ", nor the classifier, which shares its weights (tie_embeddings)" if margs.tie_embeddings else
            "; the classifier (not tied to it) is"))
raw_model.to(device)
optimizers = raw_model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, optimizer,
                                            muon_lr, muon_momentum)
peak_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]  # the schedule scales these
train_seconds = 0.0  # training time so far (the budget's clock), carried over by checkpoints
if ckpt is not None:
    saved = ckpt["optimizer"] if isinstance(ckpt["optimizer"], list) else [ckpt["optimizer"]]
    if len(saved) != len(optimizers):
        die(f"{ckpt_path} holds the state of {len(saved)} optimizers, --optimizer={optimizer} has "
            f"{len(optimizers)}: resume with the checkpoint's optimizer", 2)
    try:  # the states' insides (a malformed one raises any of these from torch)
        for opt, state in zip(optimizers, saved):
            opt.load_state_dict(state)
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        die(f"{ckpt_path}: its optimizer state does not fit this run's optimizers ({type(e).__name__}: "
            f"{printable(str(e).strip().splitlines()[0] if str(e).strip() else '')})")
    train_seconds = ckpt.get("train_seconds") or 0.0
model = torch.compile(raw_model) if compile else raw_model
eval_model = model  # evaluation runs on the master only: never through DDP and its collectives
if ddp:
    # the rope tables are constants: no need to broadcast buffers before every forward
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None, broadcast_buffers=False)
if master:
    n_params = sum(p.numel() for p in raw_model.parameters())
    print(f"model: {n_params:,} parameters, {asdict(margs)}")
    if ckpt is not None:
        print(f"resumed from iteration {iter_num} of {ckpt_path}; "
              + (f"settings changed: {', '.join(changed)}" if changed else "the same settings"))
    if found is not None:
        print(f"fine-tuning {init_from} ({found.kind}) with the tokenizer {run_tok.path}: iteration 0, a fresh "
              "optimizer and learning rate schedule")
saved_iter = iter_num if ckpt is not None else None  # the iteration the checkpoint on disk holds


def rng_state():
    state = {"cpu": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if device_type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def data_state():
    return {"iter": iter_num, "micro_batches": gradient_accumulation_steps, "batch_size": batch_size,
            "max_seq_len": max_seq_len, "seed": seed, "bos_aligned": bos_aligned}


def diverged(at):
    """Stop: NaN/inf weights, loss or gradients; the checkpoint on disk is left as it is."""
    kept = f"{ckpt_path} keeps iteration {saved_iter}" if saved_iter is not None else "no checkpoint was saved"
    die(f"the run diverged: {at}; stopped without saving ({kept}). Lower --learning_rate or --grad_clip, "
        "or raise --warmup_iters")


def write_checkpoint(obj):
    """torch.save ckpt.pt atomically (a temp file of this process, fsync, rename). A failed write (disk
    full) removes the temp file and keeps the old ckpt.pt, in one line."""
    try:
        atomic_write(ckpt_path, lambda f: torch.save(obj, f))
    except (OSError, RuntimeError) as e:
        # torch reports a failed write as RuntimeError("unexpected pos ..."): the OSError is its context
        cause = next((c for c in (e, e.__context__, e.__cause__) if isinstance(c, OSError)), None)
        full = cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        why = "the disk is full" if full else (cause.strerror if cause is not None and cause.strerror
                                                 else str(e).strip().splitlines()[0])
        old = f"{ckpt_path} keeps iteration {saved_iter}" if saved_iter is not None else "nothing was saved"
        die(f"cannot write checkpoint {temp_path(ckpt_path)}: {why}; removed it ({old})")


def save_checkpoint():
    """Every rank calls this (the RNG states are gathered); the master writes ckpt.pt atomically.
    Weights holding NaN/inf are never written: the last good checkpoint stays."""
    global saved_iter
    if not bool(torch.stack([torch.isfinite(p).all() for p in raw_model.parameters()]).all()):
        diverged(f"the weights hold NaN or inf at iteration {iter_num}")
    rngs = [None] * world_size
    if ddp:
        dist.all_gather_object(rngs, rng_state())
    else:
        rngs[0] = rng_state()
    if not master:
        return
    ckpt = {"model": raw_model.state_dict(), "optimizer": [opt.state_dict() for opt in optimizers],
            "model_args": asdict(margs), "iter_num": iter_num, "train_seconds": train_seconds,
            "best_val_loss": best_val_loss, "config": config, "rng": rngs,
            "data_state": data_state(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "vocab_identity": vocab_identity, "tokenizer": vocab_name, "init_from": started_from}
    write_checkpoint(ckpt)
    saved_iter = iter_num


def everyone(flag):
    """True on every rank when flag is True on any rank (the ranks must agree on saving and stopping)."""
    if not ddp:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def estimate_loss():
    """Mean loss over eval_iters fixed batches of each split (the same batches at every evaluation),
    with a progress bar; None when Ctrl-C asks to stop meanwhile (an evaluation can take minutes)."""
    out = {}
    eval_model.eval()
    with tqdm(total=2 * eval_iters, desc="evaluating", unit="batch", leave=False, disable=None,
              dynamic_ncols=True) as eval_bar:
        for split in ("train", "val"):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                if stop_requested:
                    eval_model.train()
                    return None
                x, y = (t.to(device) for t in eval_batches[split][k])
                with amp:
                    _, loss = eval_model(x, y)
                losses[k] = loss.item()
                eval_bar.update(1)
            out[split] = losses.mean().item()
    eval_model.train()
    return out


def eta(seconds):
    """Time left as h:mm:ss, for log lines that go to files where the tqdm bar is hidden."""
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


budget = 60.0 * max_minutes  # seconds of training; 0: none


def progress(it, seconds):
    """How far the run is, from 0 (end of warm-up) to 1 (where the learning rate reaches its floor):
    iterations towards lr_decay_iters or training time towards max_minutes, whichever is further."""
    p = (it - warmup_iters) / max(lr_decay_iters - warmup_iters, 1)
    if budget:
        p = max(p, seconds / budget)
    return min(max(p, 0.0), 1.0)


def lr_factor(it, seconds):
    """The learning rate of iteration it as a fraction of the peak (every group's own peak)."""
    if not decay_lr:
        return 1.0
    if it < warmup_iters:
        return (it + 1) / (warmup_iters + 1)
    floor, p = (min_lr / learning_rate if learning_rate > 0 else 0.0), progress(it, seconds)
    if lr_schedule == "cosine":
        return floor + 0.5 * (1.0 + math.cos(math.pi * p)) * (1.0 - floor)
    return 1.0 - (1.0 - floor) * max(p - (1.0 - decay_frac), 0.0) / decay_frac  # wsd


# -----------------------------------------------------------------------------
# Ctrl-C: finish the iteration, save, exit
stop_requested = False


def request_stop(signum, frame):
    global stop_requested
    stop_requested = True
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
    if master:
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this iteration (or evaluation batch) and "
                   f"saving {ckpt_path}")


def stop():
    """After Ctrl-C/SIGTERM (every rank calls it): save the last completed iteration, if this run
    trained one, and exit with 130."""
    trained = iter_num > (resumed_at or 0)
    if trained:
        save_checkpoint()
    if master:
        tqdm.write(f"interrupted at iteration {iter_num}: " + (f"saved {ckpt_path}; continue with --init_from=resume"
                                                               if trained else "nothing trained yet, nothing saved"))
    bar.close()
    if ddp:
        dist.destroy_process_group()
    sys.exit(130)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)

# -----------------------------------------------------------------------------
# training loop
if ckpt is not None:
    ds = ckpt.get("data_state") or {}
    if master and any(ds.get(k) != v for k, v in data_state().items() if k != "iter"):
        print(f"note: the data layout changed since the checkpoint ({ds}); the data order will not "
              "continue the old run's exactly")
    rngs = ckpt.get("rng") or []
    if len(rngs) == world_size:
        try:
            set_rng_state(rngs[rank])
        except (TypeError, KeyError, RuntimeError, ValueError) as e:
            die(f"{ckpt_path}: its RNG state is malformed ({type(e).__name__})")
    elif master:
        print(f"note: the checkpoint holds RNG states for {len(rngs)} processes, this run has {world_size}")
    ckpt = None  # free the memory
train_data = [dataloader.stream(train_batches, device, rank * micro_steps + m, gradient_accumulation_steps, iter_num)
              for m in range(micro_steps)]
peak = peak_flops(device, ptdtype) if master else 1.0
# a run from scratch starts its own metrics (an earlier run's ckpt.pt is refused above unless --overwrite)
metrics = open(os.path.join(out_dir, "metrics.jsonl"), "a" if init_from == "resume" else "w") if master else None
wandb = None
if wandb_log and master:
    try:
        import wandb
    except ImportError:
        die("--wandb_log=True needs the wandb package (pip install wandb)")
    wandb.init(project=wandb_project, name=wandb_run_name, config=config)


def record(entry):
    metrics.write(json.dumps(entry) + "\n")
    metrics.flush()
    if wandb is not None:
        wandb.log(entry, step=entry["iter"])


def evaluate_and_save(lr):
    """Every rank calls this: the master evaluates and records; all save a checkpoint when the val loss
    improved (or always_save_checkpoint), unless this run only evaluates."""
    global best_val_loss
    improved, losses = False, None
    if master:
        losses = estimate_loss()
    if everyone(stop_requested):  # Ctrl-C during the evaluation: its numbers would be partial
        stop()
    if master:
        bpb = losses["val"] / math.log(2) / bytes_per_token
        tqdm.write(f"iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                   f"val {bpb:.4f} bits/byte")
        record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "train_s": train_seconds,
                "train_loss": losses["train"], "val_loss": losses["val"], "val_bpb": bpb, "lr": lr})
        # the weights of iteration 0 are not the run's to keep (a fine-tune's are its file's): the first
        # evaluation after training always saves, however it compares with them
        if iter_num > 0:
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
    if everyone((improved or always_save_checkpoint) and iter_num > 0 and not eval_only):
        if master:
            tqdm.write(f"saving checkpoint to {ckpt_path}")
        save_checkpoint()


def train_step():
    """Forward, backward, update: micro_steps micro-batches, gradients averaged over all of them. Adds the
    iteration's loss to loss_acc; returns (on the device: no sync) whether loss_acc or the gradient norm
    is NaN or inf."""
    for m in range(micro_steps):
        x, y = next(train_data[m])
        # DDP: only the last micro-batch's backward all-reduces the gradients
        sync = model.no_sync() if ddp and m < micro_steps - 1 else nullcontext()
        with sync:
            with amp:
                _, loss = model(x, y)
                loss = loss / micro_steps
            scaler.scale(loss).backward()
        loss_acc.add_(loss.detach())
    bad = ~torch.isfinite(loss_acc)  # the sum since the last log line: NaN or inf stays so
    if grad_clip > 0.0:
        for opt in optimizers:
            scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        bad |= ~torch.isfinite(grad_norm) & (not scaler.is_enabled())
    for opt in optimizers:
        scaler.step(opt)
    scaler.update()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return bad


if master and init_from == "resume":
    record({"iter": iter_num, "event": "resume"})
resumed_at = iter_num if init_from == "resume" else None
# the bar shows on a terminal only (disable=None): in log files the log lines say it all. With a time
# budget it counts seconds of training, so that its ETA is the budget's.
if budget:
    bar = tqdm(total=round(budget), initial=min(round(train_seconds), round(budget)), unit="s",
               disable=None if master else True, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]")
else:
    bar = tqdm(total=max_iters, initial=iter_num, disable=None if master else True, unit="it", dynamic_ncols=True)
# since the last log line: training loss summed over iterations (on device: no sync per step), and
# the iterations timed since t_log (an evaluation restarts the clock: it is not training speed)
loss_acc, loss_iters = torch.zeros((), device=device), 0
t_log, timed_iters = time.perf_counter(), 0
# the first iteration whose loss or gradient norm was not finite, -1 if none: kept on the device (no
# sync per step) and looked at with each log line; fp16's GradScaler skips inf gradients by design
first_bad = torch.full((), -1, device=device)
while True:
    factor = lr_factor(iter_num, train_seconds)
    for opt, peaks in zip(optimizers, peak_lrs):
        for group, group_peak in zip(opt.param_groups, peaks):
            group["lr"] = factor * group_peak
    lr = factor * learning_rate
    out_of_time = budget > 0 and train_seconds >= budget

    if eval_only or iter_num == max_iters or out_of_time or (iter_num % eval_interval == 0 and iter_num != resumed_at):
        evaluate_and_save(lr)
        t_log, timed_iters = time.perf_counter(), 0
        bar.unpause()  # the bar's rate and ETA count training only
    if out_of_time and master:
        tqdm.write(f"time budget spent: {iter_num} iterations ({iter_num * tokens_per_iter:,} tokens) in "
                   f"{train_seconds / 60:.2f} minutes of training")
    if eval_only or iter_num >= max_iters or out_of_time:
        break

    t_iter = time.perf_counter()
    first_bad = torch.where(train_step() & (first_bad < 0), iter_num, first_bad)
    iter_num += 1
    loss_iters += 1
    timed_iters += 1
    dt_iter = time.perf_counter() - t_iter
    if budget and ddp:  # every rank follows rank 0's clock: the same learning rates, the same last iteration
        t = torch.tensor([dt_iter], dtype=torch.float64, device=device)
        dist.broadcast(t, 0)
        dt_iter = t.item()
    train_seconds += dt_iter
    bar.update(min(dt_iter, max(budget - bar.n, 0)) if budget else 1)

    if iter_num % log_interval == 0 or iter_num == max_iters:
        if everyone(int(first_bad) >= 0):
            diverged(f"the loss or gradient norm was NaN or inf at iteration {int(first_bad)}" if int(first_bad) >= 0
                     else "another process saw a NaN or inf loss")
        if device_type == "cpu":
            threads_reading = use_free_cores(threads_reading)
        if ddp:
            dist.all_reduce(loss_acc, op=dist.ReduceOp.SUM)
            loss_acc /= world_size
        lossf = loss_acc.item() / loss_iters
        dt = (time.perf_counter() - t_log) / timed_iters
        tok_s = tokens_per_iter / dt
        mfu = raw_model.estimate_mfu(tok_s / world_size, peak)
        if master:
            left = budget - train_seconds if budget else (max_iters - iter_num) * dt
            tqdm.write(f"iter {iter_num} | loss {lossf:.4f} | lr {lr:.3e} | {dt * 1000:.1f} ms/iter | "
                       f"{tok_s:,.0f} tok/s | mfu {mfu * 100:.1f}% | eta {eta(left)}")
            bar.set_postfix(loss=f"{lossf:.4f}", tok_s=f"{tok_s:,.0f}")
            record({"iter": iter_num, "loss": lossf, "lr": lr, "ms_per_iter": dt * 1000, "tok_per_s": tok_s,
                    "mfu": mfu, "train_s": train_seconds})
        loss_acc, loss_iters = torch.zeros((), device=device), 0
        t_log, timed_iters = time.perf_counter(), 0

    # DDP: the ranks agree at log iterations only, to spare a host sync per iteration on GPUs
    if (not ddp or iter_num % log_interval == 0) and everyone(stop_requested):
        stop()

bar.close()
others, _ = others_busy(run_reading) if master and not ddp and device_type == "cpu" else (None, None)
if others is not None and others >= 0.25:  # a time budget buys fewer iterations on a busy machine: say why
    print(f"note: other processes kept {others:.1f} of this machine's {os.cpu_count()} cores busy during the run, "
          "so it trained slower than on a quiet machine" + (" and the time budget bought fewer iterations" if budget
                                                             else ""))
if metrics is not None:
    if not eval_only:  # what a repeat of this command finds: nothing left to do
        metrics.write(json.dumps({"iter": iter_num, "event": "finished", "recipe": recipe_of(config)}) + "\n")
    metrics.close()
if ddp:
    dist.destroy_process_group()

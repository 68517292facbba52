# quickstart: the recipe with the best held-out bits per byte after 10 minutes of training on a 2-core
# CPU (docs/training.md, "The quickstart preset"; bench/bench_quality.py measures it against llama2.c's
# stories260K recipe).
# The stories260K layers with 2 heads of 32 instead of 8 of 8 (attention costs per head, so a step is
# much faster at the same weights), a 2048-token vocabulary (1.6x the bytes per token of 512), Muon for
# the block matrices, and a WSD schedule that runs on the time budget: the learning rate reaches 0
# when the 10 minutes of training are spent, on any machine. Evaluations are not counted.
# Data: python tinystories.py download --dataset=v2 --max_mb=100, then train_vocab and pretokenize with
# --dataset=v2 --vocab_size=2048 (the README's first command), or --input FILES for your own stories
_parameters = 398_016
out_dir = "out"
vocab_source = "custom"
vocab_size = 2048
dim = 64
n_layers = 5
n_heads = 2
n_kv_heads = 2
multiple_of = 32
max_seq_len = 256
tie_embeddings = True
dropout = 0.0
batch_size = 16
gradient_accumulation_steps = 1
optimizer = "muon"
learning_rate = 4e-3
muon_lr = 0.03
weight_decay = 0.01
beta2 = 0.99
lr_schedule = "wsd"
decay_frac = 0.4
warmup_iters = 30
min_lr = 0.0
max_minutes = 10.0
max_iters = 1_000_000_000  # the time budget ends the run
eval_interval = 500
eval_iters = 16

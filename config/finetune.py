# finetune: fine-tune a small trained model on your own stories, on a 2-core CPU, in minutes
#     python train.py config/finetune.py --init_from=MODEL [--tokenizer=TOKENIZER]
# The model's shape and vocabulary are its file's (dim, layers, heads, vocab_size: not set here); the data
# are pretokenized with its tokenizer (python tinystories.py pretokenize --tokenizer=TOKENIZER --input FILES).
# A fresh AdamW at a lower peak than training from scratch, a short warm-up, cosine to a tenth, and a time
# budget the schedule runs on. Values: bench/bench_finetune.py (stories260K on TinyStoriesV2), dev/LOG.md.
out_dir = "out-finetune"
batch_size = 16
max_seq_len = 256
dropout = 0.0
optimizer = "adamw"
learning_rate = 1e-3
weight_decay = 0.01
beta2 = 0.99
warmup_iters = 20
lr_schedule = "cosine"
max_minutes = 3.0
max_iters = 1_000_000_000  # the time budget ends the run
eval_interval = 100
eval_iters = 16

# finetune: fine-tune a small trained model on your own stories, on a 2-core CPU, in minutes
#     python tinystories.py pretokenize --tokenizer=TOKENIZER --data_dir=mine --input FILES
#     python train.py config/finetune.py --init_from=MODEL --data_dir=mine [--tokenizer=TOKENIZER]
# The model's shape and vocabulary are its file's (dim, layers, heads, vocab_size are not set here); the data
# are pretokenized with its tokenizer. A fresh AdamW at a third of stories260K's training peak, a short
# warm-up, cosine to a tenth, and a time budget the schedule runs on. bench/bench_finetune.py chose the
# values (stories260K on TinyStoriesV2: 3e-4 beat 1e-4, 1e-3 and 3e-3; 512-token windows within 0.5% of 256;
# past ~400 iterations little gain on 600K tokens): dev/LOG.md, docs/training.md "Fine-tuning".
out_dir = "out-finetune"
batch_size = 16
max_seq_len = 256
dropout = 0.0
optimizer = "adamw"
learning_rate = 3e-4
weight_decay = 0.01
beta2 = 0.99
warmup_iters = 20
lr_schedule = "cosine"
max_minutes = 3.0
max_iters = 1_000_000_000  # the time budget ends the run
eval_interval = 100
eval_iters = 16

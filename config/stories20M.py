# stories20M: GPT-like, dim 256, 6 layers, 4 heads (head size 64), GPT-2's 50257-token vocabulary with a
# tied classifier (as GPT-2 ties it), a short 128-token context.
# Parameters: 17,686,016 (FFN hidden 704; 12,865,792 of them the embedding).
# Data: python tinystories.py download_tokenizer gpt2; python tinystories.py pretokenize --vocab_source=gpt2
_parameters = 17_686_016
out_dir = "out20M"
vocab_source = "gpt2"
vocab_size = 50257
dim = 256
n_layers = 6
n_heads = 4
n_kv_heads = None
multiple_of = 32
max_seq_len = 128
tie_embeddings = True
dropout = 0.0
batch_size = 256
gradient_accumulation_steps = 4
learning_rate = 5e-4
weight_decay = 0.1
beta2 = 0.95
max_iters = 100_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100
compile = True

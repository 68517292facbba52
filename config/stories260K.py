# stories260K: llama2.c's smallest TinyStories model and its exact recipe (llama2.c doc/stories260K.md):
# dim 64, 5 layers, 8 query heads sharing 4 kv heads, a custom 512-token vocabulary, 512-token context.
# Parameters: 260,032 (tied classifier; FFN hidden 172 from multiple_of 4).
# Data: python tinystories.py train_vocab --vocab_size=512; python tinystories.py pretokenize --vocab_size=512
_parameters = 260_032
out_dir = "out260K"
vocab_source = "custom"
vocab_size = 512
dim = 64
n_layers = 5
n_heads = 8
n_kv_heads = 4
multiple_of = 4
max_seq_len = 512
tie_embeddings = True
dropout = 0.05
batch_size = 128
gradient_accumulation_steps = 1
learning_rate = 1e-3
weight_decay = 0.01
beta2 = 0.99
max_iters = 100_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100
compile = True

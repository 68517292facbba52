# stories15M: llama2.c's "OG" TinyStories model: dim 288, 6 layers, 6 heads, the Llama 2 vocabulary
# (32000 tokens), 256-token context, with llama2.c train.py's default recipe (131,072 tokens/iter).
# Parameters: 15,191,712 (tied classifier; FFN hidden 768).
# Data: python tinystories.py pretokenize --vocab_source=llama2 (with data/tokenizer.model)
_parameters = 15_191_712
out_dir = "out15M"
vocab_source = "llama2"
vocab_size = 32000
dim = 288
n_layers = 6
n_heads = 6
n_kv_heads = None
multiple_of = 32
max_seq_len = 256
tie_embeddings = True
dropout = 0.0
batch_size = 128
gradient_accumulation_steps = 4
learning_rate = 5e-4
weight_decay = 0.1
beta2 = 0.95
max_iters = 100_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100
compile = True

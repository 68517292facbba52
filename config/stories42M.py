# stories42M: llama2.c's 42M TinyStories model: dim 512, 8 layers, 8 heads, the Llama 2 vocabulary,
# 1024-token context; 131,072 tokens per iteration (32 x 1024 x 4).
# Parameters: 41,689,600 (tied classifier; FFN hidden 1376).
# Data: python tinystories.py pretokenize --vocab_source=llama2 (with data/tokenizer.model)
_parameters = 41_689_600
out_dir = "out42M"
vocab_source = "llama2"
vocab_size = 32000
dim = 512
n_layers = 8
n_heads = 8
n_kv_heads = None
multiple_of = 32
max_seq_len = 1024
tie_embeddings = True
dropout = 0.0
batch_size = 32
gradient_accumulation_steps = 4
learning_rate = 5e-4
weight_decay = 0.1
beta2 = 0.95
max_iters = 100_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100
compile = True

# stories110M: llama2.c's largest TinyStories model (GPT-1 sized): dim 768, 12 layers, 12 heads, the
# Llama 2 vocabulary, 1024-token context, with the recipe its README gives: 16 x 1024 x 8 = 131,072
# tokens per iteration, learning rate 4e-4, dropout 0.1, 200K iterations (the 8 micro-batches are
# split over the torchrun processes).
# Parameters: 109,529,856 (tied classifier; FFN hidden 2048).
# Data: python tinystories.py pretokenize --vocab_source=llama2 (with data/tokenizer.model)
_parameters = 109_529_856
out_dir = "out110M"
vocab_source = "llama2"
vocab_size = 32000
dim = 768
n_layers = 12
n_heads = 12
n_kv_heads = None
multiple_of = 32
max_seq_len = 1024
tie_embeddings = True
dropout = 0.1
batch_size = 16
gradient_accumulation_steps = 8
learning_rate = 4e-4
weight_decay = 0.1
beta2 = 0.95
max_iters = 200_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100
compile = True

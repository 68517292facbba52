# stories1.5M: dim 64, 8 layers, 16 heads (head size 4), a custom 16384-token vocabulary, tied
# classifier, 512-token context. Most of its weights are the embedding.
# Parameters: 1,475,648 (FFN hidden 192).
# Data: python tinystories.py train_vocab --vocab_size=16384; python tinystories.py pretokenize --vocab_size=16384
_parameters = 1_475_648
out_dir = "out1.5M"
vocab_source = "custom"
vocab_size = 16384
dim = 64
n_layers = 8
n_heads = 16
n_kv_heads = None
multiple_of = 32
max_seq_len = 512
tie_embeddings = True
dropout = 0.0
batch_size = 64
gradient_accumulation_steps = 2
learning_rate = 1e-3
weight_decay = 0.1
beta2 = 0.99
max_iters = 50_000
warmup_iters = 1000
eval_interval = 2000
eval_iters = 100

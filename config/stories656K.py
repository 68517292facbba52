# stories656K: dim 128, 2 layers, 8 query heads sharing 4 kv heads (GQA), a custom 2048-token
# vocabulary, tied classifier, 512-token context; trained like stories260K.
# Parameters: 656,000 (FFN hidden 384 from multiple_of 64).
# Data: python tinystories.py train_vocab --vocab_size=2048; python tinystories.py pretokenize --vocab_size=2048
_parameters = 656_000
out_dir = "out656K"
vocab_source = "custom"
vocab_size = 2048
dim = 128
n_layers = 2
n_heads = 8
n_kv_heads = 4
multiple_of = 64
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

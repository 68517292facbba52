# stories20M: dim 256, 6 layers, 4 heads (head size 64), the Llama 2 vocabulary with an untied
# classifier, a short 128-token context.
# Parameters: 21,204,224 (FFN hidden 704).
# Data: python tinystories.py pretokenize --vocab_source=llama2 (with data/tokenizer.model)
_parameters = 21_204_224
out_dir = "out20M"
vocab_source = "llama2"
vocab_size = 32000
dim = 256
n_layers = 6
n_heads = 4
n_kv_heads = None
multiple_of = 32
max_seq_len = 128
tie_embeddings = False
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

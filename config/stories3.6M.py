# stories3.6M: dim 64, 8 layers, 16 heads (head size 4), GPT-Neo's 50257-token vocabulary (the tokenizer
# of the original TinyStories models) with a tied classifier, 512-token context: the layers of stories1.5M.
# Parameters: 3,643,520 (FFN hidden 192; 3,216,448 of them the embedding).
# Data: python tinystories.py download_tokenizer gptneo; python tinystories.py pretokenize --vocab_source=gptneo
_parameters = 3_643_520
out_dir = "out3.6M"
vocab_source = "gptneo"
vocab_size = 50257
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

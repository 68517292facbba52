"""The Llama model in one file: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Weight names and the rotary layout (interleaved pairs) follow Meta's Llama code and llama2.c, so
that binfile.py can write llama2.c's .bin files and run.c can run them.
"""
import math
import struct
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fileio import MAX_FIELD
from optim import Muon


@dataclass
class ModelArgs:
    dim: int = 288
    n_layers: int = 6
    n_heads: int = 6
    n_kv_heads: Optional[int] = None  # None: same as n_heads (plain multi-head attention)
    vocab_size: int = 32000
    hidden_dim: Optional[int] = None  # None: llama2.c's rule, see ffn_hidden_dim()
    multiple_of: int = 32  # the FFN hidden size is rounded up to a multiple of this
    norm_eps: float = 1e-5
    max_seq_len: int = 256
    dropout: float = 0.0
    rope_theta: float = 10000.0
    tie_embeddings: bool = True  # the classifier shares the token embedding matrix


def ffn_hidden_dim(args: ModelArgs) -> int:
    """SwiGLU hidden size: explicit, or 2/3 of 4*dim rounded up to multiple_of (as llama2.c does)."""
    if args.hidden_dim is not None:
        return args.hidden_dim
    hidden = int(2 * (4 * args.dim) / 3)
    return args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)


# -----------------------------------------------------------------------------
# What a model file may claim: the bounds every reader applies before it allocates anything of the
# claimed size (binfile.py's .bin reader, checkpoint.py, hf.py, gguf_file.py, all through check_args;
# run.c restates them, pointing here). docs/formats.md, "Bounds", says them in words.

# MAX_FIELD (fileio.py, with every other reader's bounds): every shape field (dim, hidden_dim, n_layers,
# heads, vocab_size, max_seq_len) is below it
# A context (max_seq_len) sizes the RoPE tables and the KV cache, not the file: a header can claim one
# that no model of its size was trained for. A full-context cache (fp32 k and v of every layer) over
# MAX_CACHE_BYTES that is also more than MAX_CACHE_RATIO times the model's fp32 weights is refused as a
# corrupt header: a real model's is a fraction of its weights (Llama 2 7B: 1/6; stories260K: 1/8).
MAX_CACHE_BYTES, MAX_CACHE_RATIO = 1 << 30, 64


def f32(x: float) -> float:
    """x rounded to the nearest fp32, as a Python float (what an f32 field of a .bin or GGUF holds);
    OverflowError when it rounds to infinity."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def weight_count(args: ModelArgs) -> int:
    """The number of weights of the model args describe (a tied classifier counted once)."""
    dim, hidden, kv_dim = args.dim, ffn_hidden_dim(args), (args.n_kv_heads or args.n_heads) * (args.dim // args.n_heads)
    per_layer = 2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * hidden * dim
    return args.vocab_size * dim * (1 + (not args.tie_embeddings)) + dim + args.n_layers * per_layer


def context_problem(args: ModelArgs) -> str:
    """'' when args' full-context KV cache is plausible for its weights (see MAX_CACHE_BYTES), else why not
    (a message for the caller to put after the name of the file's context field)."""
    kv_dim = (args.n_kv_heads or args.n_heads) * (args.dim // args.n_heads)
    cache, weights = 2 * args.n_layers * args.max_seq_len * kv_dim * 4, 4 * weight_count(args)
    if cache > MAX_CACHE_BYTES and cache > MAX_CACHE_RATIO * weights:
        return f"its KV cache would take {cache / 1e9:.1f} GB, {cache / weights:.0f} times the model's weights: a corrupt header?"
    return ""


def check_args(args: ModelArgs, names=None) -> None:
    """Raise ValueError naming the field when args cannot make a model, or claim one no file should
    (the bounds above). names: {field: what the file calls it}, for the message. O(1): run before
    anything of the claimed size exists."""
    def n(field):
        return (names or {}).get(field, field)

    for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "multiple_of", "hidden_dim"):
        v = getattr(args, field)
        if v is None and field in ("n_kv_heads", "hidden_dim"):
            continue
        if type(v) is not int or not 0 < v < MAX_FIELD:
            raise ValueError(f"{n(field)}={v!r} out of range (expected an integer in 1 .. {MAX_FIELD - 1})")
    n_kv = args.n_kv_heads or args.n_heads
    if args.dim % args.n_heads:
        raise ValueError(f"{n('dim')}={args.dim} must be divisible by {n('n_heads')}={args.n_heads}")
    if (args.dim // args.n_heads) % 2:
        raise ValueError(f"head size {n('dim')}/{n('n_heads')}={args.dim // args.n_heads} must be even for rotary "
                         "embeddings")
    if args.n_heads % n_kv:
        raise ValueError(f"{n('n_kv_heads')}={n_kv} must divide {n('n_heads')}={args.n_heads}")
    if not ffn_hidden_dim(args) < MAX_FIELD:
        raise ValueError(f"{n('hidden_dim')}={ffn_hidden_dim(args)} out of range (expected 1 .. {MAX_FIELD - 1})")
    if type(args.dropout) not in (int, float) or not 0.0 <= args.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {args.dropout!r}")
    if type(args.tie_embeddings) is not bool:
        raise ValueError(f"{n('tie_embeddings')}={args.tie_embeddings!r}: expected True or False")
    # stored as f32 in .bin and GGUF files: the value must survive that (1e-300 would become 0, 1e39 inf)
    for field, top in (("norm_eps", 1.0), ("rope_theta", math.inf)):
        v = getattr(args, field)
        try:
            ok = type(v) in (int, float) and 0.0 < f32(v) < top
        except OverflowError:
            ok = False
        if not ok:
            raise ValueError(f"{n(field)}={v!r} out of range (expected a number whose fp32 value is in (0, {top:g}))")
    if context_problem(args):
        raise ValueError(f"{n('max_seq_len')}={args.max_seq_len}: {context_problem(args)}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # fp32 inside: the mean of squares loses too much in bf16/fp16
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_size: int, max_seq_len: int, theta: float):
    """cos and sin of pos * theta^(-2i/head_size), each (max_seq_len, head_size/2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2).float() / head_size))
    angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]); x (B, T, H, hs), cos/sin (T, hs/2).

    Pair (a, b) is the complex number a + ib and the rotation a multiplication by cos + i sin: one
    kernel forward and one backward, where the same arithmetic on real halves took seven of each
    (bench/bench_train.py); the products are the same floats.
    """
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * torch.complex(cos, sin)[:, None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads or args.n_heads
        self.head_size = args.dim // args.n_heads
        self.wq = nn.Linear(args.dim, self.n_heads * self.head_size, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_size, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_size, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_size, args.dim, bias=False)
        self.dropout = args.dropout

    def forward(self, x, cos, sin, cache=None, start_pos=0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_size)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_size)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_size)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        mask, causal = None, T > 1
        if cache is not None:
            # cache: (k, v), each (B, n_kv_heads, max_seq_len, hs), filled up to start_pos
            cache[0][:B, :, start_pos:start_pos + T] = k
            cache[1][:B, :, start_pos:start_pos + T] = v
            k, v = cache[0][:B, :, :start_pos + T], cache[1][:B, :, :start_pos + T]
            if start_pos > 0 and T > 1:
                # queries sit at the end of the keys: is_causal would align them to the start
                mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(start_pos)
                causal = False
            elif start_pos > 0:
                causal = False  # one new query sees every cached key
        # enable_gqa: kv head j serves the `n_heads // n_kv_heads` consecutive query heads from
        # j * rep on, the same grouping as repeat_interleave(rep, dim=1), without copying k and v.
        # No dropout on attention probabilities: any dropout_p > 0 sends SDPA to the slow path that
        # materialises the (T, T) matrix (bench/bench_train.py: about 4x slower for stories260K).
        # The embedding and residual dropout regularise at full speed.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_size)
        return F.dropout(self.wo(y), self.dropout, self.training)


class FeedForward(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        hidden = ffn_hidden_dim(args)
        self.w1 = nn.Linear(args.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, hidden, bias=False)
        self.dropout = args.dropout

    def forward(self, x):
        return F.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)), self.dropout, self.training)


class ClassifierLoss(torch.autograd.Function):
    """Mean cross-entropy of the logits h @ weight.T against targets (-1: ignored), never holding
    all the logits: h (N, dim), weight (vocab, dim), targets (N,).

    The plain way writes N x vocab logits, their log-softmax and its gradient to memory (3 GB for a
    32 x 256 batch of the Llama 2 vocabulary); on a CPU that traffic cost more than the classifier's
    matmuls. Here rows go through in chunks that stay in cache, and since the loss is the last
    thing computed, each chunk's gradient (softmax - one-hot) is turned into its share of the
    gradients of h and weight right away; backward only scales them by the incoming gradient.
    """
    @staticmethod
    def chunk_rows(vocab, dim):
        """Rows per chunk: few enough that a chunk's logits stay in a core's L2 cache (1 MB), but at
        least dim, because every chunk also reads and writes all of weight's gradient (vocab x dim),
        which costs as much as the chunk's own logits at rows = dim (bench/bench_train.py)."""
        return max(1, (1 << 18) // vocab, dim)

    @staticmethod
    def forward(ctx, h, weight, targets):
        grad = any(ctx.needs_input_grad[:2])
        valid = targets != -1
        n = valid.sum()
        everything = bool(n == targets.numel())  # the usual case: no row to mask
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        gh = torch.empty(h.shape, dtype=torch.float32, device=h.device) if grad else None
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if grad else None
        rows = ClassifierLoss.chunk_rows(*weight.shape)
        # fp32 outside autocast: the gradients are written in place (no temporary per chunk)
        in_place = h.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(h.device.type)
        for i in range(0, h.size(0), rows):
            hc, vc = h[i:i + rows], valid[i:i + rows, None]
            tc = targets[i:i + rows, None].clamp(min=0)
            logits = (hc @ weight.t()).float()  # under autocast: a bf16/fp16 matmul, like nn.Linear's
            # the softmax by hand, in place: one exp pass, where log_softmax and then exp took two
            z = logits.sub_(logits.amax(1, keepdim=True))
            picked = z.gather(1, tc)
            p = z.exp_()
            sums = p.sum(1, keepdim=True)
            picked -= sums.log()  # log-probability of each target (finite: no log of an underflow)
            total -= picked.sum() if everything else (picked * vc).sum()
            if grad:  # d(sum of losses)/d(logits) = softmax - one-hot, 0 on ignored rows
                p.div_(sums).scatter_add_(1, tc, -torch.ones_like(picked))
                if not everything:
                    p.mul_(vc)
                p = p.to(hc.dtype)
                if in_place:
                    torch.mm(p, weight, out=gh[i:i + rows])
                    gw.addmm_(p.t(), hc)
                else:
                    gh[i:i + rows] = p @ weight
                    gw += (p.t() @ hc).float()
        ctx.save_for_backward(gh, gw, n)
        ctx.dtypes = h.dtype, weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, g):
        gh, gw, n = ctx.saved_tensors
        scale = g / n
        return (gh * scale).to(ctx.dtypes[0]), (gw * scale).to(ctx.dtypes[1]), None


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)

    def forward(self, x, cos, sin, cache=None, start_pos=0):
        x = x + self.attention(self.attention_norm(x), cos, sin, cache, start_pos)
        return x + self.feed_forward(self.ffn_norm(x))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        check_args(args)
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(args.dim // args.n_heads, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # residual projections add into the stream once per layer: keep the sum's variance in check
        for name, p in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens, targets=None, cache=None, start_pos=0):
        """tokens (B, T) -> (logits (B, T, vocab) fp32, None), or with targets (None, mean cross-entropy).

        cache: from new_cache(); tokens then sit at positions start_pos.. and fill the cache there.
        """
        B, T = tokens.shape
        if start_pos + T > self.args.max_seq_len:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds max_seq_len={self.args.max_seq_len}")
        h = self.dropout(self.tok_embeddings(tokens))
        cos = self.rope_cos[start_pos:start_pos + T]
        sin = self.rope_sin[start_pos:start_pos + T]
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, None if cache is None else cache[i], start_pos)
        h = self.norm(h)
        if targets is None:
            return self.output(h).float(), None
        if torch.compiler.is_compiling():  # the compiler fuses the loss itself (and would unroll the chunks)
            logits = self.output(h).float()
            return None, F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return None, ClassifierLoss.apply(h.flatten(0, 1), self.output.weight, targets.reshape(-1))

    def new_cache(self, batch_size: int):
        """Per layer a (k, v) pair of zeros, each (batch_size, n_kv_heads, max_seq_len, head_size)."""
        a = self.args
        shape = (batch_size, a.n_kv_heads or a.n_heads, a.max_seq_len, a.dim // a.n_heads)
        w = self.tok_embeddings.weight
        return [(w.new_zeros(shape), w.new_zeros(shape)) for _ in self.layers]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer="adamw",
                             muon_lr=0.02, muon_momentum=0.95):
        """The optimizers of a training run, as a list: [AdamW], or [Muon, AdamW] for optimizer="muon".

        Muon (torch.optim.Muon's arithmetic, batched by shape: optim.py) takes the 2-D matrices
        inside the blocks (attention and FFN projections), whose updates it orthogonalises; the
        embedding, the classifier (a lookup table and a read-out, tied or not) and the norm gains stay
        with AdamW, as in modded-nanogpt and nanochat. AdamW decays matrices only, not norm gains: pulling gains towards 0 only fights
        the normalisation. Its fused kernel (one launch for every tensor) is used on CPU and CUDA;
        it is deterministic. Every group's "lr" starts at its peak learning rate.
        """
        if optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {optimizer!r}")
        params = [p for p in self.parameters() if p.requires_grad]  # a tied matrix appears once
        hidden = [p for n, p in self.named_parameters() if optimizer == "muon" and p.requires_grad
                  and n.startswith("layers.") and p.dim() == 2]
        rest = [p for p in params if all(p is not h for h in hidden)]
        groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
        fused = device_type in ("cuda", "cpu")
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
        if not hidden:
            return [adamw]
        return [Muon(hidden, lr=muon_lr, momentum=muon_momentum, weight_decay=weight_decay), adamw]

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), the PaLM appendix B count.

        6 per weight of every matmul (the classifier included, the embedding lookup excluded) plus
        12 * n_layers * dim * seq_len for the attention scores and their weighted sum.
        """
        a = self.args
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * n + 12 * a.n_layers * a.dim * (seq_len or a.max_seq_len)

    def estimate_mfu(self, tokens_per_s, peak, seq_len=None):
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak FLOP/s."""
        return self.flops_per_token(seq_len) * tokens_per_s / peak

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=(1, 2),
                 generator=None):
        """Continue idx (B, T) by up to max_new_tokens tokens, with a KV cache.

        temperature 0 is greedy. Generation ends when every row has produced a stop token (by default
        BOS or EOS: the end of a story) or when the context is full; a finished row repeats its stop
        token, so callers cut each row at its first stop token after the prompt. Non-finite logits are
        a ValueError naming the position (see sample_next).
        """
        B, T = idx.shape
        max_new_tokens = min(max_new_tokens, self.args.max_seq_len - T)
        cache = self.new_cache(B)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        last = torch.zeros(B, dtype=idx.dtype, device=idx.device)
        logits, _ = self(idx, cache=cache, start_pos=0)
        for step in range(max_new_tokens):
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator, pos=T - 1 + step)
            nxt = torch.where(done, last, nxt)
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if stop_tokens:
                hit = torch.isin(nxt, torch.tensor(stop_tokens, device=idx.device))
                last = torch.where(hit & ~done, nxt, last)
                done |= hit
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                logits, _ = self(nxt[:, None], cache=cache, start_pos=T + step)
        return idx


def unwrap(model):
    """The Transformer inside a torch.compile (._orig_mod) or DDP (.module) wrapper."""
    while hasattr(model, "_orig_mod") or (hasattr(model, "module") and not hasattr(model, "args")):
        model = getattr(model, "_orig_mod", None) or model.module
    return model


def build(args: ModelArgs, sd: dict) -> Transformer:
    """A Transformer (eval mode) of args holding the weights sd, which must be exactly its weights:
    what the file readers (.bin, Hugging Face, GGUF) make of what they read."""
    model = Transformer(args)
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None, pos=None):
    """Pick one token per row of logits (B, vocab): greedy at temperature 0, else top-k/top-p sampling.

    NaN or infinite logits (a diverged model) are a ValueError naming `pos`, the position they are for.
    """
    if not bool(torch.isfinite(logits).all()):
        what = "NaN" if bool(torch.isnan(logits).any()) else "infinite"
        where = "" if pos is None else f" at position {pos}"
        raise ValueError(f"the model produced {what} logits{where}: is the checkpoint diverged?")
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    scaled = logits / temperature
    if not bool(torch.isfinite(scaled).all()):  # a temperature so small that logits / t overflows
        scaled = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    logits = scaled
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and 0.0 < top_p < 1.0:
        # Tokens below (1 - top_p) / (vocab - 1) hold less than 1 - top_p together, so the nucleus lies
        # among the others: sort only those (run.c's trick; 32000 tokens take milliseconds to sort).
        n = probs.size(-1)
        k = max(int((probs >= (1.0 - top_p) / max(n - 1, 1)).sum(dim=-1).max()), 1)
        if 2 * k < n:
            sorted_p, order = torch.topk(probs, k, dim=-1)  # descending
        else:  # a flat distribution: a full sort is faster than topk of most of it
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

"""optim.py: the Muon optimizer, torch.optim.Muon's arithmetic with same-shape matrices batched.

model.py's Transformer.configure_optimizers gives it the matrices inside the blocks (AdamW takes the
rest); train.py steps it and saves its state in checkpoints, in torch.optim.Muon's format.
"""
import torch


class Muon(torch.optim.Muon):
    """torch.optim.Muon, with the Newton-Schulz iterations of same-shape matrices run as one batch.

    The arithmetic per matrix is torch.optim.Muon's (the momentum, Nesterov, the quintic iteration in
    bf16, its learning-rate adjustment and decoupled weight decay) and so are the state and its
    checkpoint format; only the order differs: a model's matrices come in a few shapes, and a
    small model's step spent more time launching its ~500 tiny matmuls than computing them.
    """
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mom, eps = group["lr"], group["weight_decay"], group["momentum"], group["eps"]
            a, b, c = group["ns_coefficients"]
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad)
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for (rows, cols), ps in by_shape.items():
                grads = [p.grad for p in ps]
                bufs = [self.state[p]["momentum_buffer"] for p in ps]
                torch._foreach_lerp_(bufs, grads, 1 - mom)
                x = torch.stack(torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs).bfloat16()
                if rows > cols:
                    x = x.mT  # iterate on the wide side: (cols x cols) Gram matrices
                x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)  # spectral norm at most 1
                for _ in range(group["ns_steps"]):
                    gram = x @ x.mT
                    x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
                if rows > cols:
                    x = x.mT
                torch._foreach_mul_(ps, 1 - lr * wd)
                adjusted = torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], (rows, cols))  # torch's own rule
                torch._foreach_add_(ps, list(x.to(ps[0].dtype).unbind(0)), alpha=-adjusted)
        return loss

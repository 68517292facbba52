"""The paths a GPU run takes, checked on the CPU: torch.compile (train.py --compile=True) and bf16
autocast (--dtype=bfloat16, the default on a CUDA GPU that has it). A CUDA-only bug would still pass
here, but a model change that breaks compilation or mixed precision does not."""
import pytest
import torch

from model import ModelArgs, Transformer

pytestmark = pytest.mark.slow  # compiling takes tens of seconds on 2 cores

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, max_seq_len=32)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, ARGS.vocab_size, (4, ARGS.max_seq_len), generator=g)
    y = torch.randint(0, ARGS.vocab_size, (4, ARGS.max_seq_len), generator=g)
    return x, y


def loss_and_grads(model, x, y, amp=None, run=None):
    """The loss of model on (x, y) and its gradients, computed through run (model, or it compiled)."""
    model.zero_grad(set_to_none=True)
    with amp or torch.autocast("cpu", enabled=False):
        _, loss = (model if run is None else run)(x, y)
    loss.backward()
    return loss.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_compiled_loss_and_gradients_equal_eager():
    torch.manual_seed(0)
    model = Transformer(ARGS)
    x, y = batch()
    loss, grads = loss_and_grads(model, x, y)
    compiled = torch.compile(model)
    closs, cgrads = loss_and_grads(model, x, y, run=compiled)
    assert torch.allclose(closs, loss, rtol=1e-5, atol=1e-6), (closs, loss)
    assert grads.keys() == cgrads.keys()
    for name, g in grads.items():
        assert torch.allclose(cgrads[name], g, rtol=1e-4, atol=1e-6), name
    # and the compiled model trains: one optimizer step on its gradients lowers its loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()
    after, _ = loss_and_grads(model, x, y, run=compiled)
    assert after < closs


def test_bf16_autocast_step_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    model = Transformer(ARGS)
    x, y = batch()
    loss, grads = loss_and_grads(model, x, y)
    bloss, bgrads = loss_and_grads(model, x, y, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.isfinite(bloss) and abs(bloss - loss) / loss < 0.02, (bloss, loss)
    for name, g in grads.items():
        assert torch.isfinite(bgrads[name]).all(), name
        cos = torch.nn.functional.cosine_similarity(bgrads[name].flatten().float(), g.flatten(), dim=0)
        assert cos > 0.98, (name, cos)
    # one bf16 step (weights stay fp32, as train.py keeps them) lowers the loss like an fp32 step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt.step()
    after, _ = loss_and_grads(model, x, y, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.isfinite(after) and after < bloss

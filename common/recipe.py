"""The one-GPU training recipe for a 3B PRM (full fine-tuning at 1024 tokens within 80 GB): which kernels, which
activations to recompute, which precision. train.py applies it from its flags; speed.py measures each idea.

    python train.py ... --bf16-weights --attn windows --grad-ckpt --ckpt-frac 0.5     # the recipe
    python -m lab.speed                                                            # its tokens/s, MFU, memory

- attention: the vision tower's windows batched into one SDPA call per window length (windowed_attention);
- activations: gradient checkpointing of the vision blocks and a fraction of the language layers, whole or only
  their MLP or attention (prepare);
- precision: bf16 weights and gradients, fp32 master weights and AdamW moments (MasterAdamW);
- placement: each torchrun process on its GPU, or all on the CPU (gloo) when there are fewer GPUs (setup).
"""
import math
import os

import torch

from common.model import default_device, unwrap


def as_windows(t, n, idx=None):
    """(1, heads, N, d) windows packed back to back -> (W, heads, n, d): the windows of length n, at the packed
    positions idx (None: every window, all of length n)."""
    t = t[0] if idx is None else t[0][:, idx]
    return t.unflatten(1, (-1, n)).transpose(0, 1)


def windowed_attention(module, q, k, v, attention_mask=None, scaling=None, dropout=0.0, **kw):
    """The vision tower's attention: one SDPA call per distinct window length, the windows as its batch.
    q, k, v: (1, heads, N, d), windows packed back to back as kw["cu_seq_lens_q"] (W + 1,) says; -> (1, N, heads, d).
    Stock transformers calls SDPA once per window without flash-attn (128 calls a layer for 8 images of 448 px)."""
    cu = kw["cu_seq_lens_q"]
    lens = cu[1:] - cu[:-1]
    sizes = lens.unique().tolist()
    outs, order = [], []
    for n in sizes:
        idx = None  # all windows the same size: a view, no gather
        if len(sizes) > 1:
            idx = (cu[:-1][lens == n][:, None] + torch.arange(n, device=q.device)).flatten()
            order.append(idx)
        windows = [as_windows(t, n, idx) for t in (q, k, v)]
        o = torch.nn.functional.scaled_dot_product_attention(*windows, scale=scaling)
        outs.append(o.transpose(0, 1).flatten(1, 2))  # (heads, W * n, d)
    out = torch.cat(outs, 1)
    if order:  # grouped by length: back to the packed order
        out = out[:, torch.argsort(torch.cat(order))]
    return out.transpose(0, 1).unsqueeze(0), None


def use_attention(model, impl="sdpa"):
    """Attention kernels: "sdpa" | "eager" (transformers' own), or "windows": SDPA everywhere, the vision windows
    batched (windowed_attention). transformers hands cu_seqlens only to a "flash*" implementation, hence the name."""
    from transformers import AttentionInterface
    from transformers.utils.generic import is_flash_attention_requested
    inner = unwrap(model)
    inner.config._attn_implementation = "eager" if impl == "eager" else "sdpa"  # sets the sub-configs too
    if impl == "windows":
        AttentionInterface.register("flash_windows_sdpa", windowed_attention)
        inner.model.visual.config._attn_implementation = "flash_windows_sdpa"
        assert is_flash_attention_requested(inner.model.visual.blocks[0].attn.config)
    elif impl not in ("sdpa", "eager"):
        raise ValueError(f"unknown attention {impl!r}: sdpa | eager | windows")
    return model


def checkpointed(module):
    """Recompute `module` in the backward instead of keeping its activations (a part of a layer: its MLP or its
    attention), when it runs with gradients."""
    inner = module.forward

    def forward(*args, **kw):
        if not (module.training and torch.is_grad_enabled()):
            return inner(*args, **kw)
        return torch.utils.checkpoint.checkpoint(inner, *args, use_reentrant=False, **kw)
    module.forward = forward
    return module


def prepare(model, a):
    """The model side of a recipe: attention kernel, gradient checkpointing (all or some layers), compiled blocks."""
    if a.attn:
        use_attention(model, a.attn)
    model.train()
    if a.grad_ckpt:
        model.gradient_checkpointing_enable()
        part = getattr(a, "ckpt_part", "layer")
        for i, layer in enumerate(model.model.language_model.layers):
            # layer i is chosen when floor(i * frac) steps up (frac 0.5: every other layer); of a chosen layer, the
            # whole layer is recomputed ("layer"), or only its MLP or its attention (the rest kept)
            chosen = math.floor((i + 1) * a.ckpt_frac) > math.floor(i * a.ckpt_frac)
            layer.gradient_checkpointing = chosen and part == "layer"
            if chosen and part != "layer":
                checkpointed({"mlp": layer.mlp, "attn": layer.self_attn}[part])
    if a.compile:
        for block in [*model.model.language_model.layers, *model.model.visual.blocks]:
            block.compile()
    return model


class MasterAdamW(torch.optim.AdamW):
    """AdamW for bf16 weights (mixed precision, Micikevicius et al. 2018): it steps fp32 master copies with fp32
    moments and rounds them into the weights, so updates below a bf16 ulp of the weight (2^-8 of it) add up instead
    of vanishing. Gradients come in bf16 and are widened for the step. The masters go into state_dict (exact resume)."""

    def __init__(self, params, **kw):
        self.weights = [p for p in params if p.requires_grad]
        super().__init__([p.detach().to(torch.float32, copy=True) for p in self.weights], **kw)

    @torch.no_grad()
    def step(self, closure=None):
        masters = self.param_groups[0]["params"]
        for w, m in zip(self.weights, masters):
            m.grad = None if w.grad is None else w.grad.float()
            w.grad = None  # each bf16 gradient freed as its fp32 copy appears
        super().step()
        torch._foreach_copy_(self.weights, masters)  # round to nearest bf16: one kernel launch per few tensors

    def zero_grad(self, set_to_none=True):
        super().zero_grad(set_to_none)
        for w in self.weights:
            w.grad = None

    def state_dict(self):
        return {**super().state_dict(), "master": list(self.param_groups[0]["params"])}

    def load_state_dict(self, state):
        state = dict(state)
        masters = state.pop("master")
        super().load_state_dict(state)
        with torch.no_grad():
            for m, saved in zip(self.param_groups[0]["params"], masters):
                m.copy_(saved)


def make_optimizer(model, a, device):
    """AdamW, fused on CUDA; with --bf16-weights a MasterAdamW (fp32 master weights and moments)."""
    kw = dict(lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.95), fused=str(device).startswith("cuda"))
    params = [p for p in model.parameters() if p.requires_grad]  # a probe trains its head alone
    return MasterAdamW(params, **kw) if a.bf16_weights else torch.optim.AdamW(params, **kw)


def placement(device, local_rank, n_gpus):
    """-> (device, backend) of one torchrun process: its own GPU, or the CPU with gloo where there are fewer GPUs
    than processes (torchrun --nproc_per_node 2 on a one-GPU machine) or where --device cpu was given."""
    if (device or "cuda").startswith("cuda") and local_rank < n_gpus:
        return f"cuda:{local_rank}", "nccl"
    return "cpu", "gloo"


def setup(a):
    """-> (rank, world, device): one process, or this rank of a torchrun group (gloo on CPU, nccl on GPU)."""
    device = a.device or default_device()
    if "LOCAL_RANK" not in os.environ:
        return 0, 1, device
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device, backend = placement(a.device, int(os.environ["LOCAL_RANK"]), n_gpus)
    if device == "cpu" and (a.device or default_device()).startswith("cuda"):
        print(f"[train] rank {os.environ['LOCAL_RANK']}: {n_gpus} GPU(s) for {os.environ['WORLD_SIZE']} processes, "
              "so every rank runs on the CPU (gloo)")
    torch.distributed.init_process_group(backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), device

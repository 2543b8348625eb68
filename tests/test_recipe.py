"""recipe.py on the CPU: batched vision windows equal the stock attention (values and gradients), selective
checkpointing keeps fewer activations, prepare applies the attention kernel, bf16 weights with fp32 master weights
train like fp32, and MasterAdamW resumes exactly."""
import io

import pytest
import torch

import prm
from common import model as vlm
from common import recipe
from lab import speed
from common import tasks
import train


def test_prepare_applies_the_attention_kernel():
    cfg = speed.make_config("small")
    m = speed.build(cfg, "cpu", torch.float32)
    recipe.prepare(m, train.Args(attn="windows"))
    assert m.config._attn_implementation == "sdpa"
    assert m.model.visual.config._attn_implementation == "flash_windows_sdpa"
    assert m.training and not any(layer.gradient_checkpointing for layer in m.model.language_model.layers)
    recipe.prepare(m, train.Args(attn="eager"))
    assert m.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="unknown attention 'flash'"):
        recipe.use_attention(m, "flash")


@pytest.mark.parametrize("image", [224, 168])  # 4 windows of 64 patches; 168 px: windows of 64, 32, 32 and 16
def test_batched_windows_equal_stock_attention(image):
    cfg = speed.make_config("small")
    m = speed.build(cfg, "cpu", torch.float32)
    batch, y, _ = speed.make_batch(cfg, 2, 160, image, 3)
    ids = speed.token_ids(cfg)
    out = {}
    for impl in ("sdpa", "windows"):
        recipe.use_attention(m, impl)
        m.zero_grad()
        loss = train.loss_on(m, batch, ids, "prm", y)
        loss.backward()
        h = vlm.hidden_states(m, batch)
        out[impl] = (h.detach(), m.model.visual.blocks[0].attn.qkv.weight.grad.clone())
    assert torch.allclose(out["sdpa"][0], out["windows"][0], atol=1e-5)
    assert torch.allclose(out["sdpa"][1], out["windows"][1], atol=1e-6, rtol=1e-4)


def test_selective_checkpointing_keeps_fewer_activations():
    cfg = speed.make_config("mid")
    batch, y, _ = speed.make_batch(cfg, 2, 256, 224, 4)
    saved = {}
    for frac in (0.0, 0.5, 1.0):
        m = speed.build(cfg, "cpu", torch.float32)
        recipe.prepare(m, train.Args(grad_ckpt=True, ckpt_frac=frac))
        on = [layer.gradient_checkpointing for layer in m.model.language_model.layers]
        assert on == {0.0: [False] * 4, 0.5: [False, True, False, True], 1.0: [True] * 4}[frac]
        assert all(b.gradient_checkpointing for b in m.model.visual.blocks)
        params, bytes_ = {p.untyped_storage().data_ptr() for p in m.parameters()}, {}

        def pack(t):  # what autograd keeps for the backward, outside the checkpointed blocks
            if t.untyped_storage().data_ptr() not in params:
                bytes_[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            train.loss_on(m, batch, speed.token_ids(cfg), "prm", y)
        saved[frac] = sum(bytes_.values())
    assert saved[0.0] > 1.4 * saved[0.5] > 1.4 * 1.4 * saved[1.0], saved  # measured 48, 28, 8 MB


def _train_tiny(mode, lr, steps):
    """`steps` PRM steps on one fixed batch of the tiny model: fp32, bf16 weights + fp32 master (MasterAdamW), or
    bf16 weights with plain AdamW (no master). -> (losses, cumulative update of the weights the optimizer steps)."""
    m, p = prm.load("tiny-init", device="cpu", dtype=torch.float32 if mode == "fp32" else torch.bfloat16)
    probs = tasks.make_problems(4, seed=3)
    steps_ = [[s for s, _, _ in tasks.gold_steps(x)] for x in probs]
    batch, _, _ = prm.encode_steps(p, [tasks.render(x) for x in probs], [x["question"] for x in probs], steps_)
    y = torch.rand(sum(map(len, steps_)), generator=torch.Generator().manual_seed(0))
    a = train.Args(objective="prm", head="tag", lr=lr, bf16_weights=mode == "master", device="cpu")
    recipe.prepare(m, a)
    opt = recipe.make_optimizer(m, a, "cpu")
    flat = lambda ps: torch.cat([q.detach().float().flatten() for q in ps])  # noqa: E731
    w0, losses = flat(m.parameters()), []
    for _ in range(steps):
        loss = train.loss_on(m, batch, vlm.token_ids(p), "prm", y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, flat(opt.param_groups[0]["params"]) - w0


def test_bf16_weights_with_fp32_master_train_like_fp32():
    # The loss curve at the tiny model's lr: bf16 compute rounds activations to ~2^-9 relative, which moves the
    # loss by ~1e-3 over 20 steps (measured); 0.01 allows 10x that and is still far below the ~0.1 the curve drops.
    ref, _ = _train_tiny("fp32", 3e-3, 20)
    got, _ = _train_tiny("master", 3e-3, 20)
    assert ref[-1] < ref[0] - 0.05
    assert max(abs(a - b) for a, b in zip(ref, got)) < 0.01, (ref, got)
    # At a fine-tuning lr (1e-5) each update is below half a bf16 ulp of most weights (2^-9 relative): without the
    # master copy most of them round away (measured: 85% of the weights never move, update off by ~95%). With it the
    # cumulative update follows fp32's (measured 13% off, elements where Adam's step is gradient noise; cosine 0.99).
    _, d_ref = _train_tiny("fp32", 1e-5, 10)
    _, d_master = _train_tiny("master", 1e-5, 10)
    _, d_bf16 = _train_tiny("bf16", 1e-5, 10)
    err = lambda d: ((d - d_ref).norm() / d_ref.norm()).item()  # noqa: E731
    assert err(d_master) < 0.25 and torch.nn.functional.cosine_similarity(d_master, d_ref, 0) > 0.95
    assert err(d_bf16) > 0.5  # the failure the master copy prevents, so this test can see it


def test_master_adamw_resumes_exactly():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64).bfloat16())
    opt = recipe.MasterAdamW([w], lr=1e-3)
    for _ in range(3):
        w.grad = torch.randn(64).bfloat16()
        opt.step()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # as train.py's checkpoint does
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = recipe.MasterAdamW([w2], lr=1e-3)
    opt2.load_state_dict(state)
    g = torch.randn(64).bfloat16()
    w.grad, w2.grad = g.clone(), g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(opt.param_groups[0]["params"][0], opt2.param_groups[0]["params"][0]) and torch.equal(w, w2)
    assert w.grad is None  # the bf16 gradient is freed by the step


def test_checkpointing_part_of_a_layer_keeps_between_none_and_all_and_changes_no_number():
    """--ckpt-part mlp | attn: only that part of each chosen layer is recomputed. It keeps fewer activations than no
    checkpointing and more than whole layers, and the loss and gradients are the same as without it."""
    cfg = speed.make_config("mid")
    batch, y, _ = speed.make_batch(cfg, 2, 256, 224, 4)
    saved, grads = {}, {}
    for name, kw in {"none": dict(grad_ckpt=True, ckpt_frac=0.0), "mlp": dict(grad_ckpt=True, ckpt_part="mlp"),
                     "attn": dict(grad_ckpt=True, ckpt_part="attn"), "layer": dict(grad_ckpt=True)}.items():
        m = speed.build(cfg, "cpu", torch.float32)
        recipe.prepare(m, train.Args(**kw))
        params, bytes_ = {p.untyped_storage().data_ptr() for p in m.parameters()}, {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                bytes_[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = train.loss_on(m, batch, speed.token_ids(cfg), "prm", y)
        loss.backward()
        saved[name] = sum(bytes_.values())
        grads[name] = (loss.item(), m.model.language_model.layers[1].mlp.down_proj.weight.grad.clone())
    assert saved["none"] > saved["mlp"] > saved["layer"] and saved["none"] > saved["attn"] > saved["layer"], saved
    for name in ("mlp", "attn", "layer"):
        assert grads[name][0] == pytest.approx(grads["none"][0], abs=1e-6)
        assert torch.allclose(grads[name][1], grads["none"][1], atol=1e-6)

"""speed.py on the CPU: it times train.py's own step (counted here), every variant's loss agrees with the others on
the same batch and weights, the anchor's full-logits loss equals train.loss_on, and the JSON's shape and counts."""
import pytest
import torch

from lab import speed
import train


def test_speed_main_runs_train_step_and_the_variants_agree(monkeypatch):
    calls = []
    real = train.train_step

    def counted(model, opt, micro, a, ids, step, loss_fn=None):
        calls.append((a.grad_accum, len(micro), a.head))
        return real(model, opt, micro, a, ids, step, loss_fn)
    monkeypatch.setattr(train, "train_step", counted)
    s = speed.Args(config="small", batch=4, seq=96, image=112, tags=3, steps=1, warmup=1, score_batch=2,
                   variants="plain,tags,master,recipe,accum4", device="cpu")
    res = speed.main(s)
    names = ["plain", "tags", "master", "recipe", "accum4"]
    assert list(res["train"]) == names
    for name, r in res["train"].items():
        assert "error" not in r, (name, r)
        fields, loss = speed.VARIANTS[name]
        assert r["settings"] == {**fields, "loss": loss}
    # each variant: warmup + timed steps, all through train.train_step, with the right micro-batches
    assert calls == [(1, 1, "tag")] * 8 + [(4, 4, "tag")] * 2
    # same seed, same batch, same two optimizer steps: the loss after them agrees across variants. plain (full
    # logits) and tags (logits at the tags only) in fp32 to float precision; bf16 weights to bf16's precision; the
    # 4 micro-batches of accum4 average to the global batch's loss (every sequence has the same number of tags)
    L = {n: r["loss"] for n, r in res["train"].items()}
    assert abs(L["plain"] - L["tags"]) <= 2e-4, L  # both rounded to 4 decimals
    assert abs(L["master"] - L["tags"]) < 0.02 and abs(L["recipe"] - L["master"]) < 0.02, L
    assert abs(L["accum4"] - L["recipe"]) < 0.02, L
    assert res["train"]["plain"]["precision"] == "weights fp32, grads fp32, AdamW state fp32"
    assert res["train"]["recipe"]["precision"] == "weights bf16 + fp32 master, grads bf16, AdamW state fp32"
    cfg = speed.make_config("small")
    assert res["params"] == sum(p.numel() for p in speed.build(cfg, "cpu", torch.float32).parameters())
    assert res["device"] == "cpu" and res["config"] == "small"
    assert res["shape"] == {"batch": 4, "seq": 96, "image": 112, "tags": 3, "image_tokens": (112 // 14) ** 2 // 4}
    assert set(res["score"]) == {"tag_only_tokens_per_s", "full_logits_tokens_per_s", "ratio",
                                 "tag_only_stock_attn_tokens_per_s", "per_prefix_slowdown"}


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        speed.main(speed.Args(config="small", batch=2, seq=96, image=112, tags=3, variants="fast", device="cpu"))


def test_synthetic_batch_layout():
    cfg = speed.make_config("small")
    batch, y, tag_at = speed.make_batch(cfg, 2, 96, 112, 3)
    ids = speed.token_ids(cfg)
    x = batch["input_ids"]
    n_img = (112 // 14) ** 2 // 4  # 16 merged image tokens
    assert x.shape == (2, 96) and y.shape == (6,) and batch["pixel_values"].shape[0] == 2 * 8 * 8
    assert (x[:, 0] == cfg.vision_start_token_id).all() and (x[:, 1 + n_img] == cfg.vision_end_token_id).all()
    assert int((x == cfg.image_token_id).sum()) == 2 * n_img
    assert tag_at == [63, 79, 95]  # the answer is the last half (48 .. 95): a tag closes each third of it
    assert [(row == ids["tag"]).nonzero()[:, 0].tolist() for row in x] == [tag_at, tag_at]


def test_full_logits_loss_equals_tag_loss():
    cfg = speed.make_config("small")
    m = speed.build(cfg, "cpu", torch.float32)
    batch, y, _ = speed.make_batch(cfg, 2, 96, 112, 3)
    ids = speed.token_ids(cfg)
    assert torch.allclose(speed.full_logits_loss(m, batch, ids, "prm", y), train.loss_on(m, batch, ids, "prm", y),
                          atol=1e-5)


def test_split_is_train_py_grad_accum():
    cfg = speed.make_config("small")
    batch, y, _ = speed.make_batch(cfg, 4, 96, 112, 3)
    parts = speed.split(batch, y, 2)
    assert [len(b["input_ids"]) for b, _ in parts] == [2, 2] and [len(lab) for _, lab in parts] == [6, 6]
    assert torch.equal(torch.cat([b["input_ids"] for b, _ in parts]), batch["input_ids"])
    assert torch.equal(torch.cat([b["pixel_values"] for b, _ in parts]), batch["pixel_values"])
    assert torch.equal(torch.cat([lab for _, lab in parts]), y)
    with pytest.raises(ValueError, match="does not split into 3"):
        speed.split(batch, y, 3)


def test_sweep_runs_every_variant_with_the_same_numerics_and_keeps_its_budget():
    """--sweep: the SWEEP variants in order (compiled ones left out here: compiling takes minutes on a CPU), the
    new ones (a part of each layer recomputed, other ckpt fractions, a micro-batch twice as large) agreeing with the
    recipe's loss, the vision tower's share, and no variant started once --budget is spent."""
    s = speed.Args(config="small", batch=4, seq=96, image=112, tags=3, steps=1, warmup=1, score_batch=2,
                   sweep=True, device="cpu")
    sweep = speed.SWEEP
    try:
        speed.SWEEP = [v for v in sweep if "compile" not in v and v != "plain"]
        res = speed.main(s)
        L = {n: r["loss"] for n, r in res["train"].items()}
        assert list(res["train"]) == speed.SWEEP
        for n in ("frac0.25", "frac0.75", "mlp", "attn", "recipe_x2", "mlp_x2", "nockpt"):
            assert abs(L[n] - L["recipe"]) < 0.02, (n, L)  # the same step: recomputation changes no number
        assert res["train"]["mlp_x2"]["s_per_step"] > res["train"]["mlp"]["s_per_step"]  # twice the tokens a step
        assert res["vision_s_per_step"] > 0 and res["best_within_memory"] is None  # no MFU on a CPU
        speed.SWEEP = ["tags", "master", "recipe"]
        res = speed.main(speed.Args(**{**s.__dict__, "budget": 0.0}))
        assert "error" not in res["train"]["tags"]  # the first always runs
        assert [r.get("error") for r in list(res["train"].values())[1:]] == ["not run: --budget spent"] * 2
    finally:
        speed.SWEEP = sweep

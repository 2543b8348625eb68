"""Throughput of the real PRM training step and the real scoring pass, Qwen2.5-VL with random weights.

    python -m lab.speed                  # on one GPU: the 3B shape, every variant, about 3 minutes
    python -m lab.speed --config mid --batch 2 --seq 256 --image 224 --steps 2     # the same code on a CPU, seconds
    python -m lab.speed --variants plain,recipe,compile    # pick the variants
    python -m lab.speed --sweep          # every variant in SWEEP (at most ~5 minutes: --budget), the vision
                                         # tower's share, and which meet 30% MFU (model FLOPs utilisation) in 80 GB

The model is built in code (no download) and fed synthetic batches: B x S tokens, one image of --image px each
((image/14)^2/4 visual tokens), --tags step tags in the answer half. Each variant is a train.Args recipe run through
train.py's own pieces (prepare, make_optimizer, loss_on "prm", clip, step); "plain" is the anchor, which
takes the loss from the logits over the whole vocabulary. tokens/s counts every token of the batch; MFU is
6 * params * tokens/s / --peak-flops (989e12: H100/H200 bf16 dense), null on a CPU; peak_gb is
torch.cuda.max_memory_allocated in GiB (2^30 bytes: an "80 GB" H100 holds 79.6), null on a CPU.
Scoring: prm.tag_logits (2 rows of the LM head at the tags) against model(**batch).logits, forward only, at
--score-batch; and the --tags prefixes scored one by one against the single pass. The last stdout line is JSON.
"""
import copy
import gc
import inspect
import json
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import prm
import train
from common import cli, recipe, tasks
from common.model import MODEL_KEYS, default_device, default_dtype

# The Qwen2.5-VL-3B shape (3.755 B parameters with tied embeddings), and two that a CPU runs in seconds.
CONFIGS = {
    "3b": dict(hidden=2048, layers=36, heads=16, kv_heads=2, ffn=11008, vocab=151936, mrope=[16, 24, 24],
               vis_depth=32, vis_hidden=1280, vis_heads=16, vis_ffn=3420, fullatt=[7, 15, 23, 31]),
    "mid": dict(hidden=256, layers=4, heads=4, kv_heads=2, ffn=688, vocab=8192, mrope=[8, 12, 12],
                vis_depth=4, vis_hidden=128, vis_heads=2, vis_ffn=344, fullatt=[1, 3]),
    "small": dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=1024, mrope=[2, 3, 3],
                  vis_depth=2, vis_hidden=64, vis_heads=2, vis_ffn=128, fullatt=[1]),
}
QWEN_PATCH, MERGE, WINDOW = 14, 2, 112  # Qwen2.5-VL: 14 px patches, 2x2 merged into one token, 112 px attention windows

# name: (train.Args fields, loss). Each rung adds one idea to the one above it; "recipe" is train.py's GPU recipe,
# "accum4" and "nockpt" the other ways to spend memory (measured, not assumed); "compile" is only run when named.
VARIANTS = {
    "plain": (dict(grad_ckpt=True), "full"),  # fp32 weights, bf16 autocast, every block checkpointed, fused AdamW
    "tags": (dict(grad_ckpt=True), "tags"),  # + logits only at the tags (train.loss_on)
    "master": (dict(grad_ckpt=True, bf16_weights=True), "tags"),  # + bf16 weights, fp32 master and AdamW state
    "windows": (dict(grad_ckpt=True, bf16_weights=True, attn="windows"), "tags"),  # + batched vision windows
    "recipe": (dict(grad_ckpt=True, ckpt_frac=0.5, bf16_weights=True, attn="windows"), "tags"),  # + half the
    # language layers not checkpointed (the vision blocks still are)
    "accum4": (dict(grad_ckpt=True, ckpt_frac=0.0, bf16_weights=True, attn="windows", grad_accum=4), "tags"),
    "nockpt": (dict(bf16_weights=True, attn="windows"), "tags"),  # the ceiling; ~110 GB at 3B, 8 x 1024
    "compile": (dict(grad_ckpt=True, ckpt_frac=0.5, bf16_weights=True, attn="windows", compile=True), "tags"),
    # --sweep adds: the ckpt_frac sweep, recomputing only a part of each layer, compiled blocks (torch.compile fuses
    # RMSNorm, SwiGLU and rotary into fewer kernels), and a micro-batch twice as large ("x2": 16 sequences a step)
    "frac0.25": (dict(grad_ckpt=True, ckpt_frac=0.25, bf16_weights=True, attn="windows"), "tags"),
    "frac0.75": (dict(grad_ckpt=True, ckpt_frac=0.75, bf16_weights=True, attn="windows"), "tags"),
    "mlp": (dict(grad_ckpt=True, ckpt_part="mlp", bf16_weights=True, attn="windows"), "tags"),
    "attn": (dict(grad_ckpt=True, ckpt_part="attn", bf16_weights=True, attn="windows"), "tags"),
    "mlp_compile": (dict(grad_ckpt=True, ckpt_part="mlp", bf16_weights=True, attn="windows", compile=True), "tags"),
    "recipe_x2": (dict(grad_ckpt=True, ckpt_frac=0.5, bf16_weights=True, attn="windows", batch_x=2), "tags"),
    "mlp_x2": (dict(grad_ckpt=True, ckpt_part="mlp", bf16_weights=True, attn="windows", batch_x=2), "tags"),
}
SWEEP = ["plain", "tags", "master", "windows", "recipe", "accum4", "nockpt", "frac0.25", "frac0.75", "mlp", "attn",
         "compile", "mlp_compile", "recipe_x2", "mlp_x2"]
TARGET_MFU, TARGET_GIB = 0.30, 79.6  # the targets: 30% MFU within an 80 GB H100 (79.6 GiB)


@dataclass
class Args:
    config: str = field(default="", metadata={"help": "3b | mid | small (default: 3b on a GPU, mid on a CPU)"})
    batch: int = field(default=8, metadata={"range": (1, None),
                                            "help": "training batch (sequences per optimizer step)"})
    seq: int = field(default=1024, metadata={"range": (1, None),
                                             "help": "tokens per sequence, image tokens included"})
    image: int = field(default=448, metadata={"range": (28, None),
                                              "help": "image side in pixels (a multiple of 28)"})
    tags: int = field(default=8, metadata={"range": (1, None), "help": "step tags per sequence"})
    steps: int = field(default=3, metadata={"range": (1, None),
                                            "help": "timed training steps per variant (after --warmup)"})
    warmup: int = field(default=2, metadata={"range": (0, None),
                                             "help": "untimed steps first (allocator, kernels, compile)"})
    variants: str = field(default="plain,tags,master,windows,recipe,accum4,nockpt", metadata={"help": "comma-separated: "
                          + " | ".join(VARIANTS)})
    sweep: bool = field(default=False, metadata={"help": "every variant (SWEEP), the vision tower's share, and which "
                        "meet both targets; stops starting variants after --budget seconds"})
    budget: float = field(default=210.0, metadata={"range": (0.0, None),
                                                   "help": "with --sweep: seconds after "
                                                   "which no variant starts"})
    score_batch: int = field(default=16, metadata={"range": (1, None), "help": "sequences per scoring pass"})
    peak_flops: float = field(default=989e12, metadata={"range": (1.0, None),
                                                        "help": "the device's peak FLOP/s for "
                                                        "MFU (bf16 dense)"})
    device: str = field(default="", metadata={"type": cli.device,
                                              "help": "cpu | cuda (default: cuda if available)"})
    seed: int = field(default=0, metadata={"help": "seed for weights and batches"})


def make_config(name):
    from transformers import Qwen2_5_VLConfig
    c = CONFIGS[name]
    V = c["vocab"]  # the special tokens sit at the top of the vocabulary
    sp = dict(image_token_id=V - 1, video_token_id=V - 2, vision_start_token_id=V - 3, vision_end_token_id=V - 4)
    text = dict(vocab_size=V, hidden_size=c["hidden"], intermediate_size=c["ffn"], num_hidden_layers=c["layers"],
                num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"], max_position_embeddings=32768,
                rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": c["mrope"]})
    vision = dict(depth=c["vis_depth"], hidden_size=c["vis_hidden"], intermediate_size=c["vis_ffn"],
                  num_heads=c["vis_heads"], patch_size=QWEN_PATCH, spatial_merge_size=MERGE, temporal_patch_size=2,
                  window_size=WINDOW, fullatt_block_indexes=c["fullatt"], out_hidden_size=c["hidden"])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **sp)


def token_ids(cfg):
    """The ids train.loss_on and prm.tag_logits need: the step tag and the "+"/"-" labels (ordinary tokens)."""
    return {"tag": cfg.image_token_id - 4, "pos": 10, "neg": 11, "pad": 0, "eos": 1}


def build(cfg, device, dtype, seed=0):
    """Random weights, made on the device in its dtype (a 3B model initialised on a CPU takes minutes)."""
    from transformers import Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    with torch.device(device):  # a copy: use_attention writes into the model's config
        model = Qwen2_5_VLForConditionalGeneration._from_config(copy.deepcopy(cfg), dtype=dtype)
    return model.to(device)


def make_batch(cfg, n, seq, image, tags, seed=0):
    """n synthetic sequences: <vision_start> image tokens <vision_end> prompt | answer with a tag after each step.
    Every sequence has its tags at the same places, so that the prefixes of the batch line up."""
    from transformers import Qwen2_5_VLModel
    g = torch.Generator().manual_seed(seed)
    grid = image // QWEN_PATCH
    n_img = grid * grid // MERGE ** 2
    ids = token_ids(cfg)
    assert image % (QWEN_PATCH * MERGE) == 0, f"--image {image} is not a multiple of {QWEN_PATCH * MERGE}"
    assert seq >= n_img + 2 + 2 * tags, f"--seq {seq} is too short for {n_img} image tokens and {tags} tags"
    x = torch.randint(12, cfg.image_token_id - 8, (n, seq), generator=g)
    x[:, 0], x[:, 1:1 + n_img], x[:, 1 + n_img] = cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id
    start = max(2 + n_img, seq // 2)  # the answer: the last half (or what the image leaves)
    tag_at = [start + (k + 1) * (seq - start) // tags - 1 for k in range(tags)]
    x[:, tag_at] = ids["tag"]
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x),
             "pixel_values": torch.randn(n * grid * grid, 3 * 2 * QWEN_PATCH * QWEN_PATCH, generator=g),
             "image_grid_thw": torch.tensor([[1, grid, grid]] * n),
             "n_steps": torch.full((n,), tags)}
    if "mm_token_type_ids" in inspect.signature(Qwen2_5_VLModel.forward).parameters:  # newer transformers
        batch["mm_token_type_ids"] = (x == cfg.image_token_id).int()  # 1 at image tokens: mrope positions
    return batch, torch.rand(n * tags, generator=g), tag_at  # soft labels, one per tag


def full_logits_loss(model, batch, ids, objective, labels):
    """The anchor's loss: logits over the whole vocabulary at every position (model(**batch).logits, (B, S, V)),
    then the "+"/"-" columns at the tags. Same value as train.loss_on "prm", far more work."""
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    logits = model(**inputs).logits
    logp = F.log_softmax(logits[batch["input_ids"] == ids["tag"]][:, [ids["pos"], ids["neg"]]].float(), -1)
    return -(labels * logp[:, 0] + (1 - labels) * logp[:, 1]).mean()


def split(batch, labels, parts):
    """The batch as `parts` micro-batches (train.py's --grad-accum), labels alongside."""
    if len(batch["input_ids"]) % parts:
        raise ValueError(f"--batch {len(batch['input_ids'])} does not split into {parts} micro-batches")
    n, pix = len(batch["input_ids"]) // parts, len(batch["pixel_values"]) // parts
    nt = len(labels) // parts
    return [({k: v[i * (pix if k == "pixel_values" else n):(i + 1) * (pix if k == "pixel_values" else n)]
              for k, v in batch.items()}, labels[i * nt:(i + 1) * nt]) for i in range(parts)]


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gb(device):
    """GiB allocated at the peak since the last reset (weights included); None on a CPU."""
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def precision(ta, device):
    if ta.bf16_weights:
        return "weights bf16 + fp32 master, grads bf16, AdamW state fp32"
    if device.startswith("cuda"):
        return "weights fp32 (bf16 autocast), grads fp32, AdamW state fp32"
    return "weights fp32, grads fp32, AdamW state fp32"


def time_train(name, s, cfg, device, batch, labels):
    """One variant: build, warm up, time s.steps optimizer steps of train.py's step on the same global batch."""
    fields, loss_kind = VARIANTS[name]
    x = fields.get("batch_x", 1)  # the global batch repeated: a micro-batch x times as large
    if x > 1:
        batch = {k: torch.cat([v] * x) for k, v in batch.items()}
        labels = torch.cat([labels] * x)
    ta = train.Args(objective="prm", head="tag", batch_size=s.batch * x, lr=1e-5, device=device,
                    **{k: v for k, v in fields.items() if k != "batch_x"})
    model = build(cfg, device, torch.bfloat16 if ta.bf16_weights else torch.float32, s.seed)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    recipe.prepare(model, ta)
    opt = recipe.make_optimizer(model, ta, device)
    ids, loss_fn = token_ids(cfg), train.loss_on if loss_kind == "tags" else full_logits_loss
    micro = split(batch, labels, ta.grad_accum)

    def step():  # train.py's own optimizer step (lr schedule at step 0, autocast, clip, AdamW)
        return train.train_step(model, opt, micro, ta, ids, 0, loss_fn)[0]

    for _ in range(s.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        loss = step()
    sync(device)
    dt = (time.perf_counter() - t0) / s.steps
    tps = batch["input_ids"].numel() / dt
    n = sum(p.numel() for p in model.parameters())
    out = {"tokens_per_s": round(tps, 1), "mfu": round(6 * n * tps / s.peak_flops, 4) if device.startswith("cuda")
           else None, "peak_gb": peak_gb(device), "precision": precision(ta, device),
           "s_per_step": round(dt, 4), "loss": round(loss, 4),
           "settings": {**fields, "loss": loss_kind}}
    if device.startswith("cuda"):
        out["reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        out["meets"] = out["mfu"] >= TARGET_MFU and out["reserved_gb"] <= TARGET_GIB
    return out


def time_vision(s, cfg, device, batch):
    """The vision tower's own share of the recipe's step: its forward and backward alone (bf16 weights, batched
    windows, blocks checkpointed), in seconds, against the whole step's."""
    model = build(cfg, device, torch.bfloat16, s.seed)
    recipe.prepare(model, train.Args(grad_ckpt=True, bf16_weights=True, attn="windows"))
    pix, grid = batch["pixel_values"].to(torch.bfloat16), batch["image_grid_thw"]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            out = model.model.visual(pix, grid_thw=grid)
        (out.pooler_output if hasattr(out, "pooler_output") else out).float().sum().backward()
    step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(s.steps):
        step()
    sync(device)
    return round((time.perf_counter() - t0) / s.steps, 4)


@torch.inference_mode()
def timed(fn, device, reps):
    fn()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps


def time_score(s, cfg, device, reps=3):
    """Forward-only scoring at s.score_batch, weights in the device's dtype (model.default_dtype): the plain
    forward (full logits, stock attention) against prm.tag_logits (stock, then batched vision windows); and the
    s.tags prefixes scored one pass each (prm.score_prefixes' way) against the single pass."""
    model = build(cfg, device, default_dtype(device), s.seed).eval()
    batch, _, tag_at = make_batch(cfg, s.score_batch, s.seq, s.image, s.tags, s.seed + 1)
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs = {k: batch[k] for k in MODEL_KEYS if k in batch}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    ids, tokens = token_ids(cfg), batch["input_ids"].numel()
    full = timed(lambda: model(**inputs).logits, device, reps)
    tags_stock = timed(lambda: prm.tag_logits(model, batch, ids), device, reps)
    recipe.use_attention(model, "windows")
    single = timed(lambda: prm.tag_logits(model, batch, ids), device, reps)
    prefixes = [{k: v[:, :t + 1] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
                 for k, v in batch.items()} for t in tag_at]
    per_prefix = sum(timed(lambda p=p: prm.tag_logits(model, p, ids), device, 1) for p in prefixes)
    n = sum(p.numel() for p in model.parameters())
    return {"tag_only_tokens_per_s": round(tokens / single, 1), "full_logits_tokens_per_s": round(tokens / full, 1),
            "ratio": round(full / single, 3), "tag_only_stock_attn_tokens_per_s": round(tokens / tags_stock, 1),
            "per_prefix_slowdown": round(per_prefix / single, 3)}, n


def single_pass_vs_prefixes(ck, problems, cands, n=64):
    """Single-pass scoring (all steps of an answer in one forward) against scoring each prefix on its own."""
    model, processor = prm.load(ck)
    probs = {p["id"]: p for p in problems}
    cands = cands[:n]
    ims = [tasks.render(probs[c["problem_id"]]) for c in cands]
    qs = [probs[c["problem_id"]]["question"] for c in cands]
    st = [c["steps"] for c in cands]
    prm.score_steps(model, processor, ims[:8], qs[:8], st[:8], 16)  # warm-up
    t0 = time.time()
    prm.score_steps(model, processor, ims, qs, st, 16)
    single = time.time() - t0
    flat = [(i, k) for i in range(len(st)) for k in range(len(st[i]))]
    t0 = time.time()
    prm.score_steps(model, processor, [ims[i] for i, _ in flat], [qs[i] for i, _ in flat],
                    [st[i][:k + 1] for i, k in flat], 16)
    per_prefix = time.time() - t0
    return {"answers": len(cands), "steps": len(flat), "single_pass_s": round(single, 3),
            "per_prefix_s": round(per_prefix, 3), "slowdown": round(per_prefix / single, 2)}


def main(s: Args):
    device = s.device or default_device()
    name = s.config or ("3b" if device.startswith("cuda") else "mid")
    cfg = make_config(name)
    batch, labels, _ = make_batch(cfg, s.batch, s.seq, s.image, s.tags, s.seed)
    batch, labels = {k: v.to(device) for k, v in batch.items()}, labels.to(device)
    res = {"train": {}, "score": {}, "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
           "config": name, "shape": {"batch": s.batch, "seq": s.seq, "image": s.image, "tags": s.tags,
                                     "image_tokens": (s.image // QWEN_PATCH) ** 2 // MERGE ** 2}}
    print(f"{'variant':11s} {'tokens/s':>10s} {'MFU':>6s} {'peak GiB':>9s}  meets  precision")
    t_start = time.perf_counter()
    for v in SWEEP if s.sweep else [v for v in s.variants.split(",") if v]:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}: {', '.join(VARIANTS)}")
        if s.sweep and res["train"] and time.perf_counter() - t_start > s.budget:  # the first always runs
            res["train"][v] = {"tokens_per_s": None, "mfu": None, "peak_gb": None, "error": "not run: --budget spent"}
            continue
        try:
            r = time_train(v, s, cfg, device, batch, labels)
        except Exception as e:  # noqa: BLE001  (an out-of-memory variant is a result, not the end of the run)
            r = {"tokens_per_s": None, "mfu": None, "peak_gb": None, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        res["train"][v] = r
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        meets = {True: "yes", False: "no"}.get(r.get("meets"), "-")
        print(f"{v:11s} {r['tokens_per_s'] or 0:10.0f} {mfu:>6s} {peak:>9s}  {meets:5s}  "
              f"{r.get('precision') or r.get('error')}", flush=True)
    if s.sweep:
        step_s = (res["train"].get("recipe") or {}).get("s_per_step")
        res["vision_s_per_step"] = time_vision(s, cfg, device, batch)
        print(f"vision tower alone: {res['vision_s_per_step']} s a step (the recipe's whole step: {step_s} s)")
        ok = [v for v, r in res["train"].items() if r.get("meets")]
        res["best_within_memory"] = max((v for v, r in res["train"].items() if r.get("mfu") and
                                         r.get("reserved_gb", 1e9) <= TARGET_GIB), key=lambda v: res["train"][v]["mfu"],
                                        default=None)
        print(f"meet both targets (MFU >= {TARGET_MFU:.0%}, <= {TARGET_GIB} GiB reserved): {ok or 'none'}; "
              f"fastest within the memory: {res['best_within_memory']}")
    res["score"], res["params"] = time_score(s, cfg, device)
    sc = res["score"]
    print(f"scoring at batch {s.score_batch}: tag-only {sc['tag_only_tokens_per_s']:.0f} tokens/s, full logits "
          f"{sc['full_logits_tokens_per_s']:.0f} ({sc['ratio']:.2f}x); {s.tags} prefixes one by one: "
          f"{sc['per_prefix_slowdown']:.2f}x slower than one pass")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    cli.run(main, Args, __doc__)


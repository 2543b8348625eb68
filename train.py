"""One training loop, three objectives: sft (pretrain the tiny base to solve the suite), prm (a soft label at every
step tag), orm (the last tag only). Two reward heads, both read at the tags (prm.tag_logits): "tag", P("+") from the
LM head at each tag; "implicit", sigmoid(beta * log-likelihood ratio to the start model of the answer so far).

    python train.py --objective sft --model tiny-init --data synthetic --out checkpoints/tiny-base
    python train.py --objective prm --model tiny --data out/suite/labels.jsonl --out out/prm
    python train.py --objective prm --head implicit --beta 0.1 ...     # the implicit head (what bench.py trains)
    python train.py --objective sft --model tiny --eval-only            # held-out greedy accuracy, JSON last line
    torchrun --nproc_per_node 2 train.py ...                           # DDP (gloo on CPU, nccl on GPU)

Checkpoints are HF folders (model + processor + train_config.json) that model.load reads; DIR/last holds the
optimizer state too, so --resume continues exactly (same data, same weights as an uninterrupted run).

GPU recipe (a 3B PRM, full fine-tuning at 1024 tokens on one 80 GB GPU; `python speed.py` measures it and each idea):
    python train.py --objective prm --model PATH --data L.jsonl --out out/prm3b --lr 1e-5 --batch-size 8 \
        --max-len 1024 --bf16-weights --attn windows --grad-ckpt --ckpt-frac 0.5
Weights and gradients bf16, fp32 master weights and fp32 AdamW moments (fused); bf16 autocast; the loss needs logits
only at the tags (2 rows of the LM head); the vision tower's windows batched into one SDPA call; vision blocks and
every other language layer checkpointed. The CPU defaults (fp32, no checkpointing) are unchanged.
"""
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import model as M
import prm
import tasks


@dataclass
class Args:
    objective: str = field(default="sft", metadata={"help": "sft | prm | orm"})
    model: str = field(default="tiny-init", metadata={"help": "tiny-init | tiny | a checkpoint folder or hub id"})
    size: str = field(default="small", metadata={"help": "tiny-init size preset: small | base"})
    data: str = field(default="synthetic", metadata={"help": "synthetic (fresh problems every batch) | a JSONL file"})
    eval_data: str = field(default="", metadata={"help": "held-out labelled JSONL for prm/orm (default: 10%% of --data)"})
    out: str = field(default="out/train", metadata={"help": "output folder for checkpoints and log"})
    max_steps: int = field(default=3000, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=32, metadata={"help": "global batch (sequences per optimizer step)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (AdamW)"})
    warmup: int = field(default=100, metadata={"help": "linear warmup steps, then cosine to 10%% of lr"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    clip: float = field(default=1.0, metadata={"help": "gradient-norm clipping"})
    max_len: int = field(default=512, metadata={"help": "maximum sequence length (tokens)"})
    eval_every: int = field(default=500, metadata={"help": "evaluate every N steps"})
    eval_n: int = field(default=64, metadata={"help": "held-out problems (sft) per evaluation"})
    save_every: int = field(default=500, metadata={"help": "checkpoint to OUT/last every N steps"})
    seed: int = field(default=0, metadata={"help": "seed for init, data order and held-out problems"})
    resume: bool = field(default=False, metadata={"help": "continue from OUT/last"})
    eval_only: bool = field(default=False, metadata={"help": "evaluate --model and exit"})
    grad_ckpt: bool = field(default=False, metadata={"help": "gradient checkpointing (memory for compute)"})
    bf16_weights: bool = field(default=False, metadata={"help": "GPU recipe: bf16 weights, fp32 master copy and AdamW state"})
    ckpt_frac: float = field(default=1.0, metadata={"help": "with --grad-ckpt: fraction of the language layers checkpointed, spread evenly (vision blocks: all)"})
    attn: str = field(default="", metadata={"help": "attention: sdpa | eager | windows (sdpa, vision windows batched) (default: as loaded)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile every transformer block (GPU; recompiles at eval)"})
    head: str = field(default="tag", metadata={"help": "prm/orm: tag (+/- read at each step tag) | implicit (log-likelihood ratio to the start model, read at the tags)"})
    beta: float = field(default=1.0, metadata={"help": "implicit head: scale of the log-likelihood ratio"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda if available)"})


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    t = (step - a.warmup) / max(1, a.max_steps - a.warmup)
    return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def synthetic_sft(step, n, seed, eos):
    """The global batch of step `step`: fresh problems that depend only on (seed, step), so a resume sees the same."""
    rng = random.Random(tasks.seed_of(seed, "sft", step))
    probs = [tasks.make_problem(f"sft-{step}-{i}", seed) for i in range(n)]
    fmts = [rng.choice(["step", "step", "numbered", "plain"]) for _ in probs]
    texts = [tasks.format_steps([s for s, _, _ in tasks.gold_steps(p)], f) + eos for p, f in zip(probs, fmts)]
    return [tasks.render(p) for p in probs], [p["question"] for p in probs], texts


def load_labelled(path):
    """Step-labelled records -> (images, prompts, steps, labels, outcome) lists, images opened."""
    import data
    from PIL import Image
    recs = data.read_jsonl(path, "labelled")  # a bad line: RecordError naming file, line and field
    data.check_images(path, recs)  # a missing image: FileNotFoundError naming file, line, record and path
    empty = [r["id"] for r in recs if not r["completions"]]
    if empty:
        print(f"[train] {path}: skipped {len(empty)} records with no steps (first: {empty[0]})")
    out, opened = [], {}
    for r in recs:
        if not r["completions"]:
            continue
        img = data.resolve_image(path, r["images"][0])
        if img not in opened:
            opened[img] = Image.open(img).convert("RGB")
        out.append((opened[img], r["prompt"], r["completions"], r["labels"],
                    float(r.get("meta", {}).get("correct", r["labels"][-1] if r["labels"] else 0.0))))
    return out


def loss_on(model, batch, ids, objective, labels=None):
    """sft: next-token loss on the assistant's tokens. prm: soft cross-entropy at every tag. orm: at the last tag."""
    if objective == "sft":
        hs = prm.hidden_states(model, batch)[:, :-1]  # (B, S-1, H)
        tgt = batch["input_ids"][:, 1:].to(hs.device)
        mask = prm.answer_targets(batch, ids, hs.device)
        head = (model.module if hasattr(model, "module") else model).lm_head
        return F.cross_entropy(head(hs[mask]).float(), tgt[mask])
    logits = prm.tag_logits(model, batch, ids).float()  # (T, 2): "+" and "-" at each tag
    y = labels.to(logits.device)
    if objective == "orm":
        last = torch.cumsum(batch["n_steps"], 0).to(logits.device) - 1
        logits = logits[last]
    logp = F.log_softmax(logits, -1)
    return -(y * logp[:, 0] + (1 - y) * logp[:, 1]).mean()  # soft labels stay floats (TRL casts them to int)


@torch.no_grad()
def ref_logprobs(model, batch, ids, keys, cache):
    """The implicit head's reference log-probs for a batch of records `keys`, each computed once and cached."""
    if any(k not in cache for k in keys):
        lp = prm.token_logprobs(model.implicit[0], batch, ids)
        for k, row, n in zip(keys, lp, batch["attention_mask"].sum(1).tolist()):
            cache[k] = row[:n].clone()
    return torch.nn.utils.rnn.pad_sequence([cache[k] for k in keys], batch_first=True,
                                           padding_value=0.0)[:, :batch["input_ids"].shape[1]]


def prepare(model, a):
    """The model side of a recipe: attention kernel, gradient checkpointing (all or some layers), compiled blocks."""
    if a.attn:
        M.use_attention(model, a.attn)
    model.train()
    if a.grad_ckpt:
        model.gradient_checkpointing_enable()
        if a.ckpt_frac < 1:  # layer i is checkpointed when floor(i * frac) steps up: frac 0.5 = every other layer
            for i, layer in enumerate(model.model.language_model.layers):
                layer.gradient_checkpointing = math.floor((i + 1) * a.ckpt_frac) > math.floor(i * a.ckpt_frac)
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
        for w, m in zip(self.weights, masters):
            w.copy_(m)  # round to nearest bf16

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
    return MasterAdamW(model.parameters(), **kw) if a.bf16_weights else torch.optim.AdamW(model.parameters(), **kw)


def make_batch(processor, items, a, objective, cache=None, keys=None):
    images, prompts, payload = items[0], items[1], items[2]
    if objective == "sft":
        batch, keep, skipped = prm.encode(processor, images, prompts, answers=payload, max_len=a.max_len,
                                          cache=cache, keys=keys)
        return batch, None, skipped
    batch, keep, skipped = prm.encode(processor, images, prompts, steps=payload, max_len=a.max_len, cache=cache,
                                      keys=keys)
    if batch is None:
        return None, None, skipped
    if objective == "prm":
        y = torch.tensor([v for i in keep for v in items[3][i]], dtype=torch.float32)
    else:
        y = torch.tensor([items[4][i] for i in keep], dtype=torch.float32)
    batch["n_steps"] = torch.tensor([len(payload[i]) for i in keep])
    return batch, y, skipped


@torch.no_grad()
def evaluate_sft(model, processor, a, n=None):
    """Held-out greedy accuracy: each step kind with the gold prefix given (teacher-forced), and the final answer of
    a free greedy solution, per family."""
    model.eval()
    probs = [tasks.make_problem(f"heldout-{i}", a.seed + 1000) for i in range(n or a.eval_n)]
    imgs = {p["id"]: tasks.render(p) for p in probs}
    jobs = []  # (problem, step index): continue "Step k:" after the gold steps before it
    for p in probs:
        gold = tasks.gold_steps(p)
        for i in range(len(gold)):
            jobs.append((p, i, (tasks.format_steps([g[0] for g in gold[:i]]) + "\n" if i else "") + f"Step {i + 1}: "))
    hits, tot = {}, {}
    for j in range(0, len(jobs), 64):
        chunk = jobs[j:j + 64]
        outs = M.generate(model, processor, [imgs[p["id"]] for p, _, _ in chunk], [p["question"] for p, _, _ in chunk],
                          [pre for _, _, pre in chunk], max_new_tokens=24)
        for (p, i, _), o in zip(chunk, outs):
            _, kind, nums = tasks.gold_steps(p)[i]
            ok = sorted(tasks.numbers(o.split("\n")[0])) == sorted(float(x) for x in nums)
            hits[kind] = hits.get(kind, 0) + ok
            tot[kind] = tot.get(kind, 0) + 1
    res = {f"step_{k}": round(hits[k] / tot[k], 4) for k in sorted(tot)}
    fam_hits, fam_tot = {}, {}
    for j in range(0, len(probs), 64):
        chunk = probs[j:j + 64]
        outs = M.generate(model, processor, [imgs[p["id"]] for p in chunk], [p["question"] for p in chunk], max_new_tokens=96)
        for p, o in zip(chunk, outs):
            ok = tasks.match_answer(tasks.extract_answer(prm.split_steps(o)), p["answer"])
            fam_hits[p["family"]] = fam_hits.get(p["family"], 0) + ok
            fam_tot[p["family"]] = fam_tot.get(p["family"], 0) + 1
    res.update({f"answer_{f}": round(fam_hits[f] / fam_tot[f], 4) for f in sorted(fam_tot)})
    res["answer_all"] = round(sum(fam_hits.values()) / len(probs), 4)
    model.train()
    return res


@torch.no_grad()
def evaluate_rm(model, processor, a, rows):
    """Step accuracy (threshold 0.5), step AUC and first-error F1 of a PRM/ORM against the held-out labels."""
    import bon
    model.eval()
    images, prompts, steps, step_labels, _ = zip(*rows) if rows else ([], [], [], [], [])
    scored, _ = prm.score_steps(model, processor, images, prompts, steps, a.batch_size, a.max_len)
    model.train()
    scores = [s for s in scored if s is not None]  # skipped answers (too long) drop out with their labels
    labels = [list(lab) for s, lab in zip(scored, step_labels) if s is not None]
    flat_s = [x for s in scores for x in s]
    flat_y = [y >= 0.5 for l in labels for y in l]
    fe_true = [next((i for i, y in enumerate(l) if y < 0.5), -1) for l in labels]
    return {"step_acc": round(sum((s >= 0.5) == y for s, y in zip(flat_s, flat_y)) / max(len(flat_s), 1), 4),
            "step_auc": round(bon.auc(flat_s, flat_y), 4),
            "first_error_f1": round(bon.first_error_f1(scores, fe_true, 0.5)["f1"], 4)}


def main(a: Args):
    ddp = "LOCAL_RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = a.device or M.default_device()
    if ddp:
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    out, last = Path(a.out), Path(a.out) / "last"
    resume = a.resume and (last / "trainer_state.pt").exists()
    src = str(last) if resume else a.model
    wdtype = torch.bfloat16 if a.bf16_weights else torch.float32
    model, processor = M.load(src, device=device, dtype=wdtype, size=a.size, seed=a.seed)
    ids = M.token_ids(processor)
    if a.head == "implicit" and a.objective != "sft" and not getattr(model, "implicit", None):
        M.make_implicit(model, a.model, a.beta, device, wdtype, a.size, a.seed)
    if a.eval_only:
        res = evaluate_sft(model, processor, a) if a.objective == "sft" else evaluate_rm(
            model, processor, a, load_labelled(a.eval_data or a.data))
        print(json.dumps(res))
        return res
    rows, dev_rows = [], []
    if a.data != "synthetic":
        rows = load_labelled(a.data)
        if a.eval_data:
            dev_rows = load_labelled(a.eval_data)
        else:  # a stable 10% of the records, by id hash
            held = [tasks.seed_of(a.seed, "dev", i) % 10 == 0 for i in range(len(rows))]
            dev_rows = [r for r, d in zip(rows, held) if d]
            rows = [r for r, d in zip(rows, held) if not d]
        if a.objective == "sft":  # any labelled file: its right steps (before the first error) as the target
            eos = processor.tokenizer.eos_token
            rows = [(im, q, tasks.format_steps(st) + eos, lab, o) for im, q, st, lab, o in rows if min(lab) >= 0.5]
    prepare(model, a)
    opt = make_optimizer(model, a, device)
    start = 0
    if resume:
        st = torch.load(last / "trainer_state.pt", map_location=device, weights_only=False)
        opt.load_state_dict(st["opt"])
        start = st["step"]
    dmodel = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    micro = a.batch_size // (world * a.grad_accum)
    assert micro >= 1, "batch_size must be >= world_size * grad_accum"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a") if rank == 0 else None
    n_skipped, skipped_ids, enc_cache, ref_cache, t0 = 0, set(), {}, {}, time.time()
    bar = tqdm(range(start, a.max_steps), initial=start, total=a.max_steps, disable=rank != 0, desc=a.objective)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        tot = 0.0
        for k in range(a.grad_accum):
            lo = (k * world + rank) * micro  # this rank's slice of the global batch: same global batch at any world size
            idx = None
            if a.data == "synthetic":
                items = [x[lo:lo + micro] for x in synthetic_sft(step, a.batch_size, a.seed, processor.tokenizer.eos_token)]
            else:
                order = random.Random(tasks.seed_of(a.seed, "epoch", step * a.batch_size // len(rows))).sample(range(len(rows)), len(rows))
                idx = [order[(step * a.batch_size + lo + i) % len(rows)] for i in range(micro)]
                items = list(zip(*[rows[i] for i in idx]))
            batch, y, skipped = make_batch(processor, items, a, a.objective, enc_cache if idx else None, idx)
            if idx:  # a fixed file: count each skipped record once, whatever the epochs
                skipped_ids.update(idx[i] for i, _ in skipped)
                n_skipped = len(skipped_ids)
            else:
                n_skipped += len(skipped)
            if batch is None:
                continue
            if getattr(model, "implicit", None) and idx:
                skip = {j for j, _ in skipped}
                batch["ref_logprobs"] = ref_logprobs(model, batch, ids, [k for j, k in enumerate(idx) if j not in skip],
                                                     ref_cache)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                loss = loss_on(dmodel, batch, ids, a.objective, y) / a.grad_accum
            loss.backward()
            tot += loss.item()
        if ddp:  # log the global batch's loss, not this rank's share
            t = torch.tensor([tot], device=device)
            torch.distributed.all_reduce(t)
            tot = t.item() / world
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{tot:.4f}")
        if log:
            log.write(json.dumps({"step": step + 1, "loss": round(tot, 6), "lr": lr_at(step, a), "grad_norm": float(gn),
                                  "skipped": n_skipped, "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()
        done = step + 1 == a.max_steps
        if rank == 0 and ((step + 1) % a.eval_every == 0 or done):
            res = (evaluate_sft(model, processor, a) if a.objective == "sft"
                   else evaluate_rm(model, processor, a, dev_rows))
            tqdm.write(f"step {step + 1}: loss {tot:.4f} eval {json.dumps(res)} skipped {n_skipped} "
                       f"({time.time() - t0:.0f}s)")
            log.write(json.dumps({"step": step + 1, "eval": res}) + "\n")
        if rank == 0 and ((step + 1) % a.save_every == 0 or done):
            cfg = {**asdict(a), "steps_done": step + 1}
            M.save(model, processor, last, cfg)
            torch.save({"opt": opt.state_dict(), "step": step + 1}, last / "trainer_state.pt")
    if rank == 0:
        M.save(model, processor, out, {**asdict(a), "steps_done": a.max_steps, "skipped": n_skipped})
        print(f"saved {out} ({a.max_steps - start} steps in {time.time() - t0:.0f}s, {n_skipped} sequences skipped)")
    if ddp:
        torch.distributed.destroy_process_group()
    return model


if __name__ == "__main__":
    main(M.parse_args(Args, doc=__doc__))

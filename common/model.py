"""The one model loader every script shares, the device/dtype policy, the model input (chat prompt with the image,
then the assistant's text), hidden states, token log-probabilities and generation.

    python -m common.model --save DIR [--size small|deep|base]   # write the tiny model as a normal HF folder
    python -m common.model --info tiny-init|tiny|PATH             # parameter counts and the special token ids

load("tiny-init") builds a tiny Qwen2.5-VL from a config in code (random init from a fixed seed, byte-level
tokenizer and chat template built in code, fully offline). load("tiny") is the pretrained tiny base the project
ships in checkpoints/tiny-base (see its README for the command that made it). Anything else is a local folder
or a hub id loaded through AutoModelForImageTextToText, exactly like a real checkpoint. A reward model's head (its
settings in train_config.json) is attached by prm.load, which reads through this loader.
"""
import argparse
import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common import cli
from common.tiny import SIZES, STEP_TAG, image_text_processor, tiny_init

ROOT = Path(__file__).resolve().parents[1]  # the repository
TINY_BASE = ROOT / "checkpoints" / "tiny-base"
# The checkpoints the project ships, by short name; each folder's README.md says how it was made.
SHIPPED = {"tiny": TINY_BASE,  # the pretrained base every reward model starts from
           "tiny-strong": ROOT / "checkpoints" / "tiny-strong",  # a stronger policy (every content): a writer only
           "tiny-long": ROOT / "checkpoints" / "tiny-long",  # the base trained longer on train contents
           "tiny-judge-short": ROOT / "checkpoints" / "tiny-judge-short",  # a judge: the base, 450 rating steps
           "tiny-judge-long": ROOT / "checkpoints" / "tiny-judge-long",  # a judge: the base, 900 steps
           "tiny-judge-strong": ROOT / "checkpoints" / "tiny-judge-strong",  # a judge: tiny-long, 450 steps
           "tiny-judge-strong-long": ROOT / "checkpoints" / "tiny-judge-strong-long",  # tiny-long, 900 steps
           # a judge that solves first and checks the rated step's numbers against its own: the base, 5000 steps
           "tiny-judge-reference": ROOT / "checkpoints" / "tiny-judge-reference"}

# The step-tag convention (docs/DESIGN.md): a tag token after every step; the tag head reads a step's score as
# softmax([logit("+"), logit("-")])[0] at its tag. "+" and "-" are ordinary tokens in every tokenizer.
POS, NEG = "+", "-"


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device):
    """bf16 on a CUDA GPU that supports it, fp32 everywhere else (CPU bf16 matmuls are slow and lossy)."""
    if str(device).startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_processor(path):
    """AutoProcessor, or (without torchvision, which Qwen2-VL folders ask for) image processor + tokenizer."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    try:
        processor = AutoProcessor.from_pretrained(path)
        if not hasattr(processor, "image_processor"):  # an unknown processor class gives back a bare tokenizer
            raise ValueError("AutoProcessor gave no image processor")
        return processor
    except (ImportError, ValueError, OSError, TypeError, AttributeError) as e:
        tok = AutoTokenizer.from_pretrained(path)
        ip = AutoImageProcessor.from_pretrained(path)
        jinja = Path(path, "chat_template.jinja")
        template = tok.chat_template or (jinja.read_text() if jinja.exists() else None)
        if os.environ.get("VERBOSE"):
            print(f"[model] AutoProcessor failed on {path} ({type(e).__name__}: {e}); built image processor + tokenizer")
        return image_text_processor(ip, tok, template)


def add_special_tokens(model, processor):
    """Make sure the step tag exists (resizing the embeddings where a checkpoint lacks it) and +/- are one token."""
    tok = processor.tokenizer
    if STEP_TAG not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [STEP_TAG]}, replace_extra_special_tokens=False)
        old = model.get_input_embeddings().weight.shape[0]
        if len(tok) > old:
            model.resize_token_embeddings(len(tok), mean_resizing=True)
    for t in (POS, NEG):
        if len(tok.encode(t, add_special_tokens=False)) != 1:
            raise ValueError(f"label token {t!r} is not a single token in this tokenizer")


def token_ids(processor):
    """The shared special token ids: {"tag", "pos", "neg", "pad", "eos"}."""
    tok = processor.tokenizer
    return {"tag": tok.convert_tokens_to_ids(STEP_TAG), "pos": tok.encode(POS, add_special_tokens=False)[0],
            "neg": tok.encode(NEG, add_special_tokens=False)[0], "pad": tok.pad_token_id, "eos": tok.eos_token_id}


def resolve(name):
    """What load() reads: "tiny-init"; a shipped checkpoint by its short name ("tiny": the base, SHIPPED); a local
    folder (absolute, so a checkpoint naming it loads from anywhere); a hub id. A missing name that looks local
    ("out/prm", "./x", "x") fails at once."""
    if name == "tiny-init":
        return name
    if name in SHIPPED:
        folder = SHIPPED[name]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing at {folder}; make it with the "
                                    f"command in {folder / 'README.md'}")
        return str(folder)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{name}: a folder without config.json, not a model checkpoint")
        return str(p.resolve())
    # owner/name, and not under a folder this repository writes models into ("out/prm" in a fresh clone)
    owner = name.split("/")[0]
    hub_like = (re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) and owner not in ("out", "checkpoints")
                and not Path(owner).exists())
    if p.exists() or not hub_like:
        raise FileNotFoundError(f"no model folder {name!r} ({'a file' if p.exists() else 'no such path'}"
                                f"{'' if p.is_absolute() else ' under ' + os.getcwd()}); a hub id reads owner/name")
    return name


# An implicit PRM's config.json carries this model_type, so that transformers refuses to load it alone (its scores
# need the reference model beside it, which only load() attaches); load() reads it with the base's config class.
IMPLICIT_TYPE = "vilprm_implicit_prm"
REWARD_HEAD = "reward_head.safetensors"  # a separator head's layer, beside the model's own weights


def _from_pretrained(path, dtype):
    from transformers import AutoConfig, AutoModelForImageTextToText
    cfg = json.loads(Path(path, "config.json").read_text()) if Path(path, "config.json").exists() else {}
    implicit = cfg.pop("model_type", None) == IMPLICIT_TYPE  # read as the base's architecture
    kw = {"config": AutoConfig.for_model(cfg.pop("base_model_type"), **cfg)} if implicit else {}
    try:
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **kw)
    except OSError as e:
        if Path(path).is_dir():
            raise
        raise OSError(f"{path!r} is not a local folder, and as a hub id it failed: {e}") from e


def load(name_or_path="tiny", device=None, dtype=None, size="small", seed=0):
    """name_or_path (see resolve) -> (model, processor) on `device` in `dtype` (default_device/dtype), eval mode.
    The weights only: a reward model's head is attached by prm.load."""
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    path = resolve(name_or_path)
    if path == "tiny-init":
        model, processor = tiny_init(size, seed)
    else:
        processor = load_processor(path)
        model = _from_pretrained(path, dtype)
        add_special_tokens(model, processor)
        if processor.tokenizer.pad_token_id is None:
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
    processor.tokenizer.padding_side = "left"
    model = model.to(device=device, dtype=dtype).eval()
    return model, processor


def train_config(name_or_path):
    """The train_config.json a checkpoint was saved with ({} for tiny-init, a hub id or a folder without one)."""
    path = resolve(name_or_path)
    cfg = Path(path, "train_config.json")
    return json.loads(cfg.read_text()) if path != "tiny-init" and cfg.exists() else {}


def standard_processor_config(folder):
    """Name the standard Qwen2_5_VLProcessor (and its video part) in a folder our torchvision-free processor wrote,
    so that AutoProcessor loads it, or fails loudly without torchvision instead of giving a bare tokenizer."""
    pc = Path(folder, "processor_config.json")
    c = json.loads(pc.read_text()) if pc.exists() else {}
    if c.get("processor_class") == "ImageTextProcessor" and "video_processor" not in c:
        ip = c.get("image_processor", {})
        c["processor_class"] = "Qwen2_5_VLProcessor"
        c["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor",
                                **{k: ip[k] for k in ("patch_size", "merge_size", "temporal_patch_size",
                                                      "image_mean", "image_std", "size") if k in ip}}
        pc.write_text(json.dumps(c, indent=2))


def save(model, processor, out, extra=None):
    """Write a normal HF folder (model + processor) that load(out) reads back; `extra` goes to train_config.json.

    The folder also loads the standard way: AutoModelForImageTextToText, and AutoProcessor, which names
    Qwen2_5_VLProcessor (it needs torchvision for its video part; without it, it fails loudly rather than give a
    bare tokenizer that drops the image). An implicit PRM is marked so that transformers refuses it (IMPLICIT_TYPE)."""
    os.makedirs(out, exist_ok=True)
    state = model.state_dict()
    head = {k.removeprefix("reward_head."): v for k, v in state.items() if k.startswith("reward_head.")}
    # a reward head the architecture lacks goes to its own file: the model folder stays a standard one
    model.save_pretrained(out, state_dict={k: v for k, v in state.items() if not k.startswith("reward_head.")})
    if head:
        save_file({k: v.contiguous() for k, v in head.items()}, str(Path(out, REWARD_HEAD)))
    processor.save_pretrained(out)
    standard_processor_config(out)
    if getattr(model, "implicit", None):
        cfg = json.loads(Path(out, "config.json").read_text())
        cfg["base_model_type"], cfg["model_type"] = cfg["model_type"], IMPLICIT_TYPE
        Path(out, "config.json").write_text(json.dumps(cfg, indent=2))
    if extra is not None:
        Path(out, "train_config.json").write_text(json.dumps(extra, indent=1))


def load_reward_head(name_or_path):
    """The state dict save() wrote for a reward head (OUT/reward_head.safetensors)."""
    path = Path(resolve(name_or_path), REWARD_HEAD)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; this checkpoint's train_config.json names a separator head")
    return load_file(str(path))


# The model input every script builds here: the chat prompt (image + question), then the assistant's text. A batch
# carries MODEL_KEYS for the model, plus "prompt_lens" (where each answer starts) and what callers add (prm.py:
# "step_of"; train.py: "n_steps", "ref_logprobs").
MAX_LEN = 1024  # tokens per sequence, everywhere (the question is cut first, never the answer)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def encode(processor, images, prompts, bodies, max_len=MAX_LEN, cache=None, keys=None, annotate=None):
    """A right-padded batch of chat prompt (image + question) + assistant text (bodies: one string each).

    A sequence over max_len has its question cut, never its body; if that is not enough it is skipped.
    annotate(enc, prompt_len, i) may add to item i's encoding, or return the reason to skip it (a str).
    cache (a dict) with keys (one hashable per item): each item is encoded once (a training loop's epochs reuse it).
    Returns (batch or None, kept indices, skipped [(index, reason)]); batch["prompt_lens"] marks where bodies start.
    """
    rows, keep, skipped, plens = [], [], [], []
    for i in range(len(prompts)):
        key = keys[i] if cache is not None else None
        if key is not None and key in cache:
            res = cache[key]
        else:
            res = encode_one(processor, images[i], prompts[i], bodies[i], max_len)
            if annotate is not None and not isinstance(res, str):
                enc = annotate(res[0], res[1], i)
                res = enc if isinstance(enc, str) else (enc, res[1])
            if key is not None:
                cache[key] = res
        if isinstance(res, str):
            skipped.append((i, res))
            continue
        rows.append(res[0])
        keep.append(i)
        plens.append(res[1])
    if not rows:
        return None, keep, skipped
    return collate(rows, plens, processor.tokenizer.pad_token_id), keep, skipped


def collate(rows, prompt_lens, pad_id):
    """One batch from single-sequence encodings, right-padded to the longest."""
    longest = max(r["input_ids"].shape[1] for r in rows)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, longest - t.shape[1]), value=value)
    batch = {"input_ids": torch.cat([pad(r["input_ids"], pad_id) for r in rows]),
             "attention_mask": torch.cat([pad(r["attention_mask"], 0) for r in rows]),
             "pixel_values": torch.cat([r["pixel_values"] for r in rows]),
             "image_grid_thw": torch.cat([r["image_grid_thw"] for r in rows]),
             "prompt_lens": torch.tensor(prompt_lens)}
    for k in ("mm_token_type_ids", "step_of"):
        if k in rows[0]:
            batch[k] = torch.cat([pad(r[k], 0) for r in rows])
    return batch


def encode_one(processor, image, question, body, max_len):
    """-> (processor output for one sequence, prompt length in tokens) or the reason it is skipped (a str)."""
    tok = processor.tokenizer
    question = neutralise(question)
    n_body = len(tok.encode(body, add_special_tokens=False))
    for _ in range(3):
        enc = processor(text=[chat_prompt(processor, question) + body], images=[image], return_tensors="pt")
        n = enc["input_ids"].shape[1]
        if n <= max_len:
            return enc, n - n_body
        q_ids = tok.encode(question, add_special_tokens=False)  # cut the question's end, keep its start
        question = tok.decode(q_ids[:max(len(q_ids) - (n - max_len) - 4, 0)]) + " ..."
    return f"{n} tokens > max_len {max_len} even with the question cut"


MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def hidden_states(model, batch):
    """(B, S, H) last hidden states of the language model; no logits over the vocabulary anywhere."""
    inner = unwrap(model).model
    dev = next(model.parameters()).device
    inputs = {k: batch[k].to(dev) for k in MODEL_KEYS if k in batch}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    return inner(**inputs).last_hidden_state


def answer_targets(batch, ids, device):
    """(B, S-1) True at position j when token j+1 is an answer token (not the prompt, a step tag or padding)."""
    inp = batch["input_ids"].to(device)
    pos = torch.arange(inp.shape[1], device=device)[None]
    return ((pos >= batch["prompt_lens"].to(device)[:, None]) & (batch["attention_mask"].to(device) == 1)
            & (inp != ids["tag"]))[:, 1:]


def token_logprobs(model, batch, ids):
    """(B, S) log-probability of each answer token (0 at the prompt, the tags and padding): one forward pass."""
    head = unwrap(model).lm_head
    h = hidden_states(model, batch)[:, :-1]
    inp, keep = batch["input_ids"].to(h.device), answer_targets(batch, ids, h.device)
    lp = torch.zeros(inp.shape, device=h.device)
    lp[:, 1:][keep] = torch.log_softmax(head(h[keep]).float(), -1).gather(1, inp[:, 1:][keep][:, None])[:, 0]
    return lp


def neutralise(text):
    """Answer or question text with no special token in it ("<|im_end|>" -> "< |im_end|>"): an answer cannot
    close its turn or add image slots (every chat special token of Qwen and of the tiny tokenizer starts "<|")."""
    return text.replace("<|", "< |")


def chat_prompt(processor, question):
    """The user turn (image first, then the question) and the assistant header, as the model's chat template writes it."""
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate(model, processor, images, prompts, prefixes=None, max_new_tokens=96, temperature=0.0, seed=0, logprobs=0,
             stop=None):
    """Batched continuation of chat prompts (+ optional assistant prefixes); greedy at temperature 0, else sampled
    with torch seeded by `seed` (same seed, same samples). stop: strings at which a text ends (kept in it; the
    other texts go on, their samples unchanged). Returns the new text of each; with logprobs=K also, per
    text, each new token's {"token", "logprob", "top_logprobs": the K likeliest [{"token", "logprob"}]} (the
    OpenAI API's shape; log-probabilities of the model's own distribution, before temperature)."""
    tok = processor.tokenizer
    # the question neutralised as encode_one does it: a judge's prompt holds answers that may spell special tokens
    texts = [chat_prompt(processor, neutralise(q)) + (prefixes[i] if prefixes else "")
             for i, q in enumerate(prompts)]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    dev, dt = next(model.parameters()).device, next(model.parameters()).dtype
    batch = {k: (v.to(dev, dt) if k == "pixel_values" else v.to(dev)) for k, v in batch.items()}
    torch.manual_seed(seed)
    kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
    if stop:
        kw.update(stop_strings=list(stop), tokenizer=tok)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, output_logits=logprobs > 0, return_dict_in_generate=True, **kw)
    new = out.sequences[:, batch["input_ids"].shape[1]:]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    if not logprobs:
        return texts
    lp = torch.stack(out.logits, 1).float().log_softmax(-1)  # (B, T, V)
    top = lp.topk(min(logprobs, lp.shape[-1]), -1)

    def entry(token, logprob):
        return {"token": tok.decode([int(token)]), "logprob": float(logprob)}

    def token_entries(i):
        return [{**entry(t, lp[i, j, t]),
                 "top_logprobs": [entry(x, v) for v, x in zip(top.values[i, j], top.indices[i, j])]}
                for j, t in enumerate(new[i]) if t != tok.pad_token_id]
    return texts, [token_entries(i) for i in range(len(texts))]


def param_counts(model):
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in n or n.startswith("visual"))
    total = sum(p.numel() for p in model.parameters())
    return {"vision": vision, "language": total - vision, "total": total}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--save", metavar="DIR", help="write the tiny-init model + processor to DIR")
    ap.add_argument("--size", default="small", choices=sorted(SIZES), help="tiny size preset (default small; the shipped base is deep)")
    ap.add_argument("--seed", type=int, default=0, help="init seed for tiny-init")
    ap.add_argument("--info", metavar="MODEL", help="print parameter counts and special token ids of MODEL")
    a = ap.parse_args(argv)
    if not (a.save or a.info):
        ap.error("give --save DIR or --info MODEL")
    if a.save:
        model, processor = load("tiny-init", device="cpu", size=a.size, seed=a.seed)
        save(model, processor, a.save)
        print(f"wrote tiny-init ({a.size}, seed {a.seed}) to {a.save}")
    if a.info:
        model, processor = load(a.info, device="cpu", size=a.size, seed=a.seed)
        info = {"model": a.info, "params": param_counts(model), "tokens": token_ids(processor),
                "vocab": len(processor.tokenizer)}
        print(json.dumps(info))


if __name__ == "__main__":
    cli.run(main)

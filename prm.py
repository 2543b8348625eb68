"""Process reward model: step segmentation, single-pass scoring of every step, aggregation, pictures.

    python prm.py --model out/prm --problems P --candidates C --out scores.jsonl
    python prm.py --model out/prm --problems P --candidates C --show steps.png [--id CANDIDATE_ID]
    python prm.py --model tiny --problems P --candidates C --out judge.jsonl --judge logits   # VLM-as-judge PRM

The step-tag convention (model.py): each step is followed by one tag token; a step's score is P("+") against "-"
at its tag. One forward pass scores all steps of an answer (causal attention: the same as scoring each prefix).
"""
import math
import os
import re
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from model import STEP_TAG, chat_prompt, load, parse_args, token_ids

# A step marker at a line start: "Step 1:" "step 2." "**Step 3:**" "**Step 4**:" "## Step 5 -" "步骤6：" "第7步："
_STEP = re.compile(r"^[ \t]*(?:#+[ \t]*)?(?:\*\*|__)?[ \t]*(?:step[ \t]*\d+|步骤[ \t]*\d+|第[ \t]*\d+[ \t]*步)"
                   r"[ \t]*(?:(?:\*\*|__)?[ \t]*(?:[:：、)-]|\.(?!\d))(?:[ \t]*(?:\*\*|__))?|\*\*|__|(?=\n|$))[ \t]*",
                   re.I | re.M)
_INLINE_STEP = re.compile(r"(?<=[.!?。！？:：])[ \t]+(?=(?:\*\*)?Step[ \t]*\d+[ \t]*(?:\*\*)?[:.])")
# A list item at a line start: "1. " "2) " "(3) " "4、" "- " "* " "• " (a marker needs the space: "-1" is content)
_LIST = re.compile(r"[ \t]*(?:\(\d{1,2}\)|（\d{1,2}）|\d{1,2}[.)、](?!\d)|[-*•])[ \t]+")
# LaTeX math is never cut. $..$ stays on one line, so that a lone "$5" cannot swallow the paragraphs after it.
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{([A-Za-z*]+)\}.+?\\end\{\1\}"
                   r"|(?<!\\)\$(?:\\.|[^$\\\n])+\$", re.S)
_DISPLAY = re.compile(r"[ \t]*(?:\$\$|\\\[|\\begin\{)")
# A sentence ends at . ! ? before a space (so never in 3.5), also as "$y = 6.$ Then"; or at 。！？ with no space.
_SENTENCE_END = re.compile(r"[.!?](?:\$|\\\))?[\"'”’)\]]*(?=\s)|[。！？][\"'”’」）]*")
_ABBREV = {"e.g.", "i.e.", "fig.", "figs.", "eq.", "eqs.", "vs.", "cf.", "approx.", "resp.", "mr.", "mrs.", "ms.",
           "dr.", "vol.", "sec.", "ch.", "ex.", "al.", "thm.", "def.", "lem.", "prop.", "env."}


def _split_at(text, pattern, keep=None):
    """Cut `text` after each match of `pattern` (and that `keep` accepts) unless the cut falls inside LaTeX math."""
    math = [m.span() for m in _MATH.finditer(text)]
    pieces, start = [], 0
    for m in re.finditer(pattern, text):
        if any(a < m.end() < b for a, b in math) or (keep and not keep(text, m)):
            continue
        pieces.append(text[start:m.end()])
        start = m.end()
    return pieces + [text[start:]]


def _is_sentence_end(text, m):
    rest = text[m.end():].lstrip()
    if not rest or rest[0].islower():  # "approx. equal", "a. b." and the text's end are not boundaries
        return False
    return text[:m.end()].split()[-1].lstrip("([{\"'").lower() not in _ABBREV


def _lines_to_steps(text, sentences):
    """Blank lines separate paragraphs; list items always start a step; a single newline starts one only when the
    text has no blank-line paragraphs; display math joins the line before it. One plain chunk -> its sentences."""
    paras = [p for p in _split_at(text, r"\n[ \t]*\n") if p.strip()]
    steps, listed = [], False
    for para in paras:
        first = True
        for line in _split_at(para, r"\n"):
            m = _LIST.match(line)
            listed |= bool(m)
            if not line.strip():
                continue
            if first or m or (len(paras) == 1 and not _DISPLAY.match(line)):
                steps.append(line[m.end():] if m else line)
            else:
                steps[-1] += line
            first = False
    if sentences and not listed and len(steps) == 1:
        steps = _split_at(steps[0], _SENTENCE_END, _is_sentence_end)
    return [s.strip() for s in steps if s.strip()]


def split_steps(text: str) -> list[str]:
    """Cut a model's answer into reasoning steps, markers ("Step 2:", "3.", "- ") stripped, nothing else lost.

    "Step k" markers, when present, are the only boundaries after the first one (a step keeps its blank lines,
    lists and display math). Otherwise see _lines_to_steps. Decimals, "e.g." and math are never cut."""
    text = _INLINE_STEP.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    marks = list(_STEP.finditer(text))
    if not marks:
        return _lines_to_steps(text, sentences=True)
    steps = _lines_to_steps(text[:marks[0].start()], sentences=False)
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return steps + [s for s in (text[m.end():e].strip() for m, e in zip(marks, ends)) if s]


def lost_chars(text: str, steps: list[str]) -> list[str]:
    """The runs of non-whitespace characters of `text` that `steps` leave out: only markers, for a correct split.
    Raises ValueError when a step (whitespace aside) is not the next contiguous piece of `text`."""
    src, i, lost = re.sub(r"\s", "", text), 0, []
    for step in steps:
        j = src.find(re.sub(r"\s", "", step), i)
        if j < 0:
            raise ValueError(f"step {step[:40]!r} is not a piece of the text after position {i}")
        lost += [src[i:j]] if j > i else []
        i = j + len(re.sub(r"\s", "", step))
    return lost + ([src[i:]] if src[i:] else [])



def encode(processor, images, prompts, answers=None, steps=None, max_len=1024, cache=None, keys=None):
    """A right-padded batch of chat prompt (image + question) + assistant text, for training and scoring.

    answers: one text each (SFT). steps: one list of steps each (PRM/ORM input: every step followed by the tag).
    A sequence over max_len has its question cut, never its steps; if that is not enough it is skipped.
    cache (a dict) with keys (one hashable per item): each item is encoded once (a training loop's epochs reuse it).
    Returns (batch or None, kept indices, skipped [(index, reason)]); batch["prompt_lens"] marks where answers start.
    """
    tok, rows, keep, skipped, plens = processor.tokenizer, [], [], [], []
    for i in range(len(prompts)):
        key = keys[i] if cache is not None else None
        if key is None or key not in cache:
            res = _encode_one(processor, images[i], prompts[i], answers[i] if steps is None else None,
                              None if steps is None else steps[i], max_len)
            if key is not None:
                cache[key] = res
        else:
            res = cache[key]
        if isinstance(res, str):
            skipped.append((i, res))
            continue
        rows.append(res[0])
        keep.append(i)
        plens.append(res[1])
    if not rows:
        return None, keep, skipped
    S = max(r["input_ids"].shape[1] for r in rows)
    pad = lambda t, v: torch.nn.functional.pad(t, (0, S - t.shape[1]), value=v)  # noqa: E731
    batch = {"input_ids": torch.cat([pad(r["input_ids"], tok.pad_token_id) for r in rows]),
             "attention_mask": torch.cat([pad(r["attention_mask"], 0) for r in rows]),
             "pixel_values": torch.cat([r["pixel_values"] for r in rows]),
             "image_grid_thw": torch.cat([r["image_grid_thw"] for r in rows]),
             "prompt_lens": torch.tensor(plens)}
    if "mm_token_type_ids" in rows[0]:
        batch["mm_token_type_ids"] = torch.cat([pad(r["mm_token_type_ids"], 0) for r in rows])
    return batch, keep, skipped


def _encode_one(processor, image, q, answer, steps, max_len):
    """-> (processor output, prompt length) or the reason it is skipped (a str)."""
    tok = processor.tokenizer
    body = answer if steps is None else "".join(f"{s.replace(STEP_TAG, '').strip()}{STEP_TAG}\n" for s in steps)
    n_body = len(tok.encode(body, add_special_tokens=False))
    for _ in range(3):
        enc = processor(text=[chat_prompt(processor, q) + body], images=[image], return_tensors="pt")
        n = enc["input_ids"].shape[1]
        if n <= max_len:
            break
        q_ids = tok.encode(q, add_special_tokens=False)  # cut the question's end, keep its start
        q = tok.decode(q_ids[:max(len(q_ids) - (n - max_len) - 4, 0)]) + " ..."
    if n > max_len:
        return f"{n} tokens > max_len {max_len} even with the question cut"
    if steps is not None and int((enc["input_ids"] == tok.convert_tokens_to_ids(STEP_TAG)).sum()) != len(steps):
        return "step tags in the input do not match the number of steps"
    return enc, n - n_body


MODEL_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def hidden_states(model, batch):
    """(B, S, H) last hidden states of the language model; no logits over the vocabulary anywhere."""
    inner = model.module.model if hasattr(model, "module") else model.model
    dev = next(model.parameters()).device
    inputs = {k: batch[k].to(dev) for k in MODEL_KEYS if k in batch}
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    return inner(**inputs).last_hidden_state


def tag_logits(model, batch, ids):
    """(T, 2) logits of ("+", "-") at every step tag, in reading order: only 2 rows of the LM head at T positions.
    An implicit PRM (see implicit_logits) is read at the same tags."""
    inner = model.module if hasattr(model, "module") else model
    if getattr(inner, "implicit", None):
        return implicit_logits(model, batch, ids)
    h = hidden_states(model, batch)
    mask = batch["input_ids"].to(h.device) == ids["tag"]
    return h[mask] @ inner.lm_head.weight[[ids["pos"], ids["neg"]]].T


def answer_targets(batch, ids, device):
    """(B, S-1) True at position j when token j+1 is an answer token (not the prompt, a step tag or padding)."""
    inp = batch["input_ids"].to(device)
    pos = torch.arange(inp.shape[1], device=device)[None]
    return ((pos >= batch["prompt_lens"].to(device)[:, None]) & (batch["attention_mask"].to(device) == 1)
            & (inp != ids["tag"]))[:, 1:]


def token_logprobs(model, batch, ids):
    """(B, S) log-probability of each answer token (0 at the prompt, the tags and padding): one forward pass."""
    head = (model.module if hasattr(model, "module") else model).lm_head
    h = hidden_states(model, batch)[:, :-1]
    inp, keep = batch["input_ids"].to(h.device), answer_targets(batch, ids, h.device)
    lp = torch.zeros(inp.shape, device=h.device)
    lp[:, 1:][keep] = torch.log_softmax(head(h[keep]).float(), -1).gather(1, inp[:, 1:][keep][:, None])[:, 0]
    return lp


def implicit_logits(model, batch, ids):
    """The implicit PRM (Yuan et al. 2024, "Free process rewards without process labels"): the value of the answer
    up to a tag is beta * sum of log pi(token) - log pi_ref(token) over its tokens so far, pi_ref the frozen model it
    started from. It starts at 0 and moves along what the base already predicts: a step the base finds unlikely is
    pushed further down. Returned as (T, 2) logits (value, 0), so softmax gives sigmoid(value) like the tag head."""
    inner = model.module if hasattr(model, "module") else model
    ref, beta = inner.implicit
    lp_ref = batch.get("ref_logprobs")  # train.py caches them per record: they never change
    if lp_ref is None:
        with torch.no_grad():
            lp_ref = token_logprobs(ref, batch, ids)
    q = beta * torch.cumsum(token_logprobs(model, batch, ids) - lp_ref.to(next(model.parameters()).device), 1)
    q = q[batch["input_ids"].to(q.device) == ids["tag"]]
    return torch.stack([q, torch.zeros_like(q)], -1)


def aggregate(step_scores, how="min"):
    """One answer score from its step scores: min, mean, prod, last, or lastK (mean of the last K steps: the paper's
    hybrid that scores only the closing steps). An answer with no steps scores 0."""
    s = list(step_scores)
    if not s:
        return 0.0
    if how == "min":
        return min(s)
    if how == "mean":
        return sum(s) / len(s)
    if how == "prod":
        return math.prod(s)
    if how == "last":
        return s[-1]
    if how.startswith("last") and how[4:].isdigit():
        tail = s[-int(how[4:]):]
        return sum(tail) / len(tail)
    raise ValueError(f"unknown aggregation {how!r}: min, mean, prod, last, lastK")


@torch.no_grad()
def score_steps(model, processor, images, questions, steps, batch_size=16, max_len=1024, progress=False):
    """P(step is right) for every step of every answer, ONE forward pass per answer (batched, padded).
    Returns (scores: list of per-step lists, None for a skipped answer; skipped [(index, reason)])."""
    ids, out, skipped = token_ids(processor), [None] * len(questions), []
    for j in tqdm(range(0, len(questions), batch_size), disable=not progress, desc="scoring"):
        sl = slice(j, j + batch_size)
        todo = [i for i in range(j, min(j + batch_size, len(questions))) if steps[i]]
        skipped += [(i, "no steps") for i in range(sl.start, min(sl.stop, len(questions))) if not steps[i]]
        if not todo:
            continue
        batch, keep, skip = encode(processor, [images[i] for i in todo], [questions[i] for i in todo],
                                   steps=[steps[i] for i in todo], max_len=max_len)
        skipped += [(todo[k], why) for k, why in skip]
        if batch is None:
            continue
        p = torch.softmax(tag_logits(model, batch, ids).float(), -1)[:, 0].tolist()  # (T,) P("+") per tag
        k = 0
        for i in (todo[x] for x in keep):
            out[i] = p[k:k + len(steps[i])]
            k += len(steps[i])
    return out, skipped


@torch.no_grad()
def score_prefixes(model, processor, image, question, steps, max_len=1024):
    """The slow reference: each prefix scored on its own (its last tag). Equal to score_steps (a test checks it)."""
    s, _ = score_steps(model, processor, [image] * len(steps), [question] * len(steps),
                       [steps[:k + 1] for k in range(len(steps))], batch_size=1, max_len=max_len)
    return [x[-1] for x in s]


def load_inputs(problems_path, candidates_path, only_id=None):
    """(problems by id, candidates, images by problem id): candidates with no `steps` are split from `text`."""
    import data
    from PIL import Image
    probs = {p["id"]: p for p in data.read_jsonl(problems_path, "problem")}
    cands = data.read_jsonl(candidates_path, "candidate")
    if only_id:
        cands = [c for c in cands if c["id"] == only_id]
        if not cands:
            raise SystemExit(f"no candidate with id {only_id!r} in {candidates_path}")
    missing = sorted({c["problem_id"] for c in cands} - set(probs))
    if missing:
        raise SystemExit(f"{candidates_path}: problem ids not in {problems_path}: {missing[:5]}")
    images = {}
    for pid in {c["problem_id"] for c in cands}:
        path = data.resolve_image(problems_path, probs[pid]["image"])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{problems_path}: problem {pid}: image not found: {path}")
        images[pid] = Image.open(path).convert("RGB")
    for c in cands:
        if not c.get("steps") and c.get("text"):
            c["steps"] = split_steps(c["text"])
    return probs, cands, images


def show(image, question, steps, scores, out, title=""):
    """A picture of one scored answer: the image, the question, each step on a red-to-green band with its score."""
    from PIL import Image, ImageDraw, ImageFont
    import textwrap
    font, W = ImageFont.load_default(size=14), 900
    lines = [(textwrap.wrap(s, 90) or [""], sc) for s, sc in zip(steps, scores)]
    qlines = textwrap.wrap(question, 70)
    H = max(270, 40 + 18 * len(qlines)) + sum(18 * len(ls) + 10 for ls, _ in lines) + 20
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    img.paste(image.resize((240, 240), Image.NEAREST), (10, 10))
    d.text((265, 10), title, fill="gray", font=font)
    for i, q in enumerate(qlines):
        d.text((265, 32 + 18 * i), q, fill="black", font=font)
    y = max(270, 40 + 18 * len(qlines))
    for k, (ls, sc) in enumerate(lines):
        h = 18 * len(ls) + 6
        colour = (int(255 * (1 - sc)), int(200 * sc), 60)
        d.rectangle((10, y, W - 10, y + h), fill=tuple(int(c * 0.35 + 255 * 0.65) for c in colour), outline=colour)
        d.text((16, y + 3), f"{sc:.2f}", fill=colour, font=font)
        for r, line in enumerate(ls):
            d.text((70, y + 3 + 18 * r), (f"{k + 1}. " if r == 0 else "   ") + line, fill="black", font=font)
        y += h + 4
    img.save(out)


@dataclass
class Args:
    model: str = field(default="tiny", metadata={"help": "tiny | tiny-init | a checkpoint folder or hub id"})
    problems: str = field(default="", metadata={"help": "problems JSONL"})
    candidates: str = field(default="", metadata={"help": "candidates JSONL"})
    out: str = field(default="", metadata={"help": "write score records here (JSONL)"})
    show: str = field(default="", metadata={"help": "write a PNG of one candidate's step scores instead"})
    id: str = field(default="", metadata={"help": "candidate id for --show (default: the first)"})
    judge: str = field(default="", metadata={"help": "VLM-as-judge instead of the trained PRM head: logits | generate"})
    batch_size: int = field(default=16, metadata={"help": "answers per forward pass"})
    max_len: int = field(default=2048, metadata={"help": "maximum tokens per answer (question cut first)"})
    device: str = field(default="", metadata={"help": "cpu | cuda (default: cuda if available)"})


def main(a: Args):
    import data
    if not (a.problems and a.candidates and (a.out or a.show)):
        raise SystemExit("give --problems, --candidates and --out (or --show OUT.png)")
    probs, cands, images = load_inputs(a.problems, a.candidates, a.id or None)
    if a.show:
        cands = cands[:1]
    model, processor = load(a.model, device=a.device or None)
    ims = [images[c["problem_id"]] for c in cands]
    qs = [probs[c["problem_id"]]["question"] for c in cands]
    st = [c["steps"] for c in cands]
    if a.judge:
        import judge
        scores, fails = judge.judge_steps(model, processor, ims, qs, st, a.judge, a.batch_size)
        skipped = [(i, "no steps") for i, s in enumerate(st) if not s]
        print(f"judge ({a.judge}): {fails} parse failures out of {sum(map(len, st))} steps")
    else:
        scores, skipped = score_steps(model, processor, ims, qs, st, a.batch_size, a.max_len, progress=True)
    for i, why in skipped:
        print(f"skipped {cands[i]['id']}: {why}")
    if a.show:
        if scores[0] is None:
            raise SystemExit(f"candidate {cands[0]['id']} could not be scored: {skipped}")
        show(ims[0], qs[0], st[0], [s if s is not None else 0.0 for s in scores[0]], a.show,
             f"{cands[0]['id']}  model {a.model}  correct={cands[0].get('correct')}")
        print(f"wrote {a.show}")
        return scores
    recs = [{"candidate_id": c["id"], "scores": s, "model": a.model, "method": "judge_prm" if a.judge else "prm"}
            for c, s in zip(cands, scores) if s is not None and None not in s]
    data.write_jsonl(a.out, recs, "score")
    print(f"wrote {len(recs)} score records to {a.out} ({len(cands) - len(recs)} skipped)")
    return scores


if __name__ == "__main__":
    main(parse_args(Args, doc=__doc__))

"""VLM-as-a-judge (ViLBench): a model that was never trained as a reward model rates answers with a 1-5 rubric.

    python prm.py --model tiny --problems P --candidates C --out judge.jsonl --judge logits     # judge PRM
    python orm.py --model tiny --problems P --candidates C --out judge.jsonl --judge generate   # judge ORM

PRM mode rates each step given the steps before it (one call per prefix); ORM mode rates the whole answer.
A served judge (--model http://HOST:PORT/v1, api.py) rates the same way through the chat-completions API.
"""
import math
import re

import torch

import api
from model import encode, generate, hidden_states, unwrap


# The paper's judge rubric (ViLBench, VLM-as-a-judge): rate 1-5 on relevance, coherence, accuracy and clarity.
# fork here: your own rubric (keep the "Overall Score: N" ending that rate() reads)
RUBRIC = ("You are a careful judge of visual math solutions. Look at the image and the question, then rate the "
          "{what} from 1 (poor) to 5 (excellent) for relevance, coherence, accuracy and clarity. "
          "End your reply with \"Overall Score: N\".\n\nQuestion: {question}\n\nSolution:\n{solution}")


def prompt(question, steps, upto=None):
    """ORM mode (upto None): judge the whole answer. PRM mode: judge step `upto` given the steps before it."""
    if upto is None:
        return RUBRIC.format(what="whole solution", question=question, solution="\n".join(steps))
    sol = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps[:upto + 1]))
    return RUBRIC.format(what=f"latest step (Step {upto + 1})", question=question, solution=sol)


def parse_score(reply):
    """A judge's reply -> its last "Overall Score: N" (1-5) as (N - 1) / 4, or None when it has none."""
    m = re.findall(r"Overall Score:\s*\**\s*([1-5])\b", reply)
    return (int(m[-1]) - 1) / 4 if m else None


@torch.no_grad()
def rate(model, processor, images, prompts, mode="logits", batch_size=8, max_new_tokens=256):
    """Judge scores in [0, 1] ((E - 1) / 4 of a 1-5 score). logits: the expected score over the tokens "1".."5"
    right after "Overall Score:" (deterministic, never fails to parse). generate: greedy text, parse the last
    "Overall Score: N"; a reply without one is a parse failure (score None, counted)."""
    if isinstance(model, api.Client):
        return rate_served(model, images, prompts, mode, max_new_tokens)
    tok = processor.tokenizer
    digits = [tok.encode(str(d), add_special_tokens=False)[-1] for d in range(1, 6)]
    scores, failures = [], 0
    for j in range(0, len(prompts), batch_size):
        ims, ps = images[j:j + batch_size], prompts[j:j + batch_size]
        if mode == "generate":
            for text in generate(model, processor, ims, ps, max_new_tokens=max_new_tokens):
                scores.append(parse_score(text))
                failures += scores[-1] is None
            continue
        batch, _, _ = encode(processor, ims, ps, answers=["Overall Score: "] * len(ps), max_len=10**6)
        hs = hidden_states(model, batch)  # (B, S, H): read the logits after the last real token of each row
        last = batch["attention_mask"].sum(1).to(hs.device) - 1
        w = unwrap(model).lm_head.weight[digits]  # (5, H)
        p = torch.softmax((hs[torch.arange(len(ps)), last] @ w.T).float(), -1)
        scores += (((p * torch.arange(1, 6, device=p.device)).sum(-1) - 1) / 4).tolist()
    return scores, failures


def rate_served(client, images, prompts, mode="logits", max_new_tokens=256):
    """rate() through a server. generate: greedy text, parsed. logits: the expected score over "1".."5" from the
    top_logprobs (20, vLLM's most) of the token after "Overall Score: " (a digit the server does not list counts 0;
    none listed: a failure); a reply without logprobs (a server that does not give them) is judged by generate."""
    if mode == "generate":
        outs = client.chat([client.body(api.messages(im, p), 1, 0.0, max_new_tokens) for im, p in zip(images, prompts)])
        scores = [parse_score(api.texts(o, 1)[0]) for o in outs]
        return scores, sum(s is None for s in scores)
    outs = client.chat([client.body(api.messages(im, p, "Overall Score: "), 1, 0.0, 1, prefix=True, logprobs=True,
                                    top_logprobs=20) for im, p in zip(images, prompts)])
    scores, plain = [], []
    for i, o in enumerate(outs):
        lp = o["choices"][0].get("logprobs")
        top = ((lp or {}).get("content") or [{}])[0].get("top_logprobs") or []
        p = {int(t["token"].strip()): math.exp(t["logprob"]) for t in top if t["token"].strip() in list("12345")}
        scores.append((sum(d * v for d, v in p.items()) / sum(p.values()) - 1) / 4 if p else None)
        plain += [i] if lp is None else []
    if plain:
        redo, _ = rate_served(client, [images[i] for i in plain], [prompts[i] for i in plain], "generate",
                              max_new_tokens)
        for i, s in zip(plain, redo):
            scores[i] = s
    return scores, sum(s is None for s in scores)


def judge_steps(model, processor, images, questions, steps, mode="logits", batch_size=8):
    """The paper's judge PRM: one judge call per step prefix. Returns per-step score lists and parse failures."""
    flat, index = [], []
    for i, st in enumerate(steps):
        for k in range(len(st)):
            flat.append((images[i], prompt(questions[i], st, upto=k)))
            index.append(i)
    s, fails = rate(model, processor, [f[0] for f in flat], [f[1] for f in flat], mode, batch_size)
    out = [[] for _ in steps]
    for i, x in zip(index, s):
        out[i].append(x)
    return out, fails


def judge_answers(model, processor, images, questions, steps, mode="logits", batch_size=8):
    """The paper's judge ORM: one rubric prompt per whole answer; scores in [0, 1] and the parse failures."""
    return rate(model, processor, images, [prompt(q, st) for q, st in zip(questions, steps)], mode, batch_size)

"""Policies and judges served by an inference engine: a client of the OpenAI-compatible chat-completions API that
`vllm serve` and SGLang expose (lab/serve.py serves any checkpoint the loader reads the same way, for tests and
trials). ServedPolicy and ServedJudge have the methods of the local ones (policy.py, judge.py), so the tree search
and the judges run on them unchanged:

    python -m lab.api pool --url http://localhost:8000/v1 --n-problems 200 --n 16 --out out/v/pool   # candidates
    python -m lab.api label --policy http://localhost:8000/v1 --method mcts --n-problems 500 --out out/v/labels.jsonl
    python -m lab.api search --policy http://localhost:8000/v1 --n-problems 40 --out out/v/search   # step search
    python -m lab.api judge --model http://localhost:8000/v1 --mode prm --problems P --candidates C --out j.jsonl
    ... --timeout 60      # every command: seconds a request may take in all (default 300)

Requests carry the image as a base64 data URL. A rollout continues a partial solution: the request ends with an
assistant message ("Step 1: ... Step k+1: ") and sets continue_final_message: true, add_generation_prompt: false
(vLLM's and SGLang's request fields; the chat template then leaves the last turn open). The judge's logit score reads
top_logprobs of the token after "Overall Score: ". Many requests are in flight at once (threads), so the server can
batch them; a failed request is retried a bounded number of times (after the server's Retry-After, if it
sends one), then the run stops with the URL and the reason (tree_search's --resume loses nothing); --timeout
bounds each request as a whole. The standard library does it all (http.client, json, threads): the
openai package would be one more dependency, and vLLM's continuation fields would still go in by hand (its
extra_body).
"""
import argparse
import base64
import http.client
import io
import json
import math
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

import judge
import search
import tree_search
from common import cli, data, tasks
from common.tasks import image_of
from lab import serve
from policy import candidate, continuation_head, read_solution, read_step, step_marker


def is_url(name):
    return str(name).startswith(("http://", "https://"))


def data_url(image):
    """A PIL image as a PNG data URL (how the OpenAI vision API takes an image inline)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages(image, question, prefix=None):
    """The chat: the user's image and question, and (to continue) the assistant's text so far."""
    user = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                        {"type": "text", "text": question}]}
    return [user] + ([{"role": "assistant", "content": prefix}] if prefix else [])


TIMEOUT = 300.0  # seconds a request may take in all (--timeout): a 3B policy's 16 samples on a busy server
MAX_RETRY_AFTER = 60.0  # seconds: a server's Retry-After is honoured up to this
TIMEOUT_HELP = f"seconds a request may take in all, its reply included (default {TIMEOUT:g})"


def retry_after(value):
    """A Retry-After header's seconds, at most MAX_RETRY_AFTER; None when absent or not a number (a date)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else None


def completion(raw):
    """A reply's bytes -> the chat completion; a ValueError when it is not JSON or not a completion."""
    out = json.loads(raw)
    if not (isinstance(out, dict) and isinstance(out.get("choices"), list) and out["choices"]
            and all(isinstance((c.get("message") or {}).get("content"), str) for c in out["choices"])):
        raise ValueError(f"not a chat completion: {json.dumps(out)[:200]}")
    return out


class Client:
    """POST /chat/completions with retries; chat(bodies) sends up to `in_flight` of them at once, answers in order."""

    def __init__(self, url, model="", in_flight=16, retries=3, timeout=TIMEOUT, backoff=0.5):
        self.url, self.model, self.in_flight = url.rstrip("/"), model, in_flight
        self.retries, self.timeout, self.backoff = retries, timeout, backoff

    def body(self, msgs, n=1, temperature=0.0, max_tokens=96, seed=None, prefix=False, **extra):
        """A request; prefix=True: continue the final (assistant) message instead of starting a new turn."""
        b = {"model": self.model, "messages": msgs, "n": n, "temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            b["seed"] = int(seed) % 2**31
        if prefix:
            b.update(continue_final_message=True, add_generation_prompt=False)
        return {**b, **extra}

    def post(self, body):
        """One request -> its parsed response. Connection failures, timeouts, cut-off replies, 5xx, 429 and
        malformed answers are retried after the server's Retry-After (bounded) or a growing backoff; a 4xx is
        not. After the last attempt a ConnectionError (or ValueError) names the URL and what went wrong."""
        last, wait = "", None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(wait if wait is not None else self.backoff * 2 ** (attempt - 1))
            wait = None
            try:
                status, wait, raw = self.send(body)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timed out, cut short
                last = f"{type(e).__name__}: {e}"
                continue
            if status >= 400:
                last = f"HTTP {status}: {raw[:300].decode(errors='replace')}"
                if status < 500 and status != 429:  # the request itself is wrong: retrying cannot help
                    raise ValueError(f"{self.url}: {last}")
                continue
            try:
                return completion(raw)
            except ValueError as e:  # not JSON, or not a chat completion
                last = str(e)[:300]
        raise ConnectionError(f"{self.url}: no answer after {self.retries + 1} attempts; last: {last}")

    def send(self, body):
        """POST `body` -> (status, Retry-After seconds or None, the reply's bytes), all of it within
        `timeout` seconds: each wait on the socket gets only the time left, so a dripped reply cannot outlast
        it."""
        deadline = time.monotonic() + self.timeout
        late = f"no whole reply within {self.timeout:g} s (--timeout)"

        def left():
            seconds = deadline - time.monotonic()
            if seconds <= 0:
                raise TimeoutError(late)
            return seconds
        url = urllib.parse.urlsplit(self.url + "/chat/completions")
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.netloc, timeout=left())
        try:
            connection.request("POST", url.path, json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
            sock = connection.sock  # the reply reads through it (the connection may let go of it first)
            sock.settimeout(left())
            reply, chunks = connection.getresponse(), []
            while True:
                sock.settimeout(left())
                chunk = reply.read1(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            if reply.length:  # the server closed before the length it announced
                raise http.client.IncompleteRead(b"".join(chunks), reply.length)
            return reply.status, retry_after(reply.headers.get("Retry-After")), b"".join(chunks)
        except TimeoutError:  # the socket's own ("timed out") says less
            raise TimeoutError(late) from None
        finally:
            connection.close()

    def chat(self, bodies):
        if len(bodies) <= 1 or self.in_flight <= 1:
            return [self.post(b) for b in bodies]
        with ThreadPoolExecutor(self.in_flight) as ex:
            return list(ex.map(self.post, bodies))


def texts(response, n):
    """The n generated texts of a response, in choice order; a server that gives another number is an error."""
    choices = sorted(response["choices"], key=lambda c: c.get("index", 0))
    if len(choices) != n:
        raise ValueError(f"asked for {n} completions, the server gave {len(choices)}")
    return [c["message"]["content"] for c in choices]


def written(response, n):
    """texts(), each with the stop string it stopped at put back (vLLM names it in stop_reason, SGLang in
    matched_stop; both leave it out of the text): what the model wrote."""
    choices = sorted(response["choices"], key=lambda c: c.get("index", 0))
    out = []
    for text, choice in zip(texts(response, n), choices):
        stop = choice.get("stop_reason", choice.get("matched_stop"))
        out.append(text + stop if isinstance(stop, str) and not text.endswith(stop) else text)
    return out


class ServedPolicy:
    """tree_search's policy from a server: rollout(problem, prefix_steps, n, seed) -> [{"steps", "answer", "text"}],
    one request of n samples per prefix; rollout_many sends many prefixes at once; next_steps sends the next step's
    marker as a stop string (one more step each, policy.read_step)."""

    def __init__(self, url, temperature=1.0, max_new_tokens=96, in_flight=16, model="", timeout=TIMEOUT):
        self.client = Client(url, model, in_flight, timeout=timeout)
        self.temperature, self.max_new_tokens, self.images = temperature, max_new_tokens, {}
        self.problems_in_flight = in_flight  # tree_search labels this many problems at once

    def body(self, problem, prefix_steps, n, seed, **extra):
        if problem["id"] not in self.images:
            self.images[problem["id"]] = image_of(problem)
        head = continuation_head(prefix_steps)
        return self.client.body(messages(self.images[problem["id"]], problem["question"], head), n, self.temperature,
                                self.max_new_tokens, tasks.seed_of(seed, problem["id"], *prefix_steps), prefix=True,
                                **extra)

    def rollout(self, problem, prefix_steps, n, seed):
        return self.rollout_many([(problem, prefix_steps, n, seed)])[0]

    def rollout_many(self, requests):
        outs = self.client.chat([self.body(*r) for r in requests])
        return [[read_solution(t, list(pre)) for t in texts(o, n)] for (p, pre, n, _), o in zip(requests, outs)]

    def next_steps(self, requests):
        outs = self.client.chat([self.body(*r, stop=[step_marker(len(r[1]) + 2)]) for r in requests])
        return [[read_step(t, list(pre)) for t in written(o, n)] for (_, pre, n, _), o in zip(requests, outs)]


class ServedJudge:
    """A judge behind a server, with judge.Judge's rate(images, prompts) -> (scores in [0, 1], parse failures).
    generate: greedy text, parsed. logits: the expected score over "1".."5" from the top_logprobs (20, vLLM's most)
    of the token after "Overall Score: " (a digit the server does not list counts 0; none listed: a failure); a
    reply without logprobs (a server that does not give them) is judged by generate."""

    def __init__(self, url, mode="logits", max_new_tokens=256, in_flight=16, model="", timeout=TIMEOUT):
        cli.choice(mode, judge.MODES, "judge mode")
        self.client = Client(url, model, in_flight, timeout=timeout)
        self.mode, self.max_new_tokens = mode, max_new_tokens

    def rate(self, images, prompts):
        return self.rate_as(self.mode, images, prompts)

    def rate_as(self, mode, images, prompts):
        client = self.client
        if mode == "generate":
            outs = client.chat([client.body(messages(im, p), 1, 0.0, self.max_new_tokens)
                                for im, p in zip(images, prompts)])
            scores = [judge.parse_score(texts(o, 1)[0]) for o in outs]
            return scores, sum(s is None for s in scores)
        outs = client.chat([client.body(messages(im, p, "Overall Score: "), 1, 0.0, 1, prefix=True, logprobs=True,
                                        top_logprobs=20) for im, p in zip(images, prompts)])
        scores, plain = [], []
        for i, o in enumerate(outs):
            lp = o["choices"][0].get("logprobs")
            top = ((lp or {}).get("content") or [{}])[0].get("top_logprobs") or []
            p = {int(t["token"].strip()): math.exp(t["logprob"]) for t in top if t["token"].strip() in list("12345")}
            scores.append((sum(d * v for d, v in p.items()) / sum(p.values()) - 1) / 4 if p else None)
            if lp is None:
                plain.append(i)
        if plain:
            redo, _ = self.rate_as("generate", [images[i] for i in plain], [prompts[i] for i in plain])
            for i, s in zip(plain, redo):
                scores[i] = s
        return scores, sum(s is None for s in scores)


def throughput(url, problems, in_flights=(1, 4, 16), requests=16, max_new_tokens=48):
    """Rollouts per second against a server at each number of requests in flight (one sample a request, T = 1)."""
    out = {}
    for k in in_flights:
        policy = ServedPolicy(url, 1.0, max_new_tokens, k)
        reqs = [(problems[i % len(problems)], [], 1, i) for i in range(requests)]
        policy.rollout_many(reqs[:1])  # warm-up (and the images encoded)
        t0 = time.perf_counter()
        policy.rollout_many(reqs)
        out[str(k)] = round(requests / (time.perf_counter() - t0), 2)
    return out


def benchmark(model_name, problems, in_flights=(1, 4, 16), requests=32):
    """throughput() against serve.py's server for `model_name` (started here on a free port, then stopped)."""
    server = serve.start(model_name)
    try:
        return throughput(server.url, problems, in_flights, requests)
    finally:
        server.shutdown()


def pool_main(argv):
    """python -m lab.api pool: candidate pools from a served policy, in the suite's record formats."""
    ap = argparse.ArgumentParser(prog="python -m lab.api pool", description=pool_main.__doc__, allow_abbrev=False)
    ap.add_argument("--url", required=True, help="the server's base URL, e.g. http://localhost:8000/v1")
    ap.add_argument("--out", required=True, help="output folder: problems.jsonl, images/, candidates.jsonl")
    ap.add_argument("--n-problems", type=cli.within(int, 1), default=20,
                    help="synthetic problems, test split (default 20)")
    ap.add_argument("--n", type=cli.within(int, 1), default=16,
                    help="answers per problem, one request of n samples (default 16)")
    ap.add_argument("--temperature", type=cli.within(float, 0.0), default=1.0,
                    help="sampling temperature (default 1.0)")
    ap.add_argument("--max-new-tokens", type=cli.within(int, 1), default=96, help="tokens per answer (default 96)")
    ap.add_argument("--in-flight", type=cli.within(int, 1), default=16, help="requests sent at once (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the problems and of each request (default 0)")
    ap.add_argument("--model", default="", help="the served model's name (vLLM: the name it was served under)")
    ap.add_argument("--timeout", type=cli.within(float, 0.001), default=TIMEOUT, help=TIMEOUT_HELP)
    a = ap.parse_args(argv)
    data.check_out(a.out, folder=True)
    probs = tasks.make_problems(a.n_problems, a.seed, "test")
    policy = ServedPolicy(a.url, a.temperature, a.max_new_tokens, a.in_flight, a.model, a.timeout)
    outs = policy.rollout_many([(p, [], a.n, a.seed) for p in tqdm(probs, desc="requests")])
    tasks.write_problems(a.out, probs)
    cands = [candidate(p, f"{p['id']}-api{j:02d}", s, a.url) for p, sols in zip(probs, outs)
             for j, s in enumerate(sols) if s["steps"]]
    data.write_jsonl(f"{a.out}/candidates.jsonl", cands, "candidate")
    accuracy = sum(c["correct"] for c in cands) / max(len(cands), 1)
    print(f"wrote {len(probs)} problems, {len(cands)} candidates (accuracy {accuracy:.2f}; "
          f"{len(probs) * a.n - len(cands)} answers with no step left out) from {a.url} to {a.out}")
    return cands


def take_timeout(argv):
    """(--timeout of a command's flags, the other flags): the commands that take another script's flags take
    this one too."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--timeout", type=cli.within(float, 0.001), default=TIMEOUT)
    known, rest = ap.parse_known_args(argv)
    return known.timeout, rest


def label_main(argv):
    """python -m lab.api label: tree_search.py's labelling with a served policy (--policy URL), same flags."""
    timeout, argv = take_timeout(argv)
    a = cli.parse_args(tree_search.Args, argv, tree_search.__doc__)
    if not a.policy.startswith(("http://", "https://")):
        raise ValueError(f"--policy {a.policy}: expected the server's URL (python tree_search.py for the others)")
    return tree_search.main(a, ServedPolicy(a.policy, a.temperature, a.max_new_tokens, a.batch_size,
                                            timeout=timeout))


def search_main(argv):
    """python -m lab.api search: search.py's step search with a served policy (--policy URL), same flags."""
    timeout, argv = take_timeout(argv)
    a = cli.parse_args(search.Args, argv, search.__doc__)
    if not is_url(a.policy):
        raise ValueError(f"--policy {a.policy}: expected the server's URL (python search.py for the others)")
    return search.main(a, ServedPolicy(a.policy, a.temperature, a.max_new_tokens, a.batch_size, timeout=timeout))


def judge_main(argv):
    """python -m lab.api judge: judge.py with a served judge (--model URL), same flags."""
    timeout, argv = take_timeout(argv)
    a = cli.parse_args(judge.Args, argv, judge.__doc__)
    return judge.main(a, ServedJudge(a.model, a.read, timeout=timeout))


COMMANDS = {"pool": pool_main, "label": label_main, "search": search_main, "judge": judge_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__ + "\n".join(f"  {name}: {fn.__doc__}" for name, fn in COMMANDS.items()))
        return None
    if not argv or argv[0] not in COMMANDS:
        raise ValueError("give a command: " + "; ".join(f"{name}: {fn.__doc__.split(': ', 1)[1]}"
                                                        for name, fn in COMMANDS.items()))
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    cli.run(main)

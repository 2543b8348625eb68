"""Serve a checkpoint (the tiny base by default) behind the subset of the OpenAI chat-completions API that lab/api.py
speaks, as `vllm serve` would: for the tests (offline, a free local port) and for trying the served path here.

    python -m lab.serve --model tiny --port 8000   # then: python -m lab.api label --policy http://localhost:8000/v1

POST /v1/chat/completions takes messages (a user turn with one image as a data URL and text; optionally a final
assistant turn to continue, with continue_final_message: true and add_generation_prompt: false), n, temperature,
max_tokens, seed, logprobs, top_logprobs and stop (as vLLM: the text ends before it, stop_reason names it); GET
/v1/models lists the model. Requests that arrive together are batched into one generate call (same temperature,
max_tokens, logprobs and stop), as an inference engine batches them; a batch is sampled with its first request's
seed, so at temperature > 0 the samples depend on what arrived together.
"""
import argparse
import base64
import io
import json
import math
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import cli, data
from common.model import generate, load, neutralise

MAX_ROWS = 128  # sequences per generate call
# What a request's numbers may be: (name, default when absent or null, whole number?, least, most)
LIMITS = (("n", 1, True, 1, MAX_ROWS), ("temperature", 1.0, False, 0.0, None),
          ("max_tokens", 96, True, 1, None), ("top_logprobs", 0, True, 0, 20), ("seed", 0, True, None, None))


def check(body):
    """Every malformed request is refused with a ValueError (a 400) that names what is wrong, never a crash:
    a JSON object whose messages are objects, a final assistant turn as a string, LIMITS' numbers finite and
    in range (temperature NaN is no temperature)."""
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        raise ValueError("messages: expected a list of objects")
    if len(msgs) > 1 and not isinstance(msgs[-1].get("content"), str):
        raise ValueError("the final assistant turn's content: expected a string")
    for name, default, whole, low, high in LIMITS:
        value = default if body.get(name) is None else body[name]
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (whole and value != int(value)) or (low is not None and value < low)
                or (high is not None and value > high)):
            bounds = f" in [{low}, {high if high is not None else 'inf'}]" if low is not None else ""
            raise ValueError(f"{name}: expected a {'whole' if whole else 'finite'} number{bounds}, got "
                             f"{json.dumps(value)}")


def parse(body):
    """A request -> (image, question, prefix or None, settings); a ValueError names what is wrong."""
    check(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or msgs[0].get("role") != "user":
        raise ValueError("messages: expected a user turn first")
    parts = msgs[0]["content"] if isinstance(msgs[0]["content"], list) else [{"type": "text", "text": msgs[0]["content"]}]
    urls = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
    if len(urls) != 1 or not urls[0].startswith("data:image/"):
        raise ValueError("messages[0]: expected one image as a data URL")
    image = data.open_image(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])), "messages[0]")
    question = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
    prefix = None
    if len(msgs) > 1:
        if not (msgs[-1].get("role") == "assistant" and body.get("continue_final_message")
                and body.get("add_generation_prompt") is False):
            raise ValueError("a final assistant turn needs continue_final_message: true, add_generation_prompt: false")
        prefix = neutralise(msgs[-1]["content"])  # as scoring reads answers (the question: generate does it)
    n, top = int(body.get("n", 1)), max(1, int(body.get("top_logprobs") or 0)) if body.get("logprobs") else 0
    stop = body.get("stop") or []
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise ValueError(f"stop: expected a string or a list of strings, got {json.dumps(body.get('stop'))[:60]}")
    key = (float(body.get("temperature", 1.0)), int(body.get("max_tokens") or 96), top, stop)
    return image, question, prefix, n, int(body.get("seed") or 0), key


def cut_at_stop(text, stop):
    """(the text before the first of the stop strings in it, that string or None): what vLLM answers."""
    hits = [(text.find(s), s) for s in stop if s in text]
    if not hits:
        return text, None
    at, first = min(hits)
    return text[:at], first


class Server(ThreadingHTTPServer):
    """The HTTP server and its one generating thread (the model is not shared between threads)."""
    daemon_threads = True

    def __init__(self, model_name="tiny", port=0, die_after=0, device=None):
        super().__init__(("127.0.0.1", port), Handler)
        self.name, self.jobs, self.served, self.die_after = model_name, queue.Queue(), 0, die_after
        self.model, self.processor = load(model_name, device=device)
        threading.Thread(target=self.work, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"

    def work(self):
        while True:
            jobs = [self.jobs.get()]
            while sum(j["n"] for j in jobs) < MAX_ROWS:  # everything that arrived meanwhile, same settings
                try:
                    jobs.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            for key in dict.fromkeys(j["key"] for j in jobs):
                self.run([j for j in jobs if j["key"] == key], key)

    def run(self, jobs, key):
        (temp, max_tokens, top, stop), rows = key, [j for j in jobs for _ in range(j["n"])]
        try:
            out = generate(self.model, self.processor, [j["image"] for j in rows], [j["question"] for j in rows],
                           [j["prefix"] or "" for j in rows], max_tokens, temp, jobs[0]["seed"], logprobs=top,
                           stop=stop)
            texts, lps = out if top else (out, [None] * len(rows))
            i = 0
            for j in jobs:
                j["result"] = list(zip(texts[i:i + j["n"]], lps[i:i + j["n"]]))
                i += j["n"]
        except Exception as e:  # noqa: BLE001 (a failed batch answers 500 to each of its requests)
            for j in jobs:
                j["error"] = f"{type(e).__name__}: {e}"
        for j in jobs:
            j["done"].set()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        self.reply(200, {"object": "list", "data": [{"id": self.server.name, "object": "model"}]})

    def do_POST(self):
        s = self.server
        s.served += 1
        if s.die_after and s.served > s.die_after:  # a server that dies mid-run (tests)
            threading.Thread(target=lambda: (s.shutdown(), s.server_close()), daemon=True).start()
            self.close_connection = True
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            image, question, prefix, n, seed, key = parse(body)
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as e:  # any malformed body: a 400
            return self.reply(400, {"error": {"message": f"bad request: {e}"}})
        job = {"image": image, "question": question, "prefix": prefix, "n": n, "seed": seed, "key": key,
               "done": threading.Event()}
        s.jobs.put(job)
        job["done"].wait()
        if "error" in job:
            return self.reply(500, {"error": {"message": job["error"]}})
        choices = []
        for i, (text, lp) in enumerate(job["result"]):
            content, stop = cut_at_stop(text, job["key"][3])
            choices.append({"index": i, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                            "stop_reason": stop, **({"logprobs": {"content": lp}} if lp is not None else {})})
        self.reply(200, {"object": "chat.completion", "model": s.name, "choices": choices})


def start(model_name="tiny", port=0, die_after=0, device=None):
    """A server in a background thread -> the Server (its .url; .shutdown() stops it)."""
    s = Server(model_name, port, die_after, device)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--model", default="tiny", help="tiny | tiny-init | a checkpoint folder")
    ap.add_argument("--port", type=cli.within(int, 0, 65535), default=8000,
                    help="port on 127.0.0.1 (0: a free one)")
    ap.add_argument("--device", default="", type=cli.device, help="cpu | cuda (default: cuda if available)")
    a = ap.parse_args(argv)
    s = Server(a.model, a.port, device=a.device or None)
    print(f"serving {a.model} at {s.url} (Ctrl-C stops)", flush=True)
    s.serve_forever()


if __name__ == "__main__":
    cli.run(main)

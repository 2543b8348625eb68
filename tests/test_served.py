"""Policies and judges through the OpenAI-compatible API, end to end and offline: serve.py serves the tiny
base on a free local port; labels from --policy URL equal the in-process policy's at temperature 0; judge scores
equal the in-process judge's; a server that dies mid-run loses nothing on --resume; a server that answers errors or
garbage gets a bounded number of retries and a clear error; the candidate pools; the throughput benchmark."""
import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import prm
import policy
from lab import api
from common import data
import judge
from common import model as vlm
from lab import serve
from common import tasks
import tree_search


@pytest.fixture(scope="module")
def server():
    s = serve.start("tiny")
    yield s
    s.shutdown()


def labels(tmp_path, name, policy, **kw):
    a = tree_search.Args(policy=policy, method="mcts", n_problems=4, rollouts=3, samples=2, temperature=0.0,
                         max_new_tokens=64, out=str(tmp_path / name / "labels.jsonl"), **kw)
    if policy.startswith("http"):  # the served path's command line: python -m lab.api label --policy URL ...
        argv = [f"--{k.replace('_', '-')}" if v is True else f"--no-{k.replace('_', '-')}" if v is False
                else f"--{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(a).items()]
        api.main(["label", *argv])
    else:
        tree_search.main(a)
    return [(r["id"], r["completions"], r["labels"], r["first_error"])
            for r in data.read_jsonl(a.out, "labelled")]


def test_labels_from_a_served_policy_equal_the_in_process_policy(tmp_path, server):
    served, local = labels(tmp_path, "served", server.url), labels(tmp_path, "local", "tiny")
    assert len(served) == 8 and served == local


def test_a_rollout_continues_the_prefix_through_the_api(server):
    p = tasks.make_problems(2, 0, "train")[0]
    pre = ["There are 3 red shapes."]
    got = api.ServedPolicy(server.url, 0.0, 64).rollout(p, pre, 2, 0)
    want = policy.VLMPolicy("tiny", 0.0, 64).rollout(p, pre, 2, 0)
    assert [r["steps"] for r in got] == [r["steps"] for r in want] and got[0]["steps"][0] == pre[0]


@pytest.mark.parametrize("mode", ["logits", "generate"])
def test_served_judge_scores_equal_the_in_process_judge(server, mode):
    """generate: the same replies, parsed the same. logits: the same where all five digits are among the 20 likeliest
    tokens the server lists (vLLM's most); a digit outside them counts 0, which moves a score of the untrained tiny
    judge by up to ~0.04 (measured on 6 answers: one off by 0.042, the others by < 1e-3)."""
    probs = tasks.make_problems(6, 0, "test")
    ims, qs = [tasks.render(p) for p in probs], [p["question"] for p in probs]
    st = [[s for s, _, _ in tasks.gold_steps(p)] for p in probs]
    m, proc = prm.load("tiny", device="cpu")
    local, lf = judge.judge_answers(judge.Judge(m, proc, mode), ims, qs, st)
    served, sf = judge.judge_answers(api.ServedJudge(server.url, mode), ims, qs, st)
    assert lf == sf
    if mode == "generate":
        assert served == local
    else:
        d = sorted(abs(a - b) for a, b in zip(local, served))
        assert d[-1] <= 0.05 and d[len(d) // 2] <= 2e-3, d


def test_a_server_that_dies_mid_run_loses_nothing_on_resume(tmp_path, server):
    full = labels(tmp_path, "full", server.url)
    dying = serve.start("tiny", die_after=5)
    with pytest.raises(ConnectionError, match=r"no answer after \d+ attempts"):
        labels(tmp_path, "cut", dying.url)
    done = (tmp_path / "cut" / "labels.jsonl.done").read_text().split()
    assert len(done) < 8  # it stopped part-way
    again = serve.start("tiny", port=dying.server_address[1])  # restarted where it was (a new URL is a new run)
    try:
        assert labels(tmp_path, "cut", again.url, resume=True) == full
    finally:
        again.shutdown()


class Bad(BaseHTTPRequestHandler):
    """A server that answers every request with an error (500), garbage (200, not JSON) or a refusal (400)."""
    def log_message(self, *a):
        pass

    def do_POST(self):
        self.server.count += 1
        code, body = {"error": (500, b'{"error": "boom"}'), "garbage": (200, b"<html>nope"),
                      "refuse": (400, b'{"error": "bad model"}'), "empty": (200, b'{"choices": []}')}[self.server.kind]
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("kind,attempts,match", [("error", 3, "HTTP 500"), ("garbage", 3, "Expecting value"),
                                                 ("empty", 3, "not a chat completion"), ("refuse", 1, "HTTP 400")])
def test_errors_and_garbage_get_bounded_retries_and_a_clear_error(kind, attempts, match):
    s = ThreadingHTTPServer(("127.0.0.1", 0), Bad)
    s.kind, s.count = kind, 0
    threading.Thread(target=s.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{s.server_address[1]}/v1"
    c = api.Client(url, retries=2, backoff=0.01)
    with pytest.raises((ConnectionError, ValueError), match=match) as e:
        c.post(c.body(api.messages(tasks.render(tasks.make_problem("x", 0)), "q")))
    s.shutdown()
    assert url in str(e.value) and s.count == attempts


def test_the_server_refuses_a_continuation_without_the_flags(server):
    c = api.Client(server.url, retries=0)
    body = c.body(api.messages(tasks.render(tasks.make_problem("x", 0)), "q", "Step 1: "))  # no prefix=True
    with pytest.raises(ValueError, match="continue_final_message"):
        c.post(body)


def test_pools_from_a_served_policy(tmp_path, server):
    cands = api.main(["pool", "--url", server.url, "--out", str(tmp_path / "pool"), "--n-problems", "3", "--n", "4",
                      "--temperature", "0", "--max-new-tokens", "64"])
    recs = data.read_jsonl(tmp_path / "pool" / "candidates.jsonl", "candidate", nonempty=True)
    probs = data.read_jsonl(tmp_path / "pool" / "problems.jsonl", "problem")
    assert len(probs) == 3 and recs == json.loads(json.dumps(cands)) and len(recs) <= 12
    assert all(len({tuple(c["steps"]) for c in recs if c["problem_id"] == p["id"]}) == 1 for p in probs)  # greedy


def test_throughput_benchmark_reports_each_in_flight_count(server):
    res = api.throughput(server.url, tasks.make_problems(2, 0, "test"), (1, 4), requests=4, max_new_tokens=16)
    assert set(res) == {"1", "4"} and all(v > 0 for v in res.values())


def test_a_server_without_logprobs_is_judged_by_generate_and_parse(server):
    class NoLogprobs(api.Client):  # a server that ignores "logprobs"
        def post(self, body):
            out = super().post(body)
            for c in out["choices"]:
                c.pop("logprobs", None)
            return out
    probs = tasks.make_problems(2, 0, "test")
    args = ([tasks.render(p) for p in probs], [p["question"] for p in probs],
            [[s for s, _, _ in tasks.gold_steps(p)] for p in probs])
    no_logprobs = api.ServedJudge(server.url, "logits")
    no_logprobs.client = NoLogprobs(server.url)
    got = judge.judge_answers(no_logprobs, *args)
    assert got == judge.judge_answers(api.ServedJudge(server.url, "generate"), *args)

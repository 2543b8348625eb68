"""train.py: its defaults, exact resume, DDP with torchrun on the CPU, the same global batch at any world size,
soft labels, the implicit and likelihood heads by hand, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import policy
import bench
from common import model as vlm
import prm
from common import tasks, tiny
import train

ROOT = Path(__file__).resolve().parents[1]


def args(out, **kw):
    base = dict(objective="sft", model="tiny-init", out=str(out), max_steps=6, batch_size=4, eval_every=10**6,
                save_every=3, eval_n=4, warmup=2, lr=3e-3)
    base.update(kw)
    return train.Args(**base)


def test_defaults_are_the_shared_ones():
    a, b = train.Args(), bench.Args()
    assert (a.head, a.beta, a.max_len) == (prm.HEAD, prm.BETA, vlm.MAX_LEN) == ("likelihood", 0.1, 1024)
    assert (b.head, b.beta) == (prm.HEAD, prm.BETA)  # bench trains what train.py trains by default


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    full = train.main(args(tmp_path / "full"))
    # a crash at step 5 (the checkpoint of step 3 is on disk, step 4 is lost), then --resume
    real = train.lr_at

    def crash(step, a):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, a)
    monkeypatch.setattr(train, "lr_at", crash)
    try:
        train.main(args(tmp_path / "run"))
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(train, "lr_at", real)
    assert json.loads((tmp_path / "run" / "last" / "train_config.json").read_text())["steps_done"] == 3
    resumed = train.main(args(tmp_path / "run", resume=True))
    assert json.loads((tmp_path / "run" / "last" / "train_config.json").read_text())["steps_done"] == 6
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_soft_labels_stay_floats():
    m, p = prm.load("tiny-init", device="cpu")
    pr = tasks.make_problem("x", 0, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps])
    batch["n_steps"] = torch.tensor([len(steps)])
    ids = vlm.token_ids(p)
    l1 = train.loss_on(m, batch, ids, "prm", torch.tensor([1.0, 1.0, 0.7, 1.0]))
    l2 = train.loss_on(m, batch, ids, "prm", torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert abs(l1.item() - l2.item()) > 1e-4
    # hand computation of the soft cross-entropy at every tag
    with torch.no_grad():
        lp = torch.log_softmax(prm.step_logits(m, batch, ids).float(), -1)
        y = torch.tensor([1.0, 1.0, 0.7, 1.0])
        ref = -(y * lp[:, 0] + (1 - y) * lp[:, 1]).mean()
    assert torch.allclose(l1, ref, atol=1e-6)
    # orm: only the last tag counts
    lo = train.loss_on(m, batch, ids, "orm", torch.tensor([0.0]))
    assert torch.allclose(lo, -lp[-1, 1], atol=1e-6)


def test_torchrun_follows_the_single_process_curve(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--objective", "sft", "--model", "tiny-init", "--max-steps", "4", "--batch-size", "8",
              "--eval-every", "1000000", "--save-every", "1000000", "--warmup", "1"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
                    str(ROOT / "train.py"), *common, "--out", str(tmp_path / "ddp")], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "train.py"), *common, "--out", str(tmp_path / "one")], check=True,
                   env=env, cwd=ROOT, capture_output=True, timeout=300)
    read = lambda d: [r["loss"] for r in map(json.loads, open(d / "log.jsonl")) if "loss" in r]  # noqa: E731
    ddp, one = read(tmp_path / "ddp"), read(tmp_path / "one")
    assert len(ddp) == len(one) == 4
    # step 1 is the same batch from the same weights: the losses agree up to the per-rank token weighting
    assert all(abs(a - b) / b < 0.05 for a, b in zip(ddp, one)), (ddp, one)


def test_labelled_file_with_a_missing_image_names_the_record(tmp_path):
    from common import data
    import pytest
    policy.write_suite(tmp_path, 2, n_cands=1)
    recs = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    recs[1]["images"] = ["images/nope.png"]
    recs.append({**recs[0], "id": "empty", "completions": [], "labels": [], "first_error": -1})
    data.write_jsonl(tmp_path / "bad.jsonl", recs, "labelled")
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl:2: .*nope.png"):
        train.load_labelled(tmp_path / "bad.jsonl")
    recs[1]["images"] = recs[0]["images"]
    data.write_jsonl(tmp_path / "ok.jsonl", recs, "labelled")
    assert len(train.load_labelled(tmp_path / "ok.jsonl")) == 2  # the record with no steps is skipped (and said)


def test_implicit_head_is_the_log_likelihood_ratio_read_at_the_tags():
    m, p = prm.load("tiny-init", device="cpu")
    ids = vlm.token_ids(p)
    pr = tasks.make_problem("x", 0, kind="shop_total")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps])
    prm.make_implicit(m, "tiny-init", 0.5, "cpu")
    with torch.no_grad():
        assert torch.equal(prm.step_logits(m, batch, ids), torch.zeros(len(steps), 2))  # starts as the reference
        m.model.language_model.layers[0].mlp.down_proj.weight.add_(0.05)
        got = prm.step_logits(m, batch, ids)[:, 0]
        # by hand, from the full logits of both models
        inp = {k: batch[k] for k in vlm.MODEL_KEYS if k in batch}
        x = batch["input_ids"][0]
        lps = [torch.log_softmax(mm(**inp).logits[0, :-1].float(), -1).gather(1, x[1:, None])[:, 0]
               for mm in (m, m.implicit[0])]
        r = lps[0] - lps[1]
        tags = (x == ids["tag"]).nonzero()[:, 0].tolist()
        start = int(batch["prompt_lens"][0])
        want = [0.5 * sum(r[j - 1] for j in range(start, t) if x[j] != ids["tag"]) for t in tags]
    assert torch.allclose(got, torch.stack(want), atol=1e-4)


def test_implicit_prm_trains_saves_and_reloads_with_its_reference(tmp_path, monkeypatch):
    """Started from a relative path, the checkpoint still loads from another folder (the start model is stored
    resolved), and transformers refuses it alone (its scores need the reference) instead of scoring wrongly."""
    policy.write_suite(tmp_path, 6, n_cands=2)
    start, _ = prm.load("tiny-init", device="cpu")
    vlm.save(start, _, tmp_path / "start")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "iprm"
    m = train.main(args(out, objective="prm", data=str(tmp_path / "labels.jsonl"), head="implicit", beta=0.1,
                        save_every=10**6, model="start", device="cpu"))  # pinned: compared with a CPU reload
    assert sum(x.numel() for x in m.parameters()) == sum(x.numel() for x in m.implicit[0].parameters())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    r, p = prm.load(str(out), device="cpu")
    assert r.implicit is not None and r.implicit[1] == 0.1  # the reference comes back from train_config.json
    assert json.loads((out / "train_config.json").read_text())["model"] == str((tmp_path / "start").resolve())
    pr = tasks.make_problem("y", 1, kind="count_add")
    im, q, st = [tasks.render(pr)], [pr["question"]], [[s for s, _, _ in tasks.gold_steps(pr)]]
    scores = prm.score_steps(r, p, im, q, st)[0][0]
    assert all(abs(a - b) < 1e-6 for a, b in zip(scores, prm.score_steps(m, p, im, q, st)[0][0]))
    assert any(abs(s - 0.5) > 1e-3 for s in scores)  # trained away from the reference
    from transformers import AutoModelForImageTextToText
    with pytest.raises((ValueError, KeyError), match=vlm.IMPLICIT_TYPE):
        AutoModelForImageTextToText.from_pretrained(str(out))


def test_each_rank_gets_its_share_of_the_same_global_batch(tmp_path):
    """micro_batches: the ranks of a world of 2 (and 2 micro-batches each) together see step k's global batch of a
    world of 1, in the same order."""
    policy.write_suite(tmp_path, 6, n_cands=2)
    _, p = prm.load("tiny-init", device="cpu")
    a = args(tmp_path / "o", objective="prm", head="tag", data=str(tmp_path / "labels.jsonl"), batch_size=4)
    rows, _ = train.load_rows(a, p)
    ids = vlm.token_ids(p)
    state = lambda: {"enc": {}, "ref": {}, "skipped_ids": set(), "skipped": 0}  # noqa: E731

    def seqs(micro):  # each sequence without its padding, and its labels
        out = []
        for b, y in micro:
            ends = torch.cumsum(b["n_steps"], 0).tolist()
            out += [(b["input_ids"][i, :int(b["attention_mask"][i].sum())].tolist(),
                     y[ends[i] - int(b["n_steps"][i]):ends[i]].tolist()) for i in range(len(ends))]
        return out
    for step in (0, 3):
        one = seqs(train.micro_batches(step, a, rows, p, None, ids, 0, 1, state()))
        a2 = args(tmp_path / "o", objective="prm", head="tag", data=str(tmp_path / "labels.jsonl"), batch_size=4,
                  grad_accum=2)
        r0, r1 = (train.micro_batches(step, a2, rows, p, None, ids, r, 2, state()) for r in (0, 1))
        assert len(one) == 4 and len(r0) == len(r1) == 2
        assert [s for k in range(2) for s in seqs([r0[k]]) + seqs([r1[k]])] == one
    assert seqs(train.micro_batches(0, a, rows, p, None, ids, 0, 1, state())) != seqs(
        train.micro_batches(1, a, rows, p, None, ids, 0, 1, state()))  # the next step, the next records


def test_likelihood_head_is_each_steps_mean_log_prob_as_the_base_writes_it():
    """The likelihood head by hand: the steps as "Step k: ..." lines (no tag), a step's value a * (mean log-prob of
    its own tokens, its "Step k: " header included, the newline before it not) + b, from the full logits."""
    m, p = prm.load("tiny", device="cpu")
    ids = vlm.token_ids(p)
    pr = tasks.make_problem("x", 0, kind="count_diff")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps], native=True)
    assert ids["tag"] not in batch["input_ids"][0].tolist()
    m.likelihood = (2.0, -0.5)
    with torch.no_grad():
        got = prm.step_logits(m, batch, ids)
        inp = {k: batch[k] for k in vlm.MODEL_KEYS if k in batch}
        x = batch["input_ids"][0]
        lp = torch.log_softmax(m(**inp).logits[0, :-1].float(), -1).gather(1, x[1:, None])[:, 0]
    text = p.tokenizer.decode(x[int(batch["prompt_lens"][0]):])
    assert text == tasks.format_steps(steps, "step")
    start, want = int(batch["prompt_lens"][0]), []
    for k in range(len(steps)):
        pre = len(p.tokenizer.encode(tasks.format_steps(steps[:k], "step") + ("\n" if k else "")))
        end = len(p.tokenizer.encode(tasks.format_steps(steps[:k + 1], "step")))
        want.append(2.0 * lp[start + pre - 1:start + end - 1].mean() - 0.5)
    assert torch.allclose(got[:, 0], torch.stack(want), atol=1e-4) and torch.equal(got[:, 1], torch.zeros(len(steps)))


def test_likelihood_prm_calibrates_trains_saves_and_reloads(tmp_path):
    policy.write_suite(tmp_path, 6, n_cands=2)
    out = tmp_path / "lprm"
    a = args(out, objective="prm", model="tiny", data=str(tmp_path / "labels.jsonl"), head="likelihood", lr=1e-3,
             save_every=10**6)
    base, p = prm.load("tiny", device="cpu")
    rows = train.load_labelled(a.data)
    ab = train.calibrate(base, p, rows, a)
    # the fit: no other (a, b) on the same step log-likelihoods has a lower loss
    batch, _, _ = prm.encode_steps(p, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], native=True)
    with torch.no_grad():
        x = prm.step_logprobs(base, batch)
    y = torch.tensor([v for r in rows for v in r[3]])
    loss = lambda u, v: float(torch.nn.functional.binary_cross_entropy_with_logits(u * x + v, y))  # noqa: E731
    assert ab[2] is False  # a PRM: each step's own likelihood
    assert all(loss(*ab[:2]) <= loss(ab[0] + du, ab[1] + dv) + 1e-6 for du in (-0.3, 0, 0.3) for dv in (-0.3, 0, 0.3))
    # an ORM: the outcome on the whole answer's mean log-prob (the last step's cumulative value)
    ab_orm = train.calibrate(base, p, rows, train.Args(**{**a.__dict__, "objective": "orm"}))
    with torch.no_grad():
        whole = prm.step_logprobs(base, batch, cumulative=True)[torch.cumsum(batch["step_of"].max(1).values, 0) - 1]
    out_y = torch.tensor([r[4] for r in rows])
    lo = lambda u, v: float(torch.nn.functional.binary_cross_entropy_with_logits(u * whole + v, out_y))  # noqa: E731
    assert ab_orm[2] is True and all(lo(*ab_orm[:2]) <= lo(ab_orm[0] + du, ab_orm[1] + dv) + 1e-6
                                     for du in (-0.3, 0, 0.3) for dv in (-0.3, 0, 0.3))
    m = train.main(a)
    assert m.likelihood == ab and json.loads((out / "train_config.json").read_text())["calibration"] == list(ab)
    r, p = prm.load(str(out), device="cpu")
    assert r.likelihood == ab
    pr = tasks.make_problem("y", 1, kind="count_add")
    im, q, st = [tasks.render(pr)], [pr["question"]], [[s for s, _, _ in tasks.gold_steps(pr)]]
    got = prm.score_steps(r, p, im, q, st)[0][0]
    assert got == prm.score_steps(m, p, im, q, st)[0][0]
    before = prm.score_steps(*_with(base, ab), p, im, q, st)[0][0]
    assert any(abs(u - v) > 1e-4 for u, v in zip(got, before))  # trained away from the calibrated base


def _with(model, ab):
    model.likelihood = ab
    return (model,)


def test_likelihood_loss_leaves_out_the_steps_after_the_first_error():
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.7, 0.2, 1.0, 0.0])
    assert train.after_first_error(y, torch.tensor([3, 2, 4])).tolist() == [
        False, False, True, False, False, False, False, True, True]
    m, p = prm.load("tiny", device="cpu")
    m.likelihood = (1.0, 0.0)
    ids = vlm.token_ids(p)
    pr = tasks.make_problem("x", 0, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps], native=True)
    batch["n_steps"] = torch.tensor([len(steps)])
    lab = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        v = prm.step_logits(m, batch, ids)[:, 0]
        nll = torch.nn.functional.binary_cross_entropy_with_logits(v, lab, reduction="none")
        assert torch.allclose(train.loss_on(m, batch, ids, "prm", lab), nll[:2].mean())


def test_a_misspelt_head_or_objective_is_refused_before_anything_runs(tmp_path):
    for kw, name in (({"head": "implict"}, "--head"), ({"objective": "prn"}, "--objective")):
        with pytest.raises(ValueError, match=f"{name} '[a-z]*': expected one of"):
            train.main(args(tmp_path / "x", **kw))
        assert not (tmp_path / "x").exists()


def calibration_rows(n=8):
    """(image, question, steps, labels, outcome, id) rows: every even step labelled right, every odd one wrong."""
    rows = []
    for i, pr in enumerate(tasks.make_problems(n, 0, "train")):
        st = [s for s, _, _ in tasks.gold_steps(pr)]
        rows.append((tasks.render(pr), pr["question"], st, [float(k % 2 == 0) for k in range(len(st))], 1.0, i))
    return rows


@pytest.mark.parametrize("right_is_likelier", [True, False])
def test_a_calibration_slope_at_or_below_zero_warns(right_is_likelier, monkeypatch, capsys):
    """The likelihood head's fit: a likelier step should score higher. Labels that say the opposite (too few, or
    flipped) give a slope <= 0, and that is said, not trained on in silence."""
    def fake_step_logprobs(model, batch, cumulative=False):  # (T,) one log-likelihood a step, in reading order
        likely, unlikely = (-1.0, -3.0) if right_is_likelier else (-3.0, -1.0)
        return torch.tensor([likely if k % 2 == 0 else unlikely
                             for n in batch["step_of"].max(1).values.tolist() for k in range(n)])
    monkeypatch.setattr(prm, "step_logprobs", fake_step_logprobs)
    a = train.Args(objective="prm")
    slope, _, _ = train.calibrate(None, tiny.tiny_processor(), calibration_rows(), a)
    warned = "calibration slope" in capsys.readouterr().err
    assert (slope > 0 and not warned) if right_is_likelier else (slope < 0 and warned)


def test_a_held_out_set_without_a_wrong_step_says_so(monkeypatch):
    class Model:  # evaluate_rm only switches modes; the scores come from the patched score_steps
        def eval(self):
            pass

        def train(self):
            pass
    rows = calibration_rows(3)
    monkeypatch.setattr(prm, "score_steps", lambda m, p, ims, qs, st, *rest: ([[0.9] * len(s) for s in st], []))
    all_right = [r[:3] + ([1.0] * len(r[2]),) + r[4:] for r in rows]
    res = train.evaluate_rm(Model(), None, train.Args(), all_right)
    assert "step_auc" not in res and "first_error_f1" not in res and "every held-out step is right" in res["note"]
    assert train.evaluate_rm(Model(), None, train.Args(), []) == {"note": "no held-out answer to score"}
    mixed = train.evaluate_rm(Model(), None, train.Args(), rows)
    labels = [y for r in rows for y in r[3]]  # every score 0.9: the right steps are the accurate ones
    assert mixed["step_auc"] == 0.5 and mixed["step_acc"] == round(sum(labels) / len(labels), 4)


def test_a_loss_that_is_not_finite_stops_training_with_nothing_saved(tmp_path):
    """A learning rate of 1e6 blows the tag head up: training stops naming the step, and no model is saved."""
    policy.write_suite(tmp_path / "suite", 4, seed=0)
    a = train.Args(objective="prm", head="tag", model="tiny", data=str(tmp_path / "suite" / "labels.jsonl"),
                   out=str(tmp_path / "prm"), max_steps=6, batch_size=4, lr=1e6, warmup=1, eval_every=100,
                   save_every=100, device="cpu")
    with pytest.raises(ValueError, match=r"step \d+: the loss is .* not finite"):
        train.main(a)
    assert not (tmp_path / "prm" / "config.json").exists()


def test_an_outcome_outside_0_1_names_the_file_line_and_field(tmp_path):
    from common import data
    rec = {"id": "r", "images": ["x.png"], "prompt": "q", "completions": ["a"], "labels": [1.0], "meta": {"correct": 7}}
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(data.RecordError, match=r'l.jsonl:1: field "meta.correct": expected true, false or a number'):
        data.read_jsonl(path, "labelled")


def test_separator_head_reads_each_steps_last_token_and_reloads(tmp_path):
    policy.write_suite(tmp_path, 6, n_cands=2)
    out = tmp_path / "sep"
    m = train.main(args(out, objective="prm", model="tiny", data=str(tmp_path / "labels.jsonl"), head="separator",
                        lr=1e-3, save_every=10**6))
    r, p = prm.load(str(out), device="cpu")
    assert prm.head_of(r) == "separator" and (out / vlm.REWARD_HEAD).exists()
    pr = tasks.make_problem("y", 1, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps], native=True)
    with torch.no_grad():
        got = prm.separator_logits(r, batch)
        h = vlm.hidden_states(r, batch)[0]
        # by hand: the last token of each step's own text, "Step k: ..." as the base writes it
        start = int(batch["prompt_lens"][0])
        ends = [start + len(p.tokenizer.encode(tasks.format_steps(steps[:k + 1]))) - 1 for k in range(len(steps))]
        want = r.reward_head(h[ends])
    assert torch.allclose(got, want, atol=1e-6)
    im, q = [tasks.render(pr)], [pr["question"]]
    assert prm.score_steps(r, p, im, q, [steps])[0][0] == prm.score_steps(m, p, im, q, [steps])[0][0]
    assert prm.score_prefixes(r, p, im[0], q[0], steps) == pytest.approx(prm.score_steps(r, p, im, q, [steps])[0][0],
                                                                          abs=1e-5)


def test_a_probe_trains_the_separator_head_alone(tmp_path):
    policy.write_suite(tmp_path, 6, n_cands=2)
    m = train.main(args(tmp_path / "probe", objective="prm", model="tiny", data=str(tmp_path / "labels.jsonl"),
                        head="separator", probe=True, lr=1e-2, save_every=10**6))
    base, _ = prm.load("tiny", device="cpu")
    b = base.state_dict()
    trained = {k: v for k, v in m.state_dict().items() if not k.startswith("reward_head.")}
    assert trained.keys() == b.keys() and all(torch.equal(trained[k], b[k]) for k in b)
    prm.add_separator_head(base, seed=0)  # the layer training started from
    assert not torch.equal(m.reward_head.weight, base.reward_head.weight)  # the head moved
    with pytest.raises(ValueError, match="--probe"):
        train.main(args(tmp_path / "bad", objective="prm", model="tiny", data=str(tmp_path / "labels.jsonl"),
                        head="likelihood", probe=True))


def test_keep_every_keeps_the_start_and_every_nth_model(tmp_path):
    policy.write_suite(tmp_path, 6, n_cands=2)
    out = tmp_path / "curve"
    m = train.main(args(out, objective="prm", model="tiny", data=str(tmp_path / "labels.jsonl"), head="likelihood",
                        lr=1e-3, keep_every=3, save_every=10**6))
    kept = sorted(p.name for p in out.glob("step-*"))
    assert kept == ["step-000000", "step-000003", "step-000006"]
    start, _ = prm.load(str(out / "step-000000"), device="cpu")
    end, p = prm.load(str(out / "step-000006"), device="cpu")
    assert start.likelihood == m.likelihood  # the calibrated head before any step
    b, e = start.state_dict(), end.state_dict()
    assert any(not torch.equal(b[k], e[k]) for k in b) and all(torch.equal(e[k], m.state_dict()[k]) for k in e)

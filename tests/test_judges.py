"""Judges that learned to judge: the rating examples (noisy but ordered, deterministic, train contents
only), the judge training stream (train.py --data synthetic-judge: its batches, exact resume, --rating-share
checked), the judge's logits and generate modes against each other, lab.judges on literal pools."""
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import judge
import policy
import train
from common import cli, tasks
from common.model import MODEL_KEYS, SHIPPED, encode, hidden_states, load, unwrap
from lab import judge_recipes, judges

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|im_end|>"


def gold(prob):
    return [text for text, _, _ in tasks.gold_steps(prob)]


def score_of(target):
    assert target.startswith(judge.SCORE_PREFIX) and len(target) == len(judge.SCORE_PREFIX) + 1, target
    return int(target[-1])


def test_verdicts_read_the_oracle_for_each_step_and_the_answer():
    prob = tasks.make_problem("v", 0, kind="count_add")  # count, count, add, answer
    steps = gold(prob)
    assert judge.verdicts(prob, {"steps": steps, "correct": True}) == [
        (0, "right"), (1, "right"), (2, "right"), (3, "right"), (None, "right")]
    a, b = prob["facts"][prob["facts"]["A"]], prob["facts"][prob["facts"]["B"]]
    miscount = [steps[0].replace(str(a), str(a + 1)), steps[1], f"{a + 1} + {b} = {a + b}.", steps[3]]
    # the first count is wrong, the sum is wrong for the claimed count, and the answer is right: lucky
    assert judge.verdicts(prob, {"steps": miscount, "correct": True}) == [
        (0, "wrong"), (1, "wrong"), (2, "wrong"), (3, "wrong"), (None, "lucky")]
    wrong_sum = steps[:2] + [f"{a} + {b} = {a + b + 1}.", f"The answer is {a + b + 1}."]
    assert judge.verdicts(prob, {"steps": wrong_sum, "correct": False}) == [
        (0, "right"), (1, "right"), (2, "wrong"), (3, "wrong"), (None, "wrong")]


def rated_targets(n_problems=300, seed=0):
    """{("prm" | "orm", verdict): [score, ...]} over weak and strong sampled solutions of train problems."""
    out = {}
    for i in range(n_problems):
        prob = tasks.make_problem(f"t{i}", seed)
        for strength in ("weak", "strong"):
            for sol in policy.candidates(prob, 2, seed, strength):
                verdict_of = {judge.prompt(prob["question"], sol["steps"], upto=k):
                              ("orm" if k is None else "prm", v) for k, v in judge.verdicts(prob, sol)}
                for prompt, target in judge.rating_examples(prob, sol):
                    out.setdefault(verdict_of[prompt], []).append(score_of(target))
    return out


def test_rating_targets_are_noisy_but_ordered():
    got = rated_targets()
    mean = {k: statistics.mean(v) for k, v in got.items()}
    assert mean["prm", "right"] > 3.8 > 2.4 > mean["prm", "wrong"]
    assert mean["orm", "right"] > mean["orm", "lucky"] > mean["orm", "wrong"]
    assert len(got["orm", "lucky"]) >= 10  # enough lucky answers to read their mean
    for mode in ("prm", "orm"):  # noisy, not the oracle's truth: right work rated low, wrong work high
        assert any(s <= 2 for s in got[mode, "right"]) and any(s >= 4 for s in got[mode, "wrong"])
    for verdict in ("right", "wrong"):  # drawn from RATING_NOISE: each score's share near its weight
        scores = got["prm", verdict]
        for s, weight in zip(range(1, 6), judge.RATING_NOISE[verdict]):
            assert scores.count(s) / len(scores) == pytest.approx(weight, abs=0.04)


def test_exact_ratings_are_the_oracles_verdicts_as_5_3_1_in_examples_and_soft_targets():
    prob = tasks.make_problem("ex", 1, kind="count_add")
    for sol in policy.candidates(prob, 6, 1, "weak"):
        exact = judge.rating_examples(prob, sol, seed=1, noise="exact")
        rated = judge.rated_verdicts(prob, sol)
        assert [t for _, t in exact] == [judge.SCORE_PREFIX + {"right": "5", "lucky": "3", "wrong": "1"}[v]
                                         for _, v, _ in rated]
    with pytest.raises(ValueError, match="noise 'loud'"):
        judge.rating_examples(prob, sol, noise="loud")
    processor, batch, texts, verdicts, _ = soft_batch()
    soft = train.soft_rating_targets(processor, batch, verdicts, "exact")
    assert soft["rating_dist"].tolist() == [list(judge.EXACT_RATINGS[v]) for v in verdicts if v is not None]


def test_rating_examples_are_the_rubric_prompts_up_to_the_first_error_and_deterministic_per_seed():
    prob = tasks.make_problem("d", 3)
    sols = policy.candidates(prob, 12, 3, "weak")
    for sol in sols:  # every step of a faithful solution; up to the first wrong step of the others
        steps, fe = sol["steps"], tasks.first_error(prob, sol["steps"])
        rated = range(len(steps)) if fe == -1 else range(fe + 1)
        prm_prompts = [judge.prompt(prob["question"], steps, upto=k) for k in rated]
        assert [p for p, _ in judge.rating_examples(prob, sol, seed=3)] == (
            prm_prompts + [judge.prompt(prob["question"], steps)])
    assert {tasks.first_error(prob, s["steps"]) for s in sols} >= {-1, 0}  # both kinds were checked
    assert all(judge.rating_examples(prob, s, seed=3) == judge.rating_examples(prob, s, seed=3) for s in sols)
    other = [judge.rating_examples(prob, s, seed=4) for s in sols]
    assert other != [judge.rating_examples(prob, s, seed=3) for s in sols]  # another seed, other draws


def test_rated_verdicts_are_the_rating_examples_prompts_with_the_oracles_verdicts():
    prob = tasks.make_problem("rv", 2)
    sols = policy.candidates(prob, 12, 2, "weak")
    kinds = set()
    for sol in sols:
        rated = judge.rated_verdicts(prob, sol)
        assert [p for p, _, _ in rated] == [p for p, _ in judge.rating_examples(prob, sol, seed=2)]
        oracle = judge.verdicts(prob, sol)
        assert rated[-1][1] == oracle[-1][1]  # the whole answer's verdict, last
        # the steps' verdicts up to the first error: right ones, then (if any) the first wrong one
        assert [v for _, v, _ in rated[:-1]] == [v for _, v in oracle[:len(rated) - 1]]
        assert [k for _, _, k in rated] == list(range(len(rated) - 1)) + [None]
        kinds.add(tuple(v for _, v, _ in rated[:-1])[-1:])
    assert {("right",), ("wrong",)} <= kinds  # both kinds of last rated step were checked


def test_rating_examples_refuse_a_problem_outside_the_train_contents():
    for split in ("tune", "dev", "test"):
        prob = tasks.make_problems(1, 0, split)[0]
        with pytest.raises(ValueError, match=f"{split} contents"):
            judge.rating_examples(prob, policy.candidates(prob, 1, 0, "weak")[0])


def test_judge_batch_rates_a_share_and_solves_the_rest_as_synthetic_sft():
    n = 16
    solving = train.synthetic_sft(5, n, 0, EOS)
    images, questions, texts, verdicts = train.synthetic_judge(5, n, 0, EOS, 0.25)
    rated = [i for i, t in enumerate(texts) if t.startswith(judge.SCORE_PREFIX)]
    assert len(rated) == 4 and [i for i, v in enumerate(verdicts) if v is not None] == rated
    for i in range(n):
        assert images[i].tobytes() == solving[0][i].tobytes()  # the same problem in every row
        if i not in rated:
            assert (questions[i], texts[i]) == (solving[1][i], solving[2][i])
    probs = train.synthetic_problems(5, n, 0)
    for i in rated:  # a rubric prompt about this row's train problem, its target one rating and the end token
        assert tasks.split_of(probs[i]) == "train" and f"Question: {probs[i]['question']}" in questions[i]
        assert questions[i].startswith(judge.RUBRIC.split("{what}")[0])
        score_of(texts[i].removesuffix(EOS))
        # its verdict is the oracle's for that prompt, of the solution the sampler wrote (weak or strong)
        known = {p: v for strength in ("weak", "strong")
                 for p, v, _ in judge.rated_verdicts(probs[i], policy.candidates(probs[i], 1, 0, strength)[0])}
        assert verdicts[i] == known[questions[i]]
    assert train.synthetic_judge(5, n, 0, EOS, 0.0)[1:3] == solving[1:]
    assert all(t.startswith(judge.SCORE_PREFIX) for t in train.synthetic_judge(5, n, 0, EOS, 1.0)[2])
    again = train.synthetic_judge(5, n, 0, EOS, 0.25)
    assert again[1:] == (questions, texts, verdicts)  # depends only on (seed, step)
    assert train.synthetic_judge(6, n, 0, EOS, 0.25)[1] != questions


def test_judge_batch_in_groups_rates_several_answers_to_one_problem():
    n, group = 16, 4
    images, questions, texts, verdicts = train.synthetic_judge(7, n, 0, EOS, 0.75, group)
    probs = train.synthetic_problems(7, n, 0)
    rated = [i for i, v in enumerate(verdicts) if v is not None]
    assert len(rated) == 12 and train.synthetic_judge(7, n, 0, EOS, 0.75, 1)[1:] == \
        train.synthetic_judge(7, n, 0, EOS, 0.75)[1:]  # group 1: the default stream
    for g in range(0, 12, group):
        rows = rated[g:g + group]
        head = probs[rows[0]]
        known = {}  # every rated prompt of the head problem's first answers, weak and strong
        for strength in ("weak", "strong"):
            for m in range(1, group + 1):
                known.update((p, v) for p, v, _ in judge.rated_verdicts(head, policy.candidates(head, m, 0, strength)[-1]))
        for i in rows:  # each row: the head's image and a rubric prompt about one of its answers
            assert images[i].tobytes() == images[rows[0]].tobytes()
            assert f"Question: {head['question']}" in questions[i] and known[questions[i]] == verdicts[i]
        assert len({questions[i] for i in rows}) > 1  # not one answer rated four times
    assert [i for i, v in enumerate(verdicts) if v is None] == [i for i in range(n) if i not in rated]


def soft_batch(n=6, step=3):
    """A judge batch (half rated) encoded by the tiny processor, its verdicts, and the soft-loss targets."""
    _, processor = load("tiny-init", device="cpu")
    images, questions, texts, verdicts = train.synthetic_judge(step, n, 0, processor.tokenizer.eos_token, 0.5)
    batch, keep, skipped = encode(processor, images, questions, texts)
    assert keep == list(range(n)) and not skipped
    return processor, batch, texts, verdicts, train.soft_rating_targets(processor, batch, verdicts)


def test_soft_rating_targets_point_at_each_rated_rows_score_digit():
    processor, batch, texts, verdicts, soft = soft_batch()
    rated = [i for i, v in enumerate(verdicts) if v is not None]
    assert soft["rating_rows"].tolist() == rated and len(rated) == 3
    for r, pos, dist in zip(rated, soft["rating_pos"].tolist(), soft["rating_dist"]):
        # position pos of the next-token frame predicts token pos + 1: the digit the target text holds
        assert processor.tokenizer.decode([int(batch["input_ids"][r, pos + 1])]) == texts[r][len(judge.SCORE_PREFIX)]
        assert dist.tolist() == pytest.approx(judge.RATING_NOISE[verdicts[r]])
    assert processor.tokenizer.decode(soft["rating_digits"].tolist()) == "12345"


def test_soft_rating_loss_matches_a_hand_computation():
    processor, batch, texts, verdicts, soft = soft_batch()
    model, _ = load("tiny-init", device="cpu")
    ids = train.token_ids(processor)
    with torch.no_grad():
        plain = train.loss_on(model, batch, ids, "sft")
        got = train.loss_on(model, {**batch, **soft}, ids, "sft")
        logp = torch.log_softmax(model(**{k: batch[k] for k in MODEL_KEYS if k in batch}).logits.double(), -1)
    digits = [int(d) for d in soft["rating_digits"]]
    token_nll, digit_ce = [], []
    for r in range(len(texts)):  # by hand: every answer token's loss, the rated rows' digits apart
        start, end = int(batch["prompt_lens"][r]), int(batch["attention_mask"][r].sum())
        for j in range(start, end):
            if verdicts[r] is not None and j == start + len(judge.SCORE_PREFIX):
                digit_ce.append(-sum(q * logp[r, j - 1, d] for q, d in zip(judge.RATING_NOISE[verdicts[r]], digits)))
            else:
                token_nll.append(-logp[r, j - 1, int(batch["input_ids"][r, j])])
    assert len(digit_ce) == 3
    want = sum(token_nll) / len(token_nll) + sum(digit_ce) / len(digit_ce)
    assert float(got) == pytest.approx(float(want), rel=1e-4)
    assert abs(float(got) - float(plain)) > 1e-3  # the soft loss is not the sampled digit's token mean


def judge_args(out, **kw):
    base = dict(objective="sft", model="tiny-init", data="synthetic-judge", out=str(out), max_steps=6,
                batch_size=4, eval_every=10**6, save_every=3, eval_n=2, warmup=2, lr=3e-3, rating_share=0.5)
    base.update(kw)
    return train.Args(**base)


def crash_at(step_lost, args, monkeypatch):
    """Train with `args` until step `step_lost` begins, then stop as a killed run would (its last checkpoint
    on disk, that step lost)."""
    real = train.lr_at

    def crash(step, a):
        if step == step_lost:
            raise KeyboardInterrupt
        return real(step, a)
    monkeypatch.setattr(train, "lr_at", crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    monkeypatch.setattr(train, "lr_at", real)


def test_judge_stream_resumes_exactly_and_refuses_another_share(tmp_path, monkeypatch):
    full = train.main(judge_args(tmp_path / "full"))
    crash_at(4, judge_args(tmp_path / "run"), monkeypatch)  # the checkpoint of step 3 is on disk
    with pytest.raises(ValueError, match="rating_share 0.5 -> 0.25"):
        train.main(judge_args(tmp_path / "run", resume=True, rating_share=0.25))
    resumed = train.main(judge_args(tmp_path / "run", resume=True))
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["rating_share"] == 0.5


@pytest.mark.parametrize("share", ["-0.1", "1.5", "nan"])
def test_a_rating_share_out_of_range_is_refused(share, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(train.Args, ["--rating-share", share])
    assert "--rating-share" in capsys.readouterr().err
    assert cli.parse_args(train.Args, ["--rating-share", "1"]).rating_share == 1.0


def test_bad_judge_settings_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="--rating-share 1.5"):  # main called in-process, no command line
        train.main(judge_args(tmp_path / "a", rating_share=1.5))
    with pytest.raises(ValueError, match="--objective sft"):
        train.main(judge_args(tmp_path / "b", objective="prm"))
    with pytest.raises(ValueError, match="--rating-loss 'hard'"):
        train.main(judge_args(tmp_path / "c", rating_loss="hard"))
    with pytest.raises(ValueError, match="--data synthetic-judge"):
        train.main(judge_args(tmp_path / "d", data="synthetic", rating_loss="soft"))
    with pytest.raises(ValueError, match="--rating-check"):
        train.main(judge_args(tmp_path / "e", rating_loss="soft", rating_check="step"))
    with pytest.raises(ValueError, match="--rating-check 'digits'"):
        train.main(judge_args(tmp_path / "f", rating_check="digits"))
    assert not any((tmp_path / x).exists() for x in "abcdef")


def test_soft_judge_stream_resumes_exactly_and_refuses_the_sampled_loss(tmp_path, monkeypatch):
    full = train.main(judge_args(tmp_path / "full", rating_loss="soft", max_steps=4, save_every=2))
    crash_at(2, judge_args(tmp_path / "run", rating_loss="soft", max_steps=4, save_every=2), monkeypatch)
    with pytest.raises(ValueError, match="rating_loss 'soft' -> 'sample'"):
        train.main(judge_args(tmp_path / "run", resume=True, max_steps=4, save_every=2))
    resumed = train.main(judge_args(tmp_path / "run", rating_loss="soft", resume=True, max_steps=4, save_every=2))
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def dev_prompts(n_problems=4):
    """Rubric prompts (PRM and ORM mode) about sampled answers to dev problems, with their images."""
    images, prompts = [], []
    for prob in tasks.make_problems(n_problems, 0, "dev"):
        for sol in policy.candidates(prob, 1, 0, "weak") + policy.candidates(prob, 1, 0, "strong"):
            for k in (0, len(sol["steps"]) - 1, None):
                images.append(tasks.render(prob))
                prompts.append(judge.prompt(prob["question"], sol["steps"], upto=k))
    return images, prompts


def assert_modes_agree(model, processor):
    """Greedy generation writes "Overall Score: " then the digit the logits mode finds likeliest of 1..5."""
    images, prompts = dev_prompts()
    probs = judge.Judge(model, processor, "logits", batch_size=8).score_probs(images, prompts)  # (N, 5)
    replies = judge.generate(model, processor, images, prompts, max_new_tokens=len(judge.SCORE_PREFIX) + 1)
    assert all(r.startswith(judge.SCORE_PREFIX) for r in replies), replies
    written = [score_of(r) for r in replies]
    assert written == (probs.argmax(-1) + 1).tolist()
    generating = judge.Judge(model, processor, "generate", batch_size=8, max_new_tokens=20)
    scores, failures = generating.rate(images, prompts)
    assert failures == 0 and [round(4 * s) + 1 for s in scores] == written  # generate mode parses that digit
    return written


def test_a_quickly_trained_judge_writes_the_digit_its_logits_rank_first(tmp_path):
    model = train.main(judge_args(tmp_path / "quick", model="tiny", rating_share=1.0, max_steps=48,
                                  batch_size=8, lr=5e-3, warmup=4, save_every=10**6))
    _, processor = load("tiny", device="cpu")
    assert_modes_agree(model.eval(), processor)


def test_a_soft_trained_judge_puts_its_score_on_the_digits(tmp_path):
    """--rating-loss soft: after 24 steps the digit after "Overall Score: " holds most of the next token's
    probability on every prompt (the base gives it almost none on some)."""
    model = train.main(judge_args(tmp_path / "soft", model="tiny", rating_share=1.0, max_steps=24, batch_size=8,
                                  lr=5e-3, warmup=4, save_every=10**6, rating_loss="soft"))
    _, processor = load("tiny", device="cpu")
    images, prompts = dev_prompts(2)
    batch, _, _ = encode(processor, images, prompts, [judge.SCORE_PREFIX] * len(prompts))
    with torch.no_grad():
        hs = hidden_states(model.eval(), batch)
        last = batch["attention_mask"].sum(1) - 1
        p = torch.softmax(unwrap(model).lm_head(hs[torch.arange(len(prompts)), last]), -1)  # (N, V)
    digits = [processor.tokenizer.encode(str(d), add_special_tokens=False)[-1] for d in range(1, 6)]
    assert p[:, digits].sum(-1).min() > 0.5
    base, _ = load("tiny", device="cpu")
    with torch.no_grad():
        hs0 = hidden_states(base, batch)
        p0 = torch.softmax(base.lm_head(hs0[torch.arange(len(prompts)), last]), -1)
    assert p0[:, digits].sum(-1).min() < 0.01  # the base: almost none on some prompts


SHIPPED_JUDGES = sorted(name for name in SHIPPED if name.startswith("tiny-judge"))
CHECKING_JUDGES = [name for name in SHIPPED_JUDGES if judge.trained_as(name, "rating_check") in judge.CHECKS]


@pytest.mark.parametrize("name", [name for name in SHIPPED_JUDGES if name not in CHECKING_JUDGES])
def test_a_shipped_judge_writes_the_digit_its_logits_rank_first(name):
    model, processor = load(name, device="cpu")
    written = assert_modes_agree(model, processor)
    assert len(set(written)) > 1  # a judge that rates every answer alike would agree trivially


@pytest.mark.parametrize("name", CHECKING_JUDGES)
def test_a_shipped_checking_judge_writes_after_its_check_the_digit_its_logits_rank_first(name):
    j = judge.load_judge(name, batch_size=8)
    assert j.check and j.reference == bool(judge.trained_as(name, "rating_reference"))
    images, prompts = [], []
    for prob in tasks.make_problems(2, 0, "dev"):
        ref = judge.references(j, [tasks.render(prob)], [prob["question"]])[0]  # its own solution
        for sol in policy.candidates(prob, 1, 0, "weak") + policy.candidates(prob, 1, 0, "strong"):
            for k in (0, len(sol["steps"]) - 1, None):
                images.append(tasks.render(prob))
                prompts.append(judge.prompt(prob["question"], sol["steps"], upto=k, reference=ref))
    replies = j.checks(images, prompts)
    assert all(r.startswith(judge.CHECK_PREFIX) for r in replies), replies
    probs = j.score_probs(images, prompts, replies)  # (N, 5): what logits mode reads after each check
    written = judge.generate(j.model, j.processor, images, prompts, max_new_tokens=80)
    assert [w.split(judge.SCORE_PREFIX)[0] for w in written] == replies  # the same check, then the score
    digits = [int(w.split(judge.SCORE_PREFIX)[1][0]) for w in written]
    assert digits == (probs.argmax(-1) + 1).tolist() and len(set(digits)) > 1


@pytest.mark.parametrize("name", SHIPPED_JUDGES)
def test_a_shipped_judge_folder_is_a_model_with_its_card(name):
    folder = SHIPPED[name]
    card = (folder / "README.md").read_text()
    cfg = json.loads((folder / "train_config.json").read_text())
    assert (cfg["objective"], cfg["data"]) == ("sft", "synthetic-judge")
    for words in ("--objective sft --model", "--data synthetic-judge", f"trained {cfg['steps_done']} steps",
                  "python -m lab.judges", f"| {name} |"):
        assert words in card  # how it was made, and its own row of dev numbers
    for key in ("rating_share", "max_steps", "batch_size", "lr", "warmup", "seed"):  # the card's command
        flag = "--" + key.replace("_", "-")
        given = re.search(rf"{flag} (\S+)", card)
        assert float(given[1] if given else getattr(train.Args(), key)) == cfg[key], flag
    given = re.search(r"--rating-loss (\S+)", card)
    assert (given[1] if given else train.Args().rating_loss) == cfg.get("rating_loss", "sample")
    assert not (folder / "last").exists()  # no optimizer state
    assert not list(folder.glob("step-*"))  # no snapshots


def test_best_of_n_on_literal_pools():
    problems = [{"id": "p", "answer": "3"}, {"id": "q", "answer": "5"}]
    cands = [{"id": "p1", "problem_id": "p", "answer": "3", "steps": ["a", "b"], "correct": True},
             {"id": "p2", "problem_id": "p", "answer": "4", "steps": ["a", "b"], "correct": False},
             {"id": "q1", "problem_id": "q", "answer": "5", "steps": ["a", "b"], "correct": True},
             {"id": "q2", "problem_id": "q", "answer": "6", "steps": ["a", "b"], "correct": False},
             {"id": "q3", "problem_id": "q", "answer": "6", "steps": ["a", "b"], "correct": False}]
    steps = {"p1": [0.9, 0.2], "p2": [0.5, 0.5], "q1": [0.1, 0.9], "q2": [0.8, 0.8], "q3": [0.8, 0.8]}
    answers = {"p1": 0.9, "p2": 0.1, "q1": 0.4, "q2": 0.4, "q3": 0.2}
    got = judges.best_of_n(problems, cands, steps, answers, n=16)
    # random: (1/2 + 1/3) / 2; majority: p a tie of two answers (1/2), q picks 6 (0); ORM: p1 (1), q a tie of
    # q1 and q2 (1/2); PRM min: p2 (0), q2 or q3 (0); hybrid (mean of the last 2): p2 0.5 < p1 0.55 (1),
    # q2 0.8 > q1 0.5 (0)
    assert got == pytest.approx({"random": 5 / 12, "majority": 1 / 4, "orm": 3 / 4, "prm_min": 0.0,
                                 "hybrid_last2": 1 / 2})
    rows = [{"judge": "j", "bon": got}]
    assert judges.beats_random(rows) == [("j", "orm", got["orm"], got["random"]),
                                         ("j", "hybrid_last2", got["hybrid_last2"], got["random"])]


def test_step_auc_by_kind_reads_each_kind_of_step_up_to_the_first_error():
    prob = tasks.make_problem("k", 2, kind="count_add")  # steps: count, count, arith, answer
    assert [kind for _, kind, _ in tasks.gold_steps(prob)] == ["count", "count", "arith", "answer"]
    cands = [{"id": "a", "problem_id": "k", "steps": ["s"] * 4, "first_error": 1},   # count right, count wrong
             {"id": "b", "problem_id": "k", "steps": ["s"] * 4, "first_error": -1},  # all right
             {"id": "c", "problem_id": "k", "steps": ["s"] * 4, "first_error": 2}]   # arith wrong
    steps = {"a": [0.9, 0.7, 0.0, 0.0], "b": [0.6, 0.8, 0.9, 0.9], "c": [0.5, 0.2, 0.1, 0.0]}
    got = judges.step_auc_by_kind([prob], cands, steps)
    # count: right 0.9, 0.6, 0.8, 0.5, 0.2 against wrong 0.7 (a's step 2): 2 of 5 pairs ranked right; arith: b's
    # 0.9 above c's 0.1; answer: b's alone, all right (a's and c's answer steps come after their first errors)
    assert got == {"count": pytest.approx(2 / 5), "arith": 1.0, "answer": None}


def test_first_error_f1_chooses_its_threshold_on_tune_only():
    tune = ([], [{"id": "a", "first_error": 1}, {"id": "b", "first_error": -1}])
    dev = ([], [{"id": "c", "first_error": 0}, {"id": "d", "first_error": -1}])
    # on tune every threshold in (0.3, 0.6] finds both: the middle of that range, 0.45; on dev it misses c's
    # first error (c's 0.5 is above it): F1 0. A threshold chosen on dev would be 0.6 and read F1 1.
    tune_steps, dev_steps = {"a": [0.9, 0.3], "b": [0.9, 0.6]}, {"c": [0.5, 0.1], "d": [0.7, 0.8]}
    got = judges.first_error_f1(tune, tune_steps, dev, dev_steps)
    assert got["threshold"] == 0.45
    assert (got["acc_error"], got["acc_correct"], got["f1"]) == (0.0, 1.0, 0.0)


def test_lab_judges_runs_end_to_end_on_a_tiny_model(tmp_path):
    res = judges.main(judges.Args(judges="tiny-init", dev_n=2, tune_n=2, candidates=2, eval_n=2,
                                  out=str(tmp_path)))
    row = res["judges"][0]
    assert row["judge"] == "tiny-init" and set(row["bon"]) == set(judges.RULES)
    assert 0.0 <= row["orm_auc"] <= 1.0 and 0.0 <= row["prm_f1"]["f1"] <= 1.0
    assert json.loads((tmp_path / "judges.json").read_text())["judges"][0]["bon"] == pytest.approx(row["bon"])
    assert "| tiny-init |" in (tmp_path / "judges.md").read_text()
    with pytest.raises(ValueError, match="even"):
        judges.main(judges.Args(judges="tiny-init", candidates=3, out=str(tmp_path)))


def test_tune_split_measures_tune_problems_with_the_threshold_on_others():
    a = judges.Args(split="tune", dev_n=3, tune_n=2, candidates=2)
    (t_probs, t_cands), (m_probs, m_cands) = judges.split_pools(a)
    assert [p["id"] for p in t_probs] == ["tune-00000", "tune-00001"]
    assert [p["id"] for p in m_probs] == ["tune-00002", "tune-00003", "tune-00004"]
    assert all(tasks.split_of(p) == "tune" for p in t_probs + m_probs)
    assert {c["problem_id"] for c in t_cands} == {p["id"] for p in t_probs} and len(t_cands) == 4
    assert {c["problem_id"] for c in m_cands} == {p["id"] for p in m_probs} and len(m_cands) == 6
    dev = judges.split_pools(judges.Args(dev_n=3, tune_n=2, candidates=2))
    assert [p["id"] for p in dev[0][0]] == ["tune-00000", "tune-00001"]  # the default: dev measured
    assert all(tasks.split_of(p) == "dev" for p in dev[1][0])


def test_lab_judges_on_tune_solves_tune_problems(tmp_path, monkeypatch):
    seen = []
    real = judges.policy.solve

    def solve(model, processor, images, questions):
        seen.extend(questions)
        return real(model, processor, images, questions)
    monkeypatch.setattr(judges.policy, "solve", solve)
    monkeypatch.setattr(judges.train, "evaluate_sft", None)  # dev's solving measure is not called
    res = judges.main(judges.Args(judges="tiny-init", split="tune", dev_n=2, tune_n=2, candidates=2, eval_n=3,
                                  out=str(tmp_path)))
    want = [p["question"] for p in tasks.make_problems(3, 1000, "tune")]
    assert seen == want and 0.0 <= res["judges"][0]["solving"] <= 1.0
    assert "Judges on tune" in (tmp_path / "judges.md").read_text()


def test_lab_judges_help_explains_its_measures():
    r = subprocess.run([sys.executable, "-m", "lab.judges", "--help"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    for words in ("--dev-n", "--tune-n", "--judges", "Best-of-16", "first-error F1", "tune"):
        assert words in r.stdout


@pytest.mark.parametrize("name", sorted(judge_recipes.PROBES))
def test_each_judge_recipe_probe_is_a_judge_run_of_train(name):
    a = cli.parse_args(train.Args, [*judge_recipes.COMMON, *judge_recipes.PROBES[name], "--out", "x"])
    assert (a.objective, a.data) == ("sft", "synthetic-judge")
    # a checking probe learns the sampled digit (train.py refuses the soft loss with a check), the others soft
    checks = a.rating_check != "none"
    assert a.rating_loss == ("sample" if checks else "soft")
    assert checks == name.startswith(("check", "numbers", "agree")) and a.rating_reference == ("reference" in name)
    kept = judge_recipes.kept_steps(name)
    assert kept[-1] == a.max_steps and kept == list(range(a.keep_every, a.max_steps + 1, a.keep_every))


def test_judge_recipes_reads_the_last_flag_and_trains_a_probe_once(tmp_path, monkeypatch):
    assert judge_recipes.flag("--lr", ["--lr", "1", "--max-steps", "5", "--lr", "2"]) == "2"
    calls = []
    monkeypatch.setattr(judge_recipes.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    judge_recipes.train_probe("soft-lr1e-3-long", tmp_path)
    cmd = calls[0]
    assert cmd[1] == "train.py" and cmd[-2:] == ["--out", str(tmp_path / "soft-lr1e-3-long")]
    assert judge_recipes.flag("--max-steps", cmd) == "2000" and judge_recipes.flag("--lr", cmd) == "1e-3"
    assert judge_recipes.kept_steps("soft-lr1e-3-long") == [500, 1000, 1500, 2000]
    (tmp_path / "soft-lr1e-3-long").mkdir()
    (tmp_path / "soft-lr1e-3-long" / "config.json").write_text("{}")
    judge_recipes.train_probe("soft-lr1e-3-long", tmp_path)  # trained already: not again
    assert len(calls) == 1


def test_judge_settings_are_run_settings_of_judge_runs_only():
    judging = train.run_settings(train.Args(data="synthetic-judge", rating_loss="soft", rating_group=4))
    assert (judging["rating_loss"], judging["rating_group"]) == ("soft", 4)
    other = train.run_settings(train.Args(data="synthetic"))
    assert "rating_loss" not in other and "rating_group" not in other  # a run made before them still resumes


def test_a_checking_judges_targets_work_the_step_out_then_give_the_same_scores():
    prob = tasks.make_problem("ck", 1, kind="count_add")
    for sol in policy.candidates(prob, 6, 1, "weak"):
        plain = judge.rating_examples(prob, sol, seed=1)
        checked = judge.rating_examples(prob, sol, seed=1, check="step")
        assert [p for p, _ in checked] == [p for p, _ in plain]
        for (_, target), (_, score), (_, _, upto) in zip(checked, plain, judge.rated_verdicts(prob, sol)):
            check, _, rest = target.partition("\n")
            assert rest == score  # the same noisy score, on the line after the check
            assert check == judge.CHECK_PREFIX + (" ".join(gold(prob)) if upto is None else gold(prob)[upto])


def test_a_numbers_check_sets_the_rated_steps_numbers_against_the_right_ones_as_the_oracle_compares():
    prob = tasks.make_problem("nb", 1, kind="count_add")
    right = gold(prob)  # count, count, arith, answer
    a, b = sorted(tasks.gold_steps(prob)[2][2][:2])
    swapped = right[:2] + [f"{b} + {a} = {a + b}.", right[3]]  # the oracle reads numbers as a multiset: right
    wrong = [right[0].replace(str(tasks.gold_steps(prob)[0][2][0]), "99")] + right[1:]
    assert tasks.first_error(prob, swapped) == -1 and tasks.first_error(prob, wrong) == 0
    assert judge.check_text(prob, 2, swapped, "numbers") == f"{a}, {b}, {a + b} vs {a}, {b}, {a + b}"
    assert judge.check_text(prob, 0, wrong, "numbers") == f"99 vs {tasks.gold_steps(prob)[0][2][0]}"
    assert judge.check_text(prob, None, wrong, "numbers") == f"{a + b} vs {a + b}"  # ORM mode: the last steps
    assert judge.check_text(prob, 4, wrong + ["The answer is 3."], "numbers") == "3 vs none"  # a step too many
    assert judge.check_text(prob, 0, wrong, "agree") == f"99 vs {tasks.gold_steps(prob)[0][2][0]}: they differ"
    assert judge.check_text(prob, 2, swapped, "agree") == f"{a}, {b}, {a + b} vs {a}, {b}, {a + b}: they agree"
    sol = {"steps": wrong, "correct": True}
    checked = judge.rating_examples(prob, sol, seed=1, check="numbers")
    assert checked[0][1].startswith(f"{judge.CHECK_PREFIX}99 vs ")
    assert [t.split("\n")[1] for _, t in checked] == [t for _, t in judge.rating_examples(prob, sol, seed=1)]
    with pytest.raises(ValueError, match="check 'digits'"):
        judge.rating_examples(prob, sol, check="digits")


def test_how_a_judge_rates_is_told_by_its_train_config(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert judge.trained_as(str(tmp_path), "rating_check") is None  # no train_config.json: a judge that rates at once
    (tmp_path / "train_config.json").write_text(json.dumps({"rating_check": "numbers"}))
    assert judge.trained_as(str(tmp_path), "rating_check") == "numbers"
    assert judge.trained_as(str(tmp_path), "rating_reference") is None
    (tmp_path / "train_config.json").write_text(json.dumps({"rating_check": "none", "rating_reference": True}))
    assert judge.trained_as(str(tmp_path), "rating_check") == "none"
    assert judge.trained_as("tiny", "rating_check") is None
    assert judge.trained_as(str(tmp_path), "rating_reference") is True


def test_a_checking_judge_reads_its_score_after_the_check_it_wrote():
    model, processor = load("tiny", device="cpu")
    images, prompts = dev_prompts(1)
    checking = judge.Judge(model, processor, "logits", batch_size=4, max_new_tokens=12, check=True)
    replies = checking.checks(images, prompts)
    assert len(replies) == len(prompts) and all(judge.SCORE_PREFIX not in r for r in replies)
    scores, failures = checking.rate(images, prompts)
    probs = checking.score_probs(images, prompts, replies)
    assert failures == 0 and scores == pytest.approx((((probs * torch.arange(1, 6)).sum(-1) - 1) / 4).tolist())
    at_once = judge.Judge(model, processor, "logits", batch_size=4).score_probs(images, prompts)
    assert not torch.allclose(probs, at_once)  # the base wrote something before: the score is read after it


def test_a_reference_guided_judges_prompts_hold_the_gold_solution_and_the_same_scores():
    prob = tasks.make_problem("ref", 1, kind="count_add")
    gold = [text for text, _, _ in tasks.gold_steps(prob)]
    for sol in policy.candidates(prob, 6, 1, "weak"):
        plain = judge.rating_examples(prob, sol, seed=1)
        guided = judge.rating_examples(prob, sol, seed=1, reference=True)
        assert [t for _, t in guided] == [t for _, t in plain]  # the same noisy scores
        for (p, _), (q, _), (_, _, upto) in zip(guided, plain, judge.rated_verdicts(prob, sol)):
            written = "\n".join(gold) if upto is None else tasks.format_steps(gold)  # as the rated work is
            assert p == q.replace("\n\nSolution:", f"{judge.REFERENCE_PREFIX}{written}\n\nSolution:")


def test_a_reference_guided_judge_rates_beside_its_own_solution_solved_once_a_problem(monkeypatch):
    model, processor = load("tiny", device="cpu")
    probs = tasks.make_problems(2, 0, "dev")
    images, questions = [tasks.render(p) for p in probs], [p["question"] for p in probs]
    own = [o["steps"] for o in policy.solve(model, processor, images, questions)]
    guided = judge.Judge(model, processor, "logits", batch_size=4, reference=True)
    solved, seen = policy.solve, []
    monkeypatch.setattr(policy, "solve", lambda m, p, ims, qs: seen.append(qs) or solved(m, p, ims, qs))
    rated = [["There are 3 red dots.", "The answer is 3."], ["2 + 2 = 4.", "The answer is 4."]]
    prompts = []
    monkeypatch.setattr(guided, "rate", lambda ims, ps: (prompts.extend(ps), ([0.5] * len(ps), 0))[1])
    judge.judge_answers(guided, images * 2, questions * 2, rated * 2)  # two answers to each problem
    judge.judge_steps(guided, images, questions, rated)
    assert sorted(sum(seen, [])) == sorted(questions)  # each problem solved once, for both modes
    answers = [judge.prompt(q, st, reference=r) for q, st, r in zip(questions * 2, rated * 2, own * 2)]
    steps = [judge.prompt(q, st, upto=k, reference=r) for q, st, r in zip(questions, rated, own) for k in range(2)]
    assert prompts == answers + steps
    assert all(judge.REFERENCE_PREFIX in p for p in prompts)

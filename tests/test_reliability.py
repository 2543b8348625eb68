"""Nothing lost, nothing silently wrong, one test per case: (1) checkpoints a kill or a full disk cannot
tear; (2) strict joins of scores to candidates; (3) errors that name the file, line, field or candidate; (4)
allowed values declared in every CLI; (5) outputs checked before expensive work; (6) the minor cases; (7) a CUDA
machine: torchrun with more processes than GPUs, device-pinned comparisons."""
import errno
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

import policy
import bon
import judge
import orm
from common import checkpoint
from common import cli
from common import data
from common import model as vlm
import prm
from common import recipe
from common import tasks
import train

ROOT = Path(__file__).resolve().parent.parent


def args(out, **kw):
    base = dict(objective="sft", model="tiny-init", out=str(out), max_steps=6, batch_size=4, eval_every=10**6,
                save_every=2, eval_n=4, warmup=2, lr=3e-3)
    return train.Args(**{**base, **kw})


def run(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def command(argv):
    """A script's argv as run() takes it: a file at the root by its path (any cwd), a module (-m) as is."""
    return argv if argv[0] == "-m" else [ROOT / argv[0], *argv[1:]]


class Killed(BaseException):
    """A kill -9 at a chosen point: nothing after it runs, no handler sees it."""


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return train.main(args(tmp_path_factory.mktemp("full") / "run")).state_dict()


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# (1) checkpoints -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["weights", "optimizer", "between_renames"])
def test_1_a_kill_at_any_point_of_a_save_resumes_exactly(tmp_path, monkeypatch, full, point):
    """Killed during the second save (step 4): resume finds a complete checkpoint (step 2, or the new one if it was
    complete) and ends with the uninterrupted run's weights."""
    calls = {"n": 0}
    real_save, real_torch_save, real_rename = vlm.save, torch.save, Path.rename

    def msave(*a, **k):
        calls["n"] += 1
        real_save(*a, **k)
        if point == "weights" and calls["n"] == 2:
            (Path(a[2]) / "model.safetensors").write_bytes(b"torn")
            raise Killed

    def tsave(obj, f, *a, **k):
        if point == "optimizer" and calls["n"] == 2:
            Path(f).write_bytes(b"torn")
            raise Killed
        real_torch_save(obj, f, *a, **k)

    def rename(self, target):
        if point == "between_renames" and calls["n"] == 2 and self.name.endswith(".tmp"):
            raise Killed
        return real_rename(self, target)
    monkeypatch.setattr(checkpoint, "save_model", msave)
    monkeypatch.setattr(checkpoint.torch, "save", tsave)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Killed):
        train.main(args(tmp_path / "run"))
    monkeypatch.undo()
    last = tmp_path / "run" / "last"
    found = checkpoint.latest(last)
    assert found is not None and checkpoint.check(found) == 2
    assert found == (last.with_name("last.prev") if point == "between_renames" else last)
    resumed = train.main(args(tmp_path / "run", resume=True))
    assert same(full, resumed.state_dict())
    assert checkpoint.check(last) == 6 and not last.with_name("last.prev").exists()


def test_1_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, full):
    calls = {"n": 0}
    real = torch.save

    def tsave(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", tsave)
    with pytest.raises(OSError, match=r"step 4 .*No space left.*last complete checkpoint is .*last"):
        train.main(args(tmp_path / "run"))
    monkeypatch.undo()
    assert checkpoint.check(tmp_path / "run" / "last") == 2
    assert not (tmp_path / "run" / "last.tmp").exists()
    assert same(full, train.main(args(tmp_path / "run", resume=True)).state_dict())


def test_1_a_full_disk_at_the_final_save_leaves_no_model_without_weights(tmp_path, monkeypatch, full):
    real = vlm.save

    def final_fails(model, processor, out, extra=None):
        if Path(out).name == "run":  # the final save; checkpoints go to run/last.tmp
            Path(out, "config.json").write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, processor, out, extra)
    monkeypatch.setattr(train, "save_model", final_fails)
    monkeypatch.setattr(checkpoint, "save_model", final_fails)
    with pytest.raises(OSError, match=r"trained model to .*run \(.*No space left.*checkpoint .*last is complete"):
        train.main(args(tmp_path / "run"))
    monkeypatch.undo()
    assert not (tmp_path / "run" / "config.json").exists() and checkpoint.check(tmp_path / "run" / "last") == 6
    assert same(full, train.main(args(tmp_path / "run", resume=True)).state_dict())


def test_1_weights_and_optimizer_of_different_steps_are_refused(tmp_path):
    train.main(args(tmp_path / "run", max_steps=2))
    last = tmp_path / "run" / "last"
    cfg = json.loads((last / "train_config.json").read_text())
    (last / "train_config.json").write_text(json.dumps({**cfg, "steps_done": 4}))
    with pytest.raises(ValueError, match="weights are of step 4 but the optimizer state of step 2"):
        checkpoint.check(last)
    with pytest.raises(ValueError, match="no complete checkpoint"):  # torn, no previous one: refused, not restarted
        train.main(args(tmp_path / "run", max_steps=2, resume=True))


def test_1_resume_with_other_settings_or_data_is_refused_naming_each_difference(tmp_path):
    policy.write_suite(tmp_path, 4, n_cands=2)
    labels = tmp_path / "labels.jsonl"
    prm_args = dict(objective="prm", data=str(labels), head="tag", max_steps=2)
    train.main(args(tmp_path / "run", **prm_args))
    with pytest.raises(ValueError, match=r"other settings \(was -> now: lr 0.003 -> 0.1; seed 0 -> 1\)"):
        train.main(args(tmp_path / "run", **prm_args, lr=0.1, seed=1, resume=True))
    with pytest.raises(ValueError, match=r"objective 'prm' -> 'orm'"):  # a PRM's checkpoint is no ORM's
        train.main(args(tmp_path / "run", **{**prm_args, "objective": "orm"}, resume=True))
    recs = data.read_jsonl(labels, "labelled")
    data.write_jsonl(labels, recs[1:], "labelled")  # the same file name, other records
    with pytest.raises(ValueError, match=r"data_sha256 '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        train.main(args(tmp_path / "run", **prm_args, resume=True))
    assert checkpoint.check(tmp_path / "run" / "last") == 2  # nothing trained or saved by the refused runs


def test_1_a_fresh_run_into_a_folder_with_a_checkpoint_needs_overwrite(tmp_path, full):
    train.main(args(tmp_path / "run", seed=1, max_steps=2))
    with pytest.raises(ValueError, match=r"run holds a checkpoint \(last\): pass --resume .* --overwrite"):
        train.main(args(tmp_path / "run"))
    with pytest.raises(ValueError, match="give one"):
        train.main(args(tmp_path / "run", resume=True, overwrite=True))
    assert same(full, train.main(args(tmp_path / "run", overwrite=True)).state_dict())  # the old run is gone
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl") if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


# (2) strict joins --------------------------------------------------------------------------------------------------

@pytest.fixture
def pool(tmp_path):
    probs, cands, _ = policy.write_suite(tmp_path, 3, n_cands=2)
    return tmp_path, cands


def scores_file(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def prm_recs(cands):
    return [{"candidate_id": c["id"], "scores": [0.5] * len(c["steps"])} for c in cands]


@pytest.mark.parametrize("case,match", [
    ("short", None),
    ("duplicate", r"s.jsonl:7: candidate test-00000-d00 scored twice \(first on line 1\)"),
    ("unknown", r"s.jsonl:7: candidate nope is not in the candidates"),
    ("missing", r"s.jsonl: no score for 1 of 6 candidates \(test-00002-d01\)"),
    ("empty", r"s.jsonl: no records"),
    ("mixed", r"s.jsonl:2: an ORM score .* line 1 holds PRM step scores")])
def test_2_every_mismatch_of_scores_and_candidates_is_an_error_naming_it(pool, case, match):
    d, cands = pool
    recs = prm_recs(cands)
    if case == "short":
        n = len(cands[0]["steps"])
        recs[0]["scores"] = [0.5] * (n - 1)
        match = rf"s.jsonl:1: candidate test-00000-d00: {n - 1} step scores for {n} steps"
    elif case == "duplicate":
        recs.append(dict(recs[0]))
    elif case == "unknown":
        recs.append({"candidate_id": "nope", "scores": [0.5]})
    elif case == "missing":
        recs = recs[:-1]
    elif case == "empty":
        recs = []
    elif case == "mixed":
        recs[1] = {"candidate_id": recs[1]["candidate_id"], "score": 0.5}
    path = scores_file(d / "s.jsonl", recs)
    with pytest.raises(ValueError, match=match):
        bon.main(bon.Args(problems=str(d / "problems.jsonl"), candidates=str(d / "candidates.jsonl"), scores=[path]))
    r = run("bon.py", "--problems", d / "problems.jsonl", "--candidates", d / "candidates.jsonl", "--scores", path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr


def test_2_missing_scores_can_be_skipped_with_a_flag_and_are_counted(pool, capsys):
    d, cands = pool
    path = scores_file(d / "s.jsonl", prm_recs(cands)[:-1])
    res = bon.main(bon.Args(problems=str(d / "problems.jsonl"), candidates=str(d / "candidates.jsonl"),
                            scores=[path], skip_missing=True))
    assert "s.jsonl: 1 of 6 candidates have no score (skipped: never picked by max, weight 0 in a vote)" in \
        capsys.readouterr().err
    assert res["skipped_scores"] == {"s": 1}  # the key: the file's stem (its records name no method)


def test_2_duplicate_candidate_ids_and_unknown_problems_are_errors(pool):
    d, cands = pool
    data.write_jsonl(d / "dup.jsonl", cands + [cands[0]], "candidate")
    with pytest.raises(ValueError, match=r"dup.jsonl:7: id test-00000-d00 used twice \(first on line 1\)"):
        data.read_jsonl(d / "dup.jsonl", "candidate")
    data.write_jsonl(d / "orphan.jsonl", cands + [dict(cands[0], id="x", problem_id="nowhere")], "candidate")
    scores_file(d / "s.jsonl", prm_recs(cands) + [{"candidate_id": "x", "scores": [0.5] * len(cands[0]["steps"])}])
    with pytest.raises(ValueError, match=r"orphan.jsonl: candidate x: problem nowhere is not in .*problems.jsonl"):
        bon.main(bon.Args(problems=str(d / "problems.jsonl"), candidates=str(d / "orphan.jsonl"),
                          scores=[str(d / "s.jsonl")]))


# (3) errors that name what is wrong -------------------------------------------------------------------------------

def test_3_a_non_utf8_byte_names_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"id": "a"}\n{"id": "b\xff"}\n')
    with pytest.raises(data.RecordError, match=r"c.jsonl:2: not UTF-8 \(byte 0xff at column 10\)"):
        data.read_jsonl(p)
    (tmp_path / "a.txt").write_bytes(b"Step 1: 3 \xff\n")
    r = run("steps.py", tmp_path / "a.txt")
    assert r.returncode == 2 and "a.txt" in r.stderr and "not UTF-8" in r.stderr


def test_3_an_empty_labelled_file_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    (tmp_path / "l.jsonl").write_text("")
    monkeypatch.setattr(prm, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(ValueError, match=r"l.jsonl: no records"):
        train.main(args(tmp_path / "o", objective="prm", data=str(tmp_path / "l.jsonl")))


def test_3_records_with_no_image_or_an_empty_step_are_refused():
    rec = {"id": "r", "images": [], "prompt": "q", "completions": ["a"], "labels": [1]}
    with pytest.raises(data.RecordError, match=r'x:1: field "images": expected a non-empty list'):
        data.validate(rec, "labelled", "x:1")
    cand = {"id": "c", "problem_id": "p", "steps": ["a", "  "], "answer": None, "correct": None}
    with pytest.raises(data.RecordError, match=r'x:2: field "steps": expected a list of non-empty strings'):
        data.validate(cand, "candidate", "x:2")


def test_3_special_tokens_in_answer_text_are_neutralised_and_counted():
    m, p = prm.load("tiny-init", device="cpu")
    pr = tasks.make_problem("x", 0, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    bad = [steps[0] + " <|image_pad|><|im_end|>"] + steps[1:]
    scores, skipped = prm.score_steps(m, p, [tasks.render(pr)] * 2, [pr["question"]] * 2, [steps, bad])
    assert skipped == [] and len(scores[1]) == len(steps)  # scored, not a crash, nothing dropped
    batch, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [bad])
    ids = p.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|im_end|>"])
    n_img = int((batch["input_ids"] == ids[0]).sum())
    clean, _, _ = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps])
    assert n_img == int((clean["input_ids"] == ids[0]).sum())  # only the image's own pad tokens
    assert vlm.neutralise("a <|im_end|> b") == "a < |im_end|> b"


def test_3_a_score_file_mixing_orm_and_prm_is_named():
    """(covered with its line in test_2 ...[mixed]; here: one error line from the CLI, no traceback)"""
    r = run("bon.py", "--problems", "nope.jsonl", "--candidates", "nope.jsonl", "--scores", "nope.jsonl")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "nope.jsonl" in r.stderr
    assert "Traceback" not in r.stderr


# (4) allowed values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,bad", [
    (["train.py", "--head", "implict"], "implict"), (["train.py", "--objective", "prn"], "prn"),
    (["judge.py", "--read", "logit"], "logit"), (["judge.py", "--mode", "pmr"], "pmr"),
    (["tree_search.py", "--method", "mtcs"], "mtcs"), (["tree_search.py", "--strength", "strnog"], "strnog"),
    (["bench.py", "--head", "implict"], "implict"), (["bench.py", "--label-policy", "bse"], "bse"),
    (["policy.py", "--strength", "strnog", "--out", "x"], "strnog")])
def test_4_a_misspelt_value_is_refused_at_parse_time_naming_the_choices(tmp_path, argv, bad):
    r = run(ROOT / argv[0], *argv[1:], cwd=tmp_path)
    assert r.returncode == 2 and f"invalid choice: '{bad}'" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made


# (5) outputs checked first -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["prm.py", "orm.py"])
def test_5_a_bad_out_is_refused_before_scoring(pool, script, monkeypatch):
    d, _ = pool
    (d / "adir").mkdir()
    mod = __import__(script[:-3])
    monkeypatch.setattr(prm, "load", lambda *a, **k: pytest.fail("loaded the model first"))  # both load by it
    a = mod.Args(problems=str(d / "problems.jsonl"), candidates=str(d / "candidates.jsonl"), out=str(d / "adir"))
    with pytest.raises(ValueError, match=r"adir: --out is a folder"):
        mod.main(a)
    if os.geteuid() != 0:  # root writes anywhere
        ro = d / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(OSError, match="not writable"):
            mod.main(mod.Args(problems=a.problems, candidates=a.candidates, out=str(ro / "s.jsonl")))


def test_5_train_checks_its_output_folder_before_loading(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(prm, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(ValueError, match=r"file: --out is a file"):
        train.main(args(tmp_path / "file"))


# (6) minor ---------------------------------------------------------------------------------------------------------

def test_6_an_empty_candidates_file_is_an_error(pool):
    d, _ = pool
    (d / "none.jsonl").write_text("")
    for script in ("prm.py", "bon.py"):
        extra = ["--out", d / "x.jsonl"] if script == "prm.py" else ["--scores", d / "none.jsonl"]
        r = run(script, "--problems", d / "problems.jsonl", "--candidates", d / "none.jsonl", *extra)
        assert r.returncode == 2 and "none.jsonl: no records" in r.stderr, r.stderr


def test_6_output_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        data.write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) == 0o644


def test_6_the_log_has_no_repeated_step_after_a_resume(tmp_path, monkeypatch):
    real = train.lr_at

    def crash(step, a):
        if step == 3:
            raise Killed
        return real(step, a)
    monkeypatch.setattr(train, "lr_at", crash)
    with pytest.raises(Killed):
        train.main(args(tmp_path / "run"))
    monkeypatch.undo()
    train.main(args(tmp_path / "run", resume=True))
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl") if '"loss"' in line]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_6_a_skipped_training_record_is_named(tmp_path, capsys):
    policy.write_suite(tmp_path, 4, n_cands=2)
    recs = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    for r in recs[:4]:  # steps too long to fit (a question is cut to fit, a step never)
        r["completions"] = ["x " * 300] + r["completions"][1:]
    data.write_jsonl(tmp_path / "l.jsonl", recs, "labelled")
    train.main(args(tmp_path / "o", objective="prm", data=str(tmp_path / "l.jsonl"), head="tag", max_steps=2,
                    max_len=256, batch_size=8))
    named = [line.split()[2].rstrip(":") for line in capsys.readouterr().out.splitlines()
             if line.startswith("[train] skipped ")]
    assert named and set(named) <= {r["id"] for r in recs[:4]} and len(named) == len(set(named))


@pytest.mark.parametrize("flags,match", [(["--n", "0"], "--n 0: expected at least 1"),
                                         (["--n", "2", "--cands", "0"], "--cands 0: expected at least 1")])
def test_6_tasks_refuses_impossible_sizes_in_one_line(tmp_path, flags, match):
    r = run("policy.py", *flags, "--out", tmp_path / "s")
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr


def test_6_an_expected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    r = run("prm.py", "--problems", tmp_path / "none.jsonl", "--candidates", "c.jsonl", "--out", tmp_path / "o.jsonl")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")
    env = {**os.environ, "VILPRM_DEBUG": "1"}
    r = subprocess.run([sys.executable, "prm.py", "--problems", str(tmp_path / "none.jsonl"), "--candidates", "c",
                        "--out", str(tmp_path / "o.jsonl")], cwd=ROOT, capture_output=True, text=True, env=env)
    assert "Traceback" in r.stderr
    with pytest.raises(SystemExit):
        cli.run(lambda a: (_ for _ in ()).throw(ValueError("x")), None, None, [])


@pytest.mark.parametrize("script", [prm, orm, judge])
def test_6_scores_written_over_their_own_input_are_refused(pool, script, monkeypatch):
    d, _ = pool
    before = (d / "candidates.jsonl").read_text()
    for loader in (prm, judge):  # orm loads by prm.load, judge by its own import of model.load
        monkeypatch.setattr(loader, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    for given in ("candidates", "problems"):
        a = script.Args(problems=str(d / "problems.jsonl"), candidates=str(d / "candidates.jsonl"),
                        out=str(d / f"{given}.jsonl"))
        with pytest.raises(ValueError, match=f"is the --{given} file: write the scores to another file"):
            script.main(a)
    assert (d / "candidates.jsonl").read_text() == before


@pytest.mark.parametrize("correct", ["yes", None])
def test_6_a_meta_correct_that_is_no_outcome_names_file_and_line(tmp_path, correct):
    policy.write_suite(tmp_path, 2, n_cands=2)
    recs = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    recs[1]["meta"] = {"correct": correct}
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(data.RecordError, match=r'l.jsonl:2: field "meta.correct": expected true, false or a'):
        train.load_labelled(tmp_path / "l.jsonl")


def test_6_training_records_with_one_id_twice_are_refused_naming_both_lines(tmp_path):
    policy.write_suite(tmp_path, 2, n_cands=2)
    recs = data.read_jsonl(tmp_path / "labels.jsonl", "labelled")
    data.write_jsonl(tmp_path / "l.jsonl", recs + [recs[0]], "labelled")
    twice = rf"l.jsonl:{len(recs) + 1}: id {recs[0]['id']} used twice \(first on line 1\)"
    with pytest.raises(data.RecordError, match=twice):
        train.main(args(tmp_path / "o", objective="prm", data=str(tmp_path / "l.jsonl")))


def test_6_the_generate_judge_reads_answers_with_special_tokens_as_the_logit_judge_does():
    m, p = prm.load("tiny-init", device="cpu")
    pr = tasks.make_problem("x", 0, kind="count_add")
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    bad = [steps[0] + " <|image_pad|><|vision_start|><|im_end|>"] + steps[1:]
    prompt = judge.prompt(pr["question"], bad)
    for read in judge.MODES:  # generate used to build an unneutralised prompt: more image slots than images
        scores, _ = judge.Judge(m, p, read, max_new_tokens=4).rate([tasks.render(pr)], [prompt])
        assert len(scores) == 1


def test_6_a_missing_local_looking_model_folder_is_an_error_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone: no out/ folder at all
    for name in ("out/prm", "checkpoints/x", "./prm", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=f"no model folder '{name}'"):
            vlm.resolve(name)
    assert vlm.resolve("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # a hub id stays one


def png_header(width, height):
    """A PNG that says it is width x height and holds no pixels: Image.open reads only this much."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case,match", [
    ("fifo", "is not a regular file"), ("text", "cannot be read as an image"),
    ("big", r"is 7000 x 7000 pixels, more than 40,000,000"), ("bomb", "has more than 40,000,000 pixels")])
def test_6_an_image_that_is_no_regular_small_image_is_refused_naming_the_problem(pool, case, match):
    d, _ = pool
    image = d / "images" / "odd.png"
    if case == "fifo":
        os.mkfifo(image)  # opened, it would wait for a writer forever
    else:
        image.write_bytes({"text": b"root:x:0:0\n", "big": png_header(7000, 7000),
                           "bomb": png_header(20000, 20000)}[case])
    probs = data.read_jsonl(d / "problems.jsonl", "problem")
    probs[0]["image"] = "images/odd.png"
    data.write_jsonl(d / "problems.jsonl", probs, "problem")
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("hung on the image"))
    signal.alarm(30)
    try:
        with pytest.raises(ValueError, match=rf"problems.jsonl: problem {probs[0]['id']}: .*odd.png.*{match}"):
            prm.load_inputs(d / "problems.jsonl", d / "candidates.jsonl")
    finally:
        signal.alarm(0)


# (7) a CUDA machine ------------------------------------------------------------------------------------------------

def test_7_more_processes_than_gpus_fall_back_to_cpu_with_gloo():
    assert recipe.placement("", local_rank=1, n_gpus=1) == ("cpu", "gloo")
    assert recipe.placement("", local_rank=1, n_gpus=2) == ("cuda:1", "nccl")
    assert recipe.placement("", local_rank=0, n_gpus=0) == ("cpu", "gloo")
    assert recipe.placement("cpu", local_rank=0, n_gpus=8) == ("cpu", "gloo")


@pytest.mark.parametrize("argv,bad", [
    (["tree_search.py", "--rollouts", "0"], "--rollouts: 0"), (["tree_search.py", "--rollouts", "-3"], "--rollouts: -3"),
    (["tree_search.py", "--tau", "nan"], "--tau: nan"), (["tree_search.py", "--samples", "0"], "--samples: 0"),
    (["train.py", "--max-steps", "-5"], "--max-steps: -5"), (["train.py", "--batch-size", "0"], "--batch-size: 0"),
    (["train.py", "--save-every", "0"], "--save-every: 0"), (["train.py", "--grad-accum", "0"], "--grad-accum: 0"),
    (["bon.py", "--ns", "0,1"], "--ns: 0,1: 0"), (["bon.py", "--dev-frac", "1.5"], "--dev-frac: 1.5"),
    (["bench.py", "--steps", "0"], "--steps: 0"), (["bench.py", "--taus", "0,nan"], "--taus: 0,nan: nan"),
    (["prm.py", "--batch-size", "0"], "--batch-size: 0"), (["orm.py", "--max-len", "-1"], "--max-len: -1"),
    (["judge.py", "--batch-size", "0"], "--batch-size: 0"), (["omegaprm.py", "--tau", "2"], "--tau: 2"),
    (["omegaprm.py", "--budgets", "24,0"], "--budgets: 24,0: 0"),
    (["-m", "lab.serve", "--port", "70000"], "--port: 70000"),
    (["-m", "lab.api", "pool", "--url", "u", "--out", "o", "--n", "0"], "--n: 0")])
def test_4_a_number_out_of_range_is_refused_at_parse_time_naming_the_option(tmp_path, argv, bad):
    r = run(*command(argv), cwd=ROOT if argv[0] == "-m" else tmp_path)
    assert r.returncode == 2 and bad in r.stderr and "expected a finite number" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made


@pytest.mark.parametrize("argv,bad", [
    (["train.py", "--device", "cdua"], "--device: 'cdua': expected cpu, cuda or cuda:N"),
    (["prm.py", "--device", "cdua"], "--device: 'cdua': expected cpu, cuda or cuda:N"),
    (["train.py", "--size", "smal"], "--size: invalid choice: 'smal'"),
    (["-m", "common.model", "--size", "smal"], "--size: invalid choice: 'smal'")])
def test_4_a_misspelt_device_or_size_is_refused_at_parse_time(tmp_path, argv, bad):
    r = run(*command(argv), cwd=ROOT if argv[0] == "-m" else tmp_path)
    assert r.returncode == 2 and bad in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert cli.device("cuda:1") == "cuda:1" and cli.device("") == ""

"""data.py: JSONL round trips, one RecordError per kind of bad line, image paths, the MATH-V and TRL adapters."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common.mathv import MATHV, load_mathv, mathv_stats  # noqa: E402
from common import data  # noqa: E402
from common.data import (RecordError, append_jsonl, check_images, from_trl, read_jsonl,  # noqa: E402
                  resolve_image, to_trl, write_jsonl)

PROBLEM = {"id": "p1", "image": "images/p1.png", "question": "How many shapes?", "answer": "7",
           "options": [], "family": "visual", "seed": 12}
CANDIDATE = {"id": "p1-0", "problem_id": "p1", "steps": ["There are 3.", "The answer is 3."], "answer": "3",
             "correct": False, "first_error": 0, "policy": "weak", "text": "There are 3.\nThe answer is 3."}
SCORE_PRM = {"candidate_id": "p1-0", "scores": [0.9, 0.25], "model": "tiny"}
SCORE_ORM = {"candidate_id": "p1-0", "score": 0.4}
LABELLED = {"id": "l1", "images": ["images/p1.png"], "prompt": "How many shapes?",
            "completions": ["There are 3.", "The answer is 3."], "labels": [0.7, 0.0], "first_error": 1,
            "values": [0.7, 0.0], "meta": {"rollouts": 8}}
GOOD = {"problem": PROBLEM, "candidate": CANDIDATE, "score": SCORE_PRM, "labelled": LABELLED}


@pytest.mark.parametrize("kind", list(GOOD))
def test_round_trip_keeps_every_field(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    two = [GOOD[kind], {**GOOD[kind], "id": "two"} if "id" in GOOD[kind] else GOOD[kind]]  # ids are unique
    write_jsonl(path, two, kind)
    assert read_jsonl(path, kind) == two
    assert [p.name for p in tmp_path.iterdir()] == [f"{kind}.jsonl"]  # the temp file is gone


def test_orm_score_and_numeric_answer(tmp_path):
    path = tmp_path / "s.jsonl"
    write_jsonl(path, [SCORE_ORM], "score")
    assert read_jsonl(path, "score") == [SCORE_ORM]
    write_jsonl(path, [dict(PROBLEM, answer=7), dict(PROBLEM, id="p2", answer=2.5)], "problem")
    assert [r["answer"] for r in read_jsonl(path, "problem")] == ["7", "2.5"]


def test_soft_labels_stay_floats(tmp_path):
    path = tmp_path / "l.jsonl"
    write_jsonl(path, [dict(LABELLED, labels=[0.7, 1])], "labelled")
    (rec,) = read_jsonl(path, "labelled")
    assert rec["labels"] == [0.7, 1.0] and all(type(x) is float for x in rec["labels"])
    assert '"labels": [0.7, 1.0]' in path.read_text()


def _bad(kind, **change):
    rec = dict(GOOD[kind], **change)
    return {k: v for k, v in rec.items() if v is not ...}  # `...` removes a field


@pytest.mark.parametrize("kind,record,field", [
    ("problem", _bad("problem", id=...), "id"),
    ("problem", _bad("problem", id=3), "id"),
    ("problem", _bad("problem", image=None), "image"),
    ("problem", _bad("problem", answer=None), "answer"),
    ("problem", _bad("problem", family="audio"), "family"),
    ("candidate", _bad("candidate", steps="There are 3."), "steps"),
    ("candidate", _bad("candidate", steps=["a", 2]), "steps"),
    ("candidate", _bad("candidate", correct="yes"), "correct"),
    ("candidate", _bad("candidate", correct=...), "correct"),
    ("candidate", _bad("candidate", first_error=-2), "first_error"),
    ("candidate", _bad("candidate", first_error=2), "first_error"),
    ("score", _bad("score", scores=[0.5, "high"]), "scores"),
    ("score", _bad("score", scores=...), "scores"),
    ("score", dict(SCORE_PRM, score=0.5), "scores"),
    ("score", _bad("score", candidate_id=...), "candidate_id"),
    ("labelled", _bad("labelled", labels=[0.7, 1.5]), "labels"),
    ("labelled", _bad("labelled", labels=[True, False]), "labels"),
    ("labelled", _bad("labelled", labels=[0.7]), "labels"),
    ("labelled", _bad("labelled", completions=["only one"]), "labels"),
    ("labelled", _bad("labelled", images="images/p1.png"), "images"),
    ("labelled", _bad("labelled", meta=[1]), "meta"),
])
def test_bad_line_names_file_line_and_field(tmp_path, kind, record, field):
    path = tmp_path / "recs.jsonl"
    path.write_text(json.dumps(GOOD[kind]) + "\n\n" + json.dumps(record) + "\n")  # line 3: the blank one counts
    with pytest.raises(RecordError, match=rf'recs\.jsonl:3: field "{field}": '):
        read_jsonl(path, kind)
    assert read_jsonl(path)[1] == record  # no kind: no validation
    with pytest.raises(RecordError, match=rf'out\.jsonl:2: field "{field}": '):
        write_jsonl(tmp_path / "out.jsonl", [GOOD[kind], record], kind)
    assert not (tmp_path / "out.jsonl").exists()  # validation comes before any write


def test_error_message_reads_well(tmp_path):
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(dict(CANDIDATE, id=f"c{i}")) + "\n" for i in range(6)) + json.dumps(dict(CANDIDATE, steps=1)))
    with pytest.raises(RecordError) as e:
        read_jsonl(path, "candidate")
    assert str(e.value) == f'{path}:7: field "steps": expected a list of non-empty strings, got 1'
    assert isinstance(e.value, ValueError)


def test_invalid_json_and_non_objects(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(PROBLEM) + '\n{"id": "p2", \n')
    with pytest.raises(RecordError, match=r"x\.jsonl:2: invalid JSON"):
        read_jsonl(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match=r"x\.jsonl:1: expected a JSON object"):
        read_jsonl(path, "problem")
    with pytest.raises(ValueError, match="unknown record kind"):
        read_jsonl(path, "problems")


def test_append_is_resumable(tmp_path):
    path = tmp_path / "sub" / "scores.jsonl"
    append_jsonl(path, SCORE_PRM, "score")
    append_jsonl(path, SCORE_ORM)
    assert read_jsonl(path, "score") == [SCORE_PRM, SCORE_ORM]
    with open(path, "a") as f:
        f.write('{"candidate_id": "p1-')  # a job killed mid-line
    append_jsonl(path, SCORE_ORM)
    assert path.read_text().splitlines()[-1] == json.dumps(SCORE_ORM)  # the new record is whole, on its own line
    with pytest.raises(RecordError, match=r"scores\.jsonl:3: invalid JSON"):
        read_jsonl(path)
    with pytest.raises(RecordError, match='field "candidate_id"'):
        append_jsonl(path, {"score": 1.0}, "score")


def test_image_paths_resolve_relative_to_the_record_file(tmp_path):
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "images" / "p1.png").write_bytes(b"png")
    recs = tmp_path / "set" / "problems.jsonl"
    assert resolve_image(recs, "images/p1.png") == tmp_path / "set" / "images" / "p1.png"
    assert resolve_image(recs, "../other/a.png") == tmp_path / "other" / "a.png"
    assert resolve_image(recs, "/abs/a.png") == Path("/abs/a.png")
    check_images(recs, [PROBLEM, LABELLED, dict(PROBLEM, image=str(tmp_path / "set" / "images" / "p1.png"))])


def test_missing_image_names_file_record_and_path(tmp_path):
    recs = tmp_path / "labelled.jsonl"
    with pytest.raises(FileNotFoundError) as e:
        check_images(recs, [dict(LABELLED, images=[]), LABELLED])
    msg = str(e.value)
    assert f"{recs}:2" in msg and '"l1"' in msg and str(tmp_path / "images" / "p1.png") in msg


def test_trl_round_trip_thresholds_soft_labels():
    row = to_trl(dict(LABELLED, labels=[0.7, 0.5, 0.2], completions=["a", "b", "c"], first_error=...))
    assert row == {"prompt": "How many shapes?", "completions": ["a", "b", "c"], "labels": [True, True, False],
                   "images": ["images/p1.png"]}
    back = from_trl(row)
    assert back["labels"] == [1.0, 1.0, 0.0] and back["completions"] == ["a", "b", "c"]
    assert back["id"] == from_trl(row)["id"] and len(back["id"]) == 12  # a stable hash, not Python's hash()
    assert from_trl({"prompt": "q", "completions": ["a"], "labels": [False], "images": ["i.png"]}, id="x") == {
        "id": "x", "images": ["i.png"], "prompt": "q", "completions": ["a"], "labels": [0.0]}
    with pytest.raises(RecordError, match='TRL row: field "images": expected a non-empty list'):  # text-only: no
        from_trl({"prompt": "q", "completions": ["a"], "labels": [False]}, id="x")


@pytest.fixture(scope="module")
def mathv():
    return load_mathv()


def test_load_mathv(mathv):
    problems, candidates = mathv
    assert len(problems) == 304 and len({p["id"] for p in problems}) == 304
    raw = [json.loads(line) for line in open(MATHV / "responses.jsonl", encoding="utf-8")]
    empty = sum(not r["response"].strip() for r in raw)
    assert len(candidates) == 4560 - empty == 4560  # the shipped data has no empty response
    assert len({c["id"] for c in candidates}) == len(candidates)
    assert all(Path(p["image"]).is_absolute() and Path(p["image"]).is_file() for p in problems)
    p = next(p for p in problems if p["id"] == "6")
    assert p["options"] == ["A", "B", "C", "D", "E"] and p["answer"] == "D" and p["subject"] == "logic"
    assert sum(c["cot"] for c in candidates) == 5 * 304
    c = next(c for c in candidates if c["id"] == "5-gpt-3.5-turbo-0125-0")
    assert c["steps"][1:6] == ["Start with 48 (from the first flower).", "Subtract 20: 48 - 20 = 28",
                               "Add 9: 28 + 9 = 37", "Subtract 6: 37 - 6 = 31", "Add 30: 31 + 30 = 61"]
    assert c["answer"] == "61" and c["correct"] is True and c["cot"] and c["policy"] == "gpt-3.5-turbo-0125"
    # qwen-vl-max has two response sets: answer-only is k=0, chain-of-thought k=1
    q = {c["id"]: c for c in candidates if c["problem_id"] == "5" and c["policy"] == "qwen-vl-max"}
    assert sorted(q) == ["5-qwen-vl-max-0", "5-qwen-vl-max-1"]
    assert not q["5-qwen-vl-max-0"]["cot"] and q["5-qwen-vl-max-1"]["cot"]


def test_load_mathv_skips_and_reports_empty_responses(tmp_path, capsys):
    (tmp_path / "problems.jsonl").write_text(json.dumps(
        {"id": "1", "question": "q", "options": [], "answer": 3, "level": 1, "subject": "s", "image": "i/1.jpg"}) + "\n")
    rows = [{"id": "1", "model": "M 1", "response": text, "model_answer": "3", "correct": True,
             "source_file": f"open-source/M{src}.jsonl"} for text, src in [("3.", "-CoT"), (" \n", ""), ("3", "")]]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems, candidates = load_mathv(tmp_path)
    assert problems[0]["answer"] == "3" and problems[0]["image"] == str(tmp_path / "i" / "1.jpg")
    assert [c["id"] for c in candidates] == ["1-m-1-1", "1-m-1-0"]
    assert "skipped 1 of 3 responses" in capsys.readouterr().err


def test_check_cli(tmp_path):
    path = tmp_path / "cands.jsonl"
    write_jsonl(path, [dict(CANDIDATE, id=f"c{i}") for i in range(3)], "candidate")
    out = subprocess.run([sys.executable, "-m", "common.data", "--check", str(path), "--kind", "candidate"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "3 candidate records OK" in out and "steps 6" in out
    path.write_text(json.dumps(dict(CANDIDATE, correct="no")) + "\n")
    res = subprocess.run([sys.executable, "-m", "common.data", "--check", str(path), "--kind", "candidate"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and res.stderr.startswith("error: ")
    assert 'cands.jsonl:1: field "correct"' in res.stderr


def test_mathv_stats(capsys):
    assert mathv_stats() >= 0.9
    out = capsys.readouterr().out
    assert "answers > 300 chars: 805" in out and out.count("\n--- ") == 3

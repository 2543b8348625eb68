"""Record formats (DESIGN.md "Record formats") as JSONL: validated reading and writing, image paths, adapters.

    python data.py --check cands.jsonl --kind candidate   # validate a file, print its counts
    python data.py --mathv-stats                          # steps per answer over MATH-V's chain-of-thought answers

Kinds: problem, candidate, score, labelled (step-labelled, TRL's PRM format plus images). Every bad line raises
RecordError naming file:line and the field. Image paths in a record are relative to the record file's folder, or
absolute. Adapters: load_mathv (the MATH-V testmini pool in ../shared/data), to_trl / from_trl (TRL's PRM rows).
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cli
from steps import split_steps

ROOT = Path(__file__).resolve().parent
MATHV = ROOT.parent / "shared" / "data" / "mathv-testmini"
KINDS = ("problem", "candidate", "score", "labelled")


class RecordError(ValueError):
    """A bad JSONL line; the message reads 'file:line: field "name": expected ...'."""


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_or_num(v):
    return isinstance(v, str) or _num(v)


_is_str = lambda v: isinstance(v, str)  # noqa: E731
_strs = lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)  # noqa: E731
_steps = lambda v: _strs(v) and all(x.strip() for x in v)  # noqa: E731 (a blank step would still be scored)
_nums = lambda v: isinstance(v, list) and all(_num(x) for x in v)  # noqa: E731
_probs = lambda v: _nums(v) and all(0 <= x <= 1 for x in v)  # noqa: E731
_first_error = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= -1  # noqa: E731

# kind -> field -> (required, check, what the field must be). Fields not listed are kept as they are.
SCHEMAS = {
    "problem": {
        "id": (True, _is_str, "a string"), "image": (True, _is_str, "a string (image path)"),
        "question": (True, _is_str, "a string"), "answer": (True, _str_or_num, "a string (or a number)"),
        "options": (False, lambda v: isinstance(v, list), "a list"),
        "family": (False, lambda v: v in ("text", "visual"), '"text" or "visual"')},
    "candidate": {
        "id": (True, _is_str, "a string"), "problem_id": (True, _is_str, "a string"),
        "steps": (True, _steps, "a list of non-empty strings"),
        "answer": (True, lambda v: v is None or _str_or_num(v), "a string or null"),
        "correct": (True, lambda v: v is None or isinstance(v, bool), "true, false or null"),
        "first_error": (False, _first_error, "an integer >= -1 (-1: no wrong step)"),
        "policy": (False, _is_str, "a string"), "text": (False, _is_str, "a string")},
    "score": {
        "candidate_id": (True, _is_str, "a string"), "scores": (False, _nums, "a list of numbers"),
        "score": (False, _num, "a number"), "model": (False, _is_str, "a string"),
        "method": (False, _is_str, "a string")},
    "labelled": {
        "id": (True, _is_str, "a string"), "images": (True, lambda v: _strs(v) and v, "a non-empty list of strings "
                                                       "(image paths)"),
        "prompt": (True, _is_str, "a string"), "completions": (True, _steps, "a list of non-empty strings"),
        "labels": (True, _probs, "a list of numbers in [0, 1]"),
        "first_error": (False, _first_error, "an integer >= -1 (-1: no wrong step)"),
        "values": (False, _nums, "a list of numbers"), "meta": (False, lambda v: isinstance(v, dict), "an object")},
}


def validate(record, kind, where="record"):
    """Check one record against its kind and return it normalised (numeric answers -> str, labels -> float).
    `where` ("file:line") starts the RecordError message."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, (required, check, what) in SCHEMAS[kind].items():
        if name not in record:
            if required:
                raise RecordError(f'{where}: field "{name}": missing (expected {what})')
        elif not check(record[name]):
            raise RecordError(f'{where}: field "{name}": expected {what}, got {json.dumps(record[name])[:60]}')
    if kind == "score" and ("scores" in record) == ("score" in record):
        raise RecordError(f'{where}: field "scores": expected exactly one of "scores" (PRM) or "score" (ORM)')
    steps_field = {"candidate": "steps", "labelled": "completions"}.get(kind)
    n = len(record[steps_field]) if steps_field else None
    if kind == "labelled" and len(record["labels"]) != n:
        raise RecordError(f'{where}: field "labels": expected one label per completion ({n}), '
                          f'got {len(record["labels"])}')
    if n is not None and record.get("first_error") is not None and record["first_error"] >= n:
        raise RecordError(f'{where}: field "first_error": expected -1 or a step index below {n} '
                          f'(the number of {steps_field}), got {record["first_error"]}')
    if _num(record.get("answer")):
        record["answer"] = str(record["answer"])
    if kind == "labelled":
        record["labels"] = [float(x) for x in record["labels"]]
    return record


def read_jsonl(path, kind=None, nonempty=False, lines=False):
    """Read a JSONL file (blank lines skipped) and validate every line against `kind` (None: no validation).
    Problems and candidates must have unique ids. nonempty: no record is an error. lines: [(line number, record)]."""
    records, first = [], {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") \
                    from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            record = validate(record, kind, f"{path}:{lineno}") if kind else record
            if kind in ("problem", "candidate"):
                if record["id"] in first:
                    raise RecordError(f"{path}:{lineno}: id {record['id']} used twice (first on line "
                                      f"{first[record['id']]})")
                first[record["id"]] = lineno
            records.append((lineno, record) if lines else record)
    if nonempty and not records:
        raise RecordError(f"{path}: no records")
    return records


def read_scores(path, candidates, skip_missing=False):
    """A score file joined to its candidates, strictly -> ({candidate id: float (ORM) | [float] (PRM)}, missing,
    the first record's "method" or None).
    Errors name the file, line and candidate: no record, a candidate that is not in `candidates`, one scored twice,
    step scores that are not one per step, ORM and PRM records in one file; a candidate without a score too, unless
    skip_missing (then the count of those, for the caller to report)."""
    steps, out, where, first = {c["id"]: len(c["steps"]) for c in candidates}, {}, {}, None
    what = {True: "PRM step scores", False: "an ORM score (one number)"}
    recs = read_jsonl(path, "score", nonempty=True, lines=True)
    for lineno, r in recs:
        cid, v = r["candidate_id"], r.get("scores", r.get("score"))
        if cid not in steps:
            raise RecordError(f"{path}:{lineno}: candidate {cid} is not in the candidates")
        if cid in out:
            raise RecordError(f"{path}:{lineno}: candidate {cid} scored twice (first on line {where[cid]})")
        first = first or (isinstance(v, list), lineno)
        if isinstance(v, list) != first[0]:
            raise RecordError(f"{path}:{lineno}: {what[not first[0]]} in a file whose line {first[1]} holds "
                              f"{what[first[0]]}")
        if isinstance(v, list) and len(v) != steps[cid]:
            raise RecordError(f"{path}:{lineno}: candidate {cid}: {len(v)} step scores for {steps[cid]} steps")
        out[cid], where[cid] = v, lineno
    missing = [i for i in steps if i not in out]
    if missing and not skip_missing:
        raise RecordError(f"{path}: no score for {len(missing)} of {len(steps)} candidates ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}); --skip-missing scores them as unscored")
    return out, len(missing), recs[0][1].get("method")


def check_out(path, folder=False):
    """Before any expensive work: an output file (or folder) that can be written, else an error naming it."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{path}: --out is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'}")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{path}: {parent} is not writable")


def write_jsonl(path, records, kind=None):
    """Validate all records, then write them atomically (a temp file in the same folder, then os.replace)."""
    records = [validate(r, kind, f"{path}:{i}") if kind else r for i, r in enumerate(records, 1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600: give the file the mode open() would
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def append_jsonl(path, record, kind=None):
    """Append one record as one line, flushed and fsynced, so a killed job resumes from what is on disk.
    A line cut off by an earlier crash is ended first, so it fails read_jsonl loudly instead of eating this one."""
    if kind:
        validate(record, kind, f"{path}:(appended)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def finished(out):
    """{problem id: its record count} from OUT.done, whose lines "ID COUNT" are written after all of a problem's
    records are on disk (a resumable output: tree_search.py)."""
    done = Path(str(out) + ".done")
    rows = [line.split() for line in done.read_text().splitlines() if line.strip()] if done.exists() else []
    return {r[0]: int(r[1]) if len(r) > 1 else None for r in rows}


def keep_finished(out, done, kind):
    """Rewrite OUT with only the records of finished problems (done: finished()): a killed run's partial problem (and
    a line cut off mid-write) goes, to be redone. A finished problem whose valid records are not all there (a bad
    line among them: unparsable or invalid, said with its file line) is redone too. -> (records kept, ids to redo)."""
    lines = Path(out).read_text(encoding="utf-8").splitlines() if Path(out).exists() else []
    parsed, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append(validate(json.loads(line), kind, f"{out}:{n}"))
        except (json.JSONDecodeError, RecordError) as e:
            bad.append(f"{out}:{n}" if isinstance(e, json.JSONDecodeError) else str(e))
    have = {}
    for r in parsed:
        pid = r.get("meta", {}).get("problem_id")
        have[pid] = have.get(pid, 0) + 1
    redo = {pid for pid, n in done.items() if n is not None and have.get(pid, 0) != n}
    if redo:
        print(f"[resume] {out}: redoing {len(redo)} finished problems whose records are not all intact "
              f"({sorted(redo)[:5]}); bad lines: {bad[:3]}")
    kept = [r for r in parsed if r.get("meta", {}).get("problem_id") in set(done) - redo]
    write_jsonl(out, kept, kind)
    return len(kept), redo


def check_resume(out, settings, resume):
    """Refuse to mix runs: OUT.settings.json holds the settings that made OUT; --resume with others, or an OUT.done
    without its OUT, is an error (nothing is written)."""
    done, sf = Path(str(out) + ".done"), Path(str(out) + ".settings.json")
    if not resume:
        if Path(out).exists() or done.exists() or sf.exists():
            raise SystemExit(f"{out} exists: pass --resume to continue it, or delete it (and {done}, {sf})")
    elif done.exists() and not Path(out).exists():
        raise SystemExit(f"{done} lists finished problems but {out} is missing: their labels are lost; "
                         f"delete {done} and {sf} to start over")
    elif sf.exists():
        old = json.loads(sf.read_text())
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise SystemExit(f"{out} was made with other settings {diff} (was, now): --resume continues the same "
                             "run only; use another --out")
    elif Path(out).exists() or done.exists():
        raise SystemExit(f"{sf} is missing: cannot tell which settings made {out}; use another --out")
    sf.write_text(json.dumps(settings, indent=1))


def resolve_image(record_path, image_path):
    """An image path from a record: absolute as is, else relative to the folder of the record file."""
    p = Path(image_path)
    return p if p.is_absolute() else Path(os.path.normpath(Path(record_path).absolute().parent / p))


def check_images(path, records):
    """Raise FileNotFoundError naming file:line, the record id and the resolved path of the first missing image."""
    for i, r in enumerate(records, 1):
        images = r.get("images") or ([r["image"]] if r.get("image") else [])
        for image in images:
            resolved = resolve_image(path, image)
            if not resolved.is_file():
                raise FileNotFoundError(f'{path}:{i}: record "{r.get("id")}": image "{image}" not found '
                                        f"(looked for {resolved})")


def _slug(s):
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")


def load_mathv(root=None):
    """MATH-V testmini -> (problems, candidates). Problem images are absolute paths. One candidate per response
    row, id f"{problem_id}-{model slug}-{k}": k counts a model's response sets, its answer-only set first (k=0),
    then its chain-of-thought set, so ids are stable. Candidates carry "cot" (a chain-of-thought set) and
    "source_file". A response that splits into no step is skipped and counted on stderr (none in the shipped
    data: 304 problems, 4560 candidates)."""
    root = Path(root) if root else MATHV
    problems = [validate({"id": str(p["id"]), "image": str(resolve_image(root / "problems.jsonl", p["image"])),
                          "question": p["question"], "answer": p["answer"], "options": p.get("options") or [],
                          "subject": p.get("subject"), "level": p.get("level")}, "problem", f"{root}/problems.jsonl")
                for p in read_jsonl(root / "problems.jsonl")]
    rows = read_jsonl(root / "responses.jsonl")
    sets = {}  # model -> its source files, answer-only first
    for r in rows:
        sets.setdefault(r["model"], set()).add(r["source_file"])
    k_of = {f: k for files in sets.values() for k, f in enumerate(sorted(files, key=lambda f: ("CoT" in f, f)))}
    candidates, skipped = [], 0
    for lineno, r in enumerate(rows, 1):
        steps = split_steps(r["response"] or "")
        if not steps:
            skipped += 1
            continue
        candidates.append(validate({
            "id": f'{r["id"]}-{_slug(r["model"])}-{k_of[r["source_file"]]}', "problem_id": str(r["id"]),
            "steps": steps, "answer": r["model_answer"], "correct": r["correct"], "policy": r["model"],
            "text": r["response"], "cot": "CoT" in r["source_file"], "source_file": r["source_file"]},
            "candidate", f"{root}/responses.jsonl:{lineno}"))
    if skipped:
        print(f"load_mathv: skipped {skipped} of {len(rows)} responses with no step (empty text)", file=sys.stderr)
    return problems, candidates


def to_trl(record):
    """A labelled record -> a TRL PRM row {"prompt", "completions", "labels", "images"}. TRL's labels are bools,
    so this loses soft labels: a label >= 0.5 becomes True. Keep our format wherever soft labels matter."""
    return {"prompt": record["prompt"], "completions": list(record["completions"]),
            "labels": [float(x) >= 0.5 for x in record["labels"]], "images": list(record.get("images", []))}


def from_trl(row, id=None):
    """A TRL PRM row (bool labels) -> a labelled record with labels 1.0 / 0.0. Without an id in the row or the
    argument, the id is a stable hash of the prompt and completions."""
    rec = {"id": id or row.get("id") or hashlib.sha1(json.dumps([row["prompt"], row["completions"]]).encode())
           .hexdigest()[:12], "images": list(row.get("images") or []), "prompt": row["prompt"],
           "completions": list(row["completions"]), "labels": [float(bool(x)) for x in row["labels"]]}
    return validate(rec, "labelled", "TRL row")


def mathv_stats(root=None, examples=3):
    """Print the histogram of steps per chain-of-thought answer and the share of long answers cut in >= 2 steps."""
    _, candidates = load_mathv(root)
    cot = [c for c in candidates if c["cot"]]
    counts = Counter(len(c["steps"]) for c in cot)
    print(f"MATH-V chain-of-thought answers: {len(cot)} (of {len(candidates)} candidates)")
    print("steps  answers")
    for n in range(1, 16):
        c = sum(v for k, v in counts.items() if (k == n if n < 15 else k >= n))
        print(f"{n if n < 15 else '15+':>5}  {c:>7}  {'#' * round(60 * c / len(cot))}")
    long = [c for c in cot if len(c["text"]) > 300]
    share = sum(len(c["steps"]) >= 2 for c in long) / max(len(long), 1)
    print(f"median steps {sorted(len(c['steps']) for c in cot)[len(cot) // 2]}; answers > 300 chars: {len(long)}, "
          f"split into >= 2 steps: {share:.1%}")
    shown = {}  # one long answer from each of the first `examples` policies, for a look at real splits
    for c in long:
        shown.setdefault(c["policy"], c)
    for c in list(shown.values())[:examples]:
        print(f"\n--- {c['id']} ({c['policy']}, {len(c['steps'])} steps)")
        for i, s in enumerate(c["steps"], 1):
            print(f"  [{i}] {s[:160]!r}{'...' if len(s) > 160 else ''}")
    return share


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="FILE", help="validate FILE and print record and image counts")
    ap.add_argument("--kind", choices=KINDS, help="record kind of --check FILE (omit: JSON syntax only)")
    ap.add_argument("--images", action="store_true", help="with --check: also check that every image exists")
    ap.add_argument("--mathv-stats", action="store_true", help="print the step-count distribution over MATH-V")
    ap.add_argument("--mathv", metavar="DIR", default=None, help=f"MATH-V folder (default {MATHV})")
    args = ap.parse_args(argv)
    if not (args.check or args.mathv_stats):
        ap.error("nothing to do: give --check FILE or --mathv-stats")
    if args.check:
        try:
            records = read_jsonl(args.check, args.kind)
            if args.images:
                check_images(args.check, records)
        except (RecordError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        n_img = sum(len(r.get("images") or ([r["image"]] if r.get("image") else [])) for r in records)
        print(f"{args.check}: {len(records)} {args.kind or 'JSON'} records OK, {n_img} image paths"
              f"{' (all exist)' if args.images else ''}")
        if args.kind == "candidate":
            print(f"  steps {sum(len(r['steps']) for r in records)}, correct "
                  f"{Counter(r['correct'] for r in records)}")
        if args.kind == "labelled":
            labels = [x for r in records for x in r["labels"]]
            print(f"  steps {len(labels)}, mean label {sum(labels) / max(len(labels), 1):.3f}, "
                  f"soft {sum(0 < x < 1 for x in labels)}")
    if args.mathv_stats:
        mathv_stats(args.mathv)


if __name__ == "__main__":
    cli.run(main)

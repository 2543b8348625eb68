"""Record formats as JSONL (docs/DESIGN.md "Record formats"): validated reading and writing, image paths, the
bookkeeping of resumable outputs, TRL's PRM rows.

    python -m common.data --check cands.jsonl --kind candidate   # validate a file, print its counts

Kinds: problem, candidate, score, labelled (step-labelled, TRL's PRM format plus images). Every bad line raises
RecordError naming file:line and the field. Image paths in a record are relative to the record file's folder, or
absolute.
"""
import argparse
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image

from common import cli

KINDS = ("problem", "candidate", "score", "labelled")


class RecordError(ValueError):
    """A bad JSONL line; the message reads 'file:line: field "name": expected ...'."""


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_or_num(v):
    return isinstance(v, str) or _num(v)


def _is_str(v):
    return isinstance(v, str)


def _strs(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _steps(v):
    return _strs(v) and all(x.strip() for x in v)  # a blank step would still be scored


def _nums(v):
    return isinstance(v, list) and all(_num(x) for x in v)


def _probs(v):
    return _nums(v) and all(0 <= x <= 1 for x in v)


def _first_error(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= -1


def _answer(v):
    return v is None or _str_or_num(v)


def _correct(v):
    return v is None or isinstance(v, bool)


def _list(v):
    return isinstance(v, list)


def _family(v):
    return v in ("text", "visual")


def _object(v):
    return isinstance(v, dict)


def _images(v):
    return _strs(v) and len(v) > 0

# kind -> field -> (required, check, what the field must be). Fields not listed are kept as they are.
SCHEMAS = {
    "problem": {
        "id": (True, _is_str, "a string"), "image": (True, _is_str, "a string (image path)"),
        "question": (True, _is_str, "a string"), "answer": (True, _str_or_num, "a string (or a number)"),
        "options": (False, _list, "a list"),
        "family": (False, _family, '"text" or "visual"')},
    "candidate": {
        "id": (True, _is_str, "a string"), "problem_id": (True, _is_str, "a string"),
        "steps": (True, _steps, "a list of non-empty strings"),
        "answer": (True, _answer, "a string or null"),
        "correct": (True, _correct, "true, false or null"),
        "first_error": (False, _first_error, "an integer >= -1 (-1: no wrong step)"),
        "policy": (False, _is_str, "a string"), "text": (False, _is_str, "a string")},
    "score": {
        "candidate_id": (True, _is_str, "a string"), "scores": (False, _nums, "a list of numbers"),
        "score": (False, _num, "a number"), "model": (False, _is_str, "a string"),
        "method": (False, _is_str, "a string")},
    "labelled": {
        "id": (True, _is_str, "a string"), "images": (True, _images, "a non-empty list of strings (image paths)"),
        "prompt": (True, _is_str, "a string"), "completions": (True, _steps, "a list of non-empty strings"),
        "labels": (True, _probs, "a list of numbers in [0, 1]"),
        "first_error": (False, _first_error, "an integer >= -1 (-1: no wrong step)"),
        "values": (False, _nums, "a list of numbers"), "meta": (False, _object, "an object")},
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
    meta = record.get("meta", {}) if kind == "labelled" else {}
    correct = meta.get("correct")
    if "correct" in meta and not (isinstance(correct, bool) or (_num(correct) and 0 <= correct <= 1)):
        raise RecordError(f'{where}: field "meta.correct": expected true, false or a number in [0, 1] (the '
                          f'outcome an ORM learns), got {json.dumps(correct)[:60]}')
    if _num(record.get("answer")):
        record["answer"] = str(record["answer"])
    if kind == "labelled":
        record["labels"] = [float(x) for x in record["labels"]]
    return record


def read_jsonl(path, kind=None, nonempty=False, lines=False):
    """Read a JSONL file (blank lines skipped) and validate every line against `kind` (None: no validation).
    Problems, candidates and labelled records must have unique ids. nonempty: no record is an error. lines:
    [(line number, record)]."""
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
            if kind in ("problem", "candidate", "labelled"):
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
            raise ValueError(f"{out} exists: pass --resume to continue it, or delete it (and {done}, {sf})")
    elif done.exists() and not Path(out).exists():
        raise ValueError(f"{done} lists finished problems but {out} is missing: their labels are lost; "
                         f"delete {done} and {sf} to start over")
    elif sf.exists():
        same_settings(sf, settings, out)
    elif Path(out).exists() or done.exists():
        raise ValueError(f"{sf} is missing: cannot tell which settings made {out}; use another --out")
    sf.write_text(json.dumps(settings, indent=1))


def same_settings(settings_file, settings, out):
    """--resume continues only the run that made `out`: an error naming each setting that differs from those in
    its `settings_file` (tree_search.py's OUT.settings.json, train.py's OUT/settings.json)."""
    old = json.loads(Path(settings_file).read_text())
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
    if diff:
        raise ValueError(f"{out} was made with other settings (was -> now: {'; '.join(diff)}): --resume continues "
                         "the same run only; use another --out")


def file_hash(path):
    """The SHA-256 of a file's bytes (a settings key: the same name may hold other records)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
                what = "is not a regular file" if resolved.exists() else "not found"
                raise FileNotFoundError(f'{path}:{i}: record "{r.get("id")}": image "{image}" {what} '
                                        f"(looked for {resolved})")


# The most pixels an image may have: a 20000 x 20000 PNG of a few KB decodes to 1.2 GB. PIL's own guard (its
# MAX_IMAGE_PIXELS) only warns up to twice its limit; open_image refuses from the header, before decoding.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def open_image(source, where):
    """An image as RGB from a path or a file object (a request's bytes). A ValueError names `where` (the file
    and record that point at it) and what is wrong: not a regular file (a FIFO would block the run), more than
    MAX_PIXELS pixels, or not an image at all; a missing path is a FileNotFoundError."""
    if not hasattr(source, "read"):
        try:
            mode = os.stat(source).st_mode  # before open(): opening a FIFO waits for a writer
        except FileNotFoundError:
            raise FileNotFoundError(f"{where}: image {source} not found") from None
        if not stat.S_ISREG(mode):
            raise ValueError(f"{where}: image {source} is not a regular file")
    name = "the image" if hasattr(source, "read") else f"image {source}"
    try:
        with Image.open(source) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ValueError(f"{where}: {name} is {image.width} x {image.height} pixels, more than "
                                 f"{MAX_PIXELS:,}")
            return image.convert("RGB")
    except Image.DecompressionBombError:  # more than twice PIL's limit: refused by Image.open itself
        raise ValueError(f"{where}: {name} has more than {MAX_PIXELS:,} pixels") from None
    except OSError as e:  # not an image (UnidentifiedImageError), or a truncated one
        raise ValueError(f"{where}: {name} cannot be read as an image ({e})") from None


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--check", metavar="FILE", help="validate FILE and print record and image counts")
    ap.add_argument("--kind", choices=KINDS, help="record kind of --check FILE (omit: JSON syntax only)")
    ap.add_argument("--images", action="store_true", help="with --check: also check that every image exists")
    args = ap.parse_args(argv)
    if not args.check:
        ap.error("nothing to do: give --check FILE")
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


if __name__ == "__main__":
    cli.run(main)

"""Step segmentation: cut a model's answer into reasoning steps. Pure Python (no torch), lossless: only the step
markers ("Step 2:", "3.", "- ", the first "Step k" with a header line before it) are dropped, lost_chars checks.
It imports no other project file, so the plumbing may use it (reading real answers, common/mathv.py).

    python steps.py answer.txt                # print the steps of the answer in a text file (- for stdin)
    python steps.py answer.txt --how chunks   # the ablation's other cuts (CUTS): chunks (24 characters), pairs

Rules, in order: "Step k" markers (typos too: "SStep 1:", "Setp 2.", "Step3:"), when present, are the only
boundaries, and what comes before the first one belongs to step 1 (a header line alone, "Answer:", is dropped with
that marker); else blank-line paragraphs and list items; else single lines; one plain paragraph is cut into
sentences. Decimals ("3.5"), abbreviations ("e.g.") and LaTeX math are never cut. The ablation in bench.py also cuts
the writer's steps other ways (CUTS): the paper's finding that PRMs need clear step divisions.
"""
import argparse
import bisect
import os
import re
import sys

# A step marker at a line start: "Step 1:" "step 2." "**Step 3:**" "**Step 4**:" "## Step 5 -" "步骤6：" "第7步："; the
# word's typos too: a doubled letter ("SStep", "Stepp"), a swap ("Setp", "Stpe"), "Stp" (not "Steps 1-3", "Sep 3.").
_WORD = r"s(?:s*t+e+p+|etp|tpe|tp)"
_STEP = re.compile(rf"^[ \t]*(?:#+[ \t]*)?(?:\*\*|__)?[ \t]*(?:{_WORD}[ \t]*\d+|步骤[ \t]*\d+|第[ \t]*\d+[ \t]*步)"
                   r"[ \t]*(?:(?:\*\*|__)?[ \t]*(?:[:：、)-]|\.(?!\d))(?:[ \t]*(?:\*\*|__))?|\*\*|__|(?=\n|$))[ \t]*",
                   re.I | re.M)
_INLINE_STEP = re.compile(rf"(?<=[.!?。！？:：])[ \t]+(?=(?:\*\*)?S(?i:{_WORD[1:]})[ \t]*\d+[ \t]*(?:\*\*)?[:.])")
# A header before the first "Step k" marker, on one line, no number or math: "Answer:" "**Solution**" "## Solution"
# "Let's solve this step by step." (at most HEADER_CHARS; anything else before the marker is content)
_HEADER = re.compile(r"#+[^\n\d$=\\]*|(?:\*\*|__)[^\n\d$=\\]*(?:\*\*|__)[:：]?"
                     r"|[^\n\d$=\\]*(?:[:：]|step[- ]by[- ]step[.!]?)", re.I)
HEADER_CHARS = 60
# A list item at a line start: "1. " "2) " "(3) " "4、" "- " "* " "• " (a marker needs the space: "-1" is content)
_LIST = re.compile(r"[ \t]*(?:\(\d{1,2}\)|（\d{1,2}）|\d{1,2}[.)、](?!\d)|[-*•])[ \t]+")
# LaTeX math is never cut: $$..$$, \[..\], \(..\), \begin{X}..\end{X}, and $..$, which stays on one line so that a
# lone "$5" cannot swallow the paragraphs after it (_math_spans finds them).
_BEGIN = re.compile(r"\\begin\{([A-Za-z*]+)\}")
_END = re.compile(r"\\end\{([A-Za-z*]+)\}")
_INLINE = re.compile(r"(?:\\.|[^$\\\n])+", re.S)  # inside $..$: escapes (\$) and anything but "$" and a newline
_DISPLAY = re.compile(r"[ \t]*(?:\$\$|\\\[|\\begin\{)")
# A sentence ends at . ! ? before a space (so never in 3.5), also as "$y = 6.$ Then"; or at 。！？ with no space.
_SENTENCE_END = re.compile(r"[.!?](?:\$|\\\))?[\"'”’)\]]*(?=\s)|[。！？][\"'”’」）]*")
_NOT_SPACE = re.compile(r"\S")
_ABBREV = {"e.g.", "i.e.", "fig.", "figs.", "eq.", "eqs.", "vs.", "cf.", "approx.", "resp.", "mr.", "mrs.", "ms.",
           "dr.", "vol.", "sec.", "ch.", "ex.", "al.", "thm.", "def.", "lem.", "prop.", "env."}


def _math_spans(text):
    """The (start, end) of each piece of LaTeX math, left to right. At a "$" or "\\" the delimiters are tried in
    the order above; a pair needs something between its ends; the first closer after an opener closes it. Every
    closer's positions are listed once, so an opener without one ("\\[ x \\[ x ...") costs a lookup, not a scan
    of the rest of the text: linear in its length."""
    closers = {"$$": [m.start() for m in re.finditer(r"(?=\$\$)", text)],
               "\\]": [m.start() for m in re.finditer(r"\\\]", text)],
               "\\)": [m.start() for m in re.finditer(r"\\\)", text)]}
    for m in _END.finditer(text):
        closers.setdefault(m.group(), []).append(m.start())

    def close(closer, after):  # the end of the first `closer` at or after `after`, or None
        at = closers.get(closer, [])
        i = bisect.bisect_left(at, after)
        return at[i] + len(closer) if i < len(at) else None

    spans, done = [], 0
    for m in re.finditer(r"[$\\]", text):
        i = m.start()
        if i < done:  # inside the math just found
            continue
        end = None
        if text.startswith("$$", i):
            end = close("$$", i + 3)
        elif text.startswith(("\\[", "\\("), i):
            end = close("\\]" if text[i + 1] == "[" else "\\)", i + 3)
        elif begin := _BEGIN.match(text, i):
            end = close(f"\\end{{{begin.group(1)}}}", begin.end() + 1)
        if end is None and text[i] == "$" and text[i - 1:i] != "\\":  # $..$, not after a backslash
            body = _INLINE.match(text, i + 1)
            end = body.end() + 1 if body and text.startswith("$", body.end()) else None
        if end is not None:
            spans.append((i, end))
            done = end
    return spans


def _split_at(text, pattern, keep=None):
    """Cut `text` after each match of `pattern` (and that `keep` accepts) unless the cut falls inside LaTeX math."""
    math = _math_spans(text)
    starts = [a for a, _ in math]
    pieces, start = [], 0
    for m in re.finditer(pattern, text):
        k = bisect.bisect_left(starts, m.end()) - 1  # the last math that starts before the cut
        if (k >= 0 and m.end() < math[k][1]) or (keep and not keep(text, m)):
            continue
        pieces.append(text[start:m.end()])
        start = m.end()
    return pieces + [text[start:]]


def _is_sentence_end(text, m):
    after = _NOT_SPACE.search(text, m.end())
    if not after or after.group().islower():  # "approx. equal", "a. b." and the text's end are not boundaries
        return False
    word = m.end()  # where the word ending here starts (no copy of the text before it: linear in all)
    while word > 0 and not text[word - 1].isspace():
        word -= 1
    return text[word:m.end()].lstrip("([{\"'").lower() not in _ABBREV


def _lines_to_steps(text, sentences):
    """Blank lines separate paragraphs; list items always start a step; a single newline starts one only when the
    text has no blank-line paragraphs; display math joins the line before it. One plain chunk -> its sentences."""
    paras = [p for p in _split_at(text, r"\n[ \t]*\n") if p.strip()]
    steps, listed = [], False  # steps: the lines of each step, joined at the end (no string grown line by line)
    for para in paras:
        first = True
        for line in _split_at(para, r"\n"):
            m = _LIST.match(line)
            listed |= bool(m)
            if not line.strip():
                continue
            if first or m or (len(paras) == 1 and not _DISPLAY.match(line)):
                steps.append([line[m.end():] if m else line])
            else:
                steps[-1].append(line)
            first = False
    steps = ["".join(lines) for lines in steps]
    if sentences and not listed and len(steps) == 1:
        steps = _split_at(steps[0], _SENTENCE_END, _is_sentence_end)
    return [s.strip() for s in steps if s.strip()]


def split_steps(text: str) -> list[str]:
    """Cut a model's answer into reasoning steps, markers ("Step 2:", "3.", "- ") stripped, nothing else lost.

    "Step k" markers, when present, are the only boundaries (a step keeps its blank lines, lists and display math),
    so step i is the text of the i-th marker: a label that counts the marked steps ("the first error is in Step 3")
    points at steps[2]. Text before the first marker must not shift that count, so it belongs to step 1: a header
    alone ("Answer:", "**Solution**", "Let's solve this step by step.": _HEADER) says nothing a label could judge and
    is dropped with the marker; any other preamble may hold reasoning (a claim about the image), so step 1 keeps it
    verbatim, its "Step 1:" inside, a contiguous piece of the text. Otherwise see _lines_to_steps."""
    text = _INLINE_STEP.sub("\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    marks = list(_STEP.finditer(text))
    if not marks:
        return _lines_to_steps(text, sentences=True)
    pre = text[:marks[0].start()].strip()
    header = not pre or (len(pre) <= HEADER_CHARS and _HEADER.fullmatch(pre))
    starts = [marks[0].end() if header else 0] + [m.end() for m in marks[1:]]
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [s for s in (text[a:e].strip() for a, e in zip(starts, ends)) if s]


def lost_chars(text: str, steps: list[str]) -> list[str]:
    """The runs of non-whitespace characters of `text` that `steps` leave out: for a correct split only markers
    (the first "Step k" marker with the header line before it, if any: split_steps). Raises ValueError when a step
    (whitespace aside) is not the next contiguous piece of `text`."""
    src, i, lost = re.sub(r"\s", "", text), 0, []
    for step in steps:
        j = src.find(re.sub(r"\s", "", step), i)
        if j < 0:
            raise ValueError(f"step {step[:40]!r} is not a piece of the text after position {i}")
        lost += [src[i:j]] if j > i else []
        i = j + len(re.sub(r"\s", "", step))
    return lost + ([src[i:]] if src[i:] else [])


CHUNK = 24  # characters per piece of the "chunks" cut


def chunks(steps):
    """24-character pieces of the answer that ignore the writer's boundaries."""
    text = " ".join(steps)
    return [text[i:i + CHUNK] for i in range(0, len(text), CHUNK)]


def pairs(steps):
    """Coarse steps: the writer's steps two by two."""
    return [" ".join(steps[i:i + 2]) for i in range(0, len(steps), 2)]


# The ways bench.py cuts the same answers (its segmentation table scores each with the PRM). A cut takes the
# writer's steps and returns the pieces the PRM scores as steps.
# fork here: a cut of your own, one line here (python bench.py then reports it in results/report.md)
CUTS = {"steps": list, "chunks": chunks, "pairs": pairs}


def segment(steps, how):
    """The answer's steps cut the way CUTS[how] cuts them."""
    if how not in CUTS:
        raise ValueError(f"unknown segmentation {how!r}: expected one of {', '.join(CUTS)}")
    return CUTS[how](list(steps))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("file", help="a text file with one answer (- reads stdin)")
    ap.add_argument("--how", default="steps", choices=list(CUTS), help="how to cut (default steps)")
    a = ap.parse_args(argv)
    raw = sys.stdin.buffer.read() if a.file == "-" else open(a.file, "rb").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{a.file}: not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from None
    steps = segment(split_steps(text), a.how)
    for i, s in enumerate(steps, 1):
        print(f"[{i}] {s}")
    lost = lost_chars(text, split_steps(text))
    print(f"{len(steps)} steps; characters dropped (markers only): {lost}")
    return steps


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `python steps.py answer.txt | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ValueError, OSError) as e:  # a bad file: one line, no traceback, exit status 2 as the other scripts
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

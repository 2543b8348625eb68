"""Final answers: read a solution's final answer and decide whether two answers are the same.

    extract_answer(["3 + 4 = 7.", "The answer is 7."]) -> "7"
    match_answer: True for "\\frac12" ~ "0.5", "12 cm" ~ "12", "90^\\circ" ~ "90", "x = 5" ~ "5", "Answer: C" ~ "c",
    "\\text{B}" ~ "(B)", "1,000" ~ "1000", "1.414" ~ "\\sqrt{2}", "50%" ~ "0.5"; False for "(1,23)" ~ "(12,3)";
    match_answer("2\\pi", "D", options=["$\\pi$", "$3 \\pi$", "$\\frac{\\pi}{2}$", "$2 \\pi$"]) -> True

Two plain numbers compare as floats (relative 1e-6) without sympy: the fast path. Anything else is cleaned here (the
last \\boxed{}, "answer is", $, \\text{}, "x =", units, degrees, a cut-off "}") and read by math-verify (LaTeX ->
sympy: numbers, expressions, sets, intervals, equations). The glue for multiple choice: a letter in any dress
("(B)", "option B", "\\text{B}") is that letter; with `options`, an option's content ("$2 \\pi$" as "2\\pi", "15^\\circ"
as "15"), or its letter then its content ("D. 3:2"), is its letter. A decimal of 3 or more significant digits
matches an exact value it rounds to ("3.14" for \\pi).
"""
import functools
import logging
import math
import re

import sympy
from math_verify import LatexExtractionConfig, parse, verify


logging.getLogger("math_verify").setLevel(logging.ERROR)  # its one warning: "timeout disabled" (see _value)
NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
PLAIN = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|[-+]?\.\d+%?")  # thousands commas, never "1,23"
LETTER = re.compile(r"(?:option|choice)?\s*\(?([A-H])\)?[.:)]?", re.I)
LETTER_THEN = re.compile(r"\(?([A-H])\)?[.:)]?\s*(.+)", re.I)  # "D. 3:2", MATH-V's squashed "d3:2"
UNIT = re.compile(r"(?<=[\d}).])\s*(?:\^\s*\{?\\circ\}?|\\circ|°|\{?\s*(?:cm|mm|km|m|kg|g|mg|ml|l|s|min|h|"
                  r"units?|degrees?|grams?|meters?|metres?|dollars?|seconds?|minutes?|hours?|days?|years?)\}?"
                  r"(?:\s*\^\s*\{?[23]\}?|²|³)?)$", re.I)
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")  # braces nested up to 3 deep
WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")  # a word, not a LaTeX command: text, compared as text
LATEX = [LatexExtractionConfig()]


def numbers(text):
    """Every number a text states, in order, as floats."""
    return [float(x) for x in NUM.findall(text)]


def _clean(ans):
    """The bare answer: inside the last \\boxed{}, after "answer is", without $, \\text{}, "x =", units, degrees."""
    s = (BOXED.findall(str(ans)) or [str(ans)])[-1].strip()  # the last \boxed{...}
    s = re.split(r"answer\s*(?:is\s*:?|:)", s, flags=re.I)[-1]  # "Answer: C", "the answer is 5"
    s = re.sub(r"\\\$|\$|~|\\(?:left|right)(?![A-Za-z])", "", s).strip(" {}").rstrip(".").strip(" {}")
    s += "}" * (s.count("{") - s.count("}"))  # "\frac{1}{4" (a cut-off extraction) -> "\frac{1}{4}"
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s).strip()
    s = re.sub(r"^[A-Za-z]\s*=\s*(?=.)", "", s)  # "x = 5" -> "5"
    return UNIT.sub("", s).strip()


def _squash(s):
    return re.sub(r"[\s{}$]", "", s).lower()


@functools.lru_cache(maxsize=1 << 16)
def _value(s):
    """A cleaned answer -> float (any number: "1,000", "\\frac{3}{4}", "2\\pi", "8:5"), a sympy object (sets,
    tuples, intervals, equations, symbols), or the squashed text (words, or what math-verify cannot read)."""
    s = s.replace("\\%", "%")
    if PLAIN.fullmatch(t := s.replace(" ", "")):
        return float(t.rstrip("%").replace(",", ""))
    if len(s) == 1 and s.isalpha():
        return s.upper()
    # timeouts off (they use SIGALRM: main thread only); a 10^{10^{10}} never reaches sympy's arithmetic below
    e = None if not s or WORD.search(s) else next(iter(parse(
        "$" + s.rstrip("%") + "$", LATEX, "no_fallback", "first_match", parsing_timeout=None)), None)
    if getattr(e, "is_number", False):
        try:
            return float(e.evalf())
        except (TypeError, ValueError):  # complex, zoo
            return e
    if e is None or any(p.exp.is_number and abs(p.exp.evalf(3)) > 1e4 for p in e.atoms(sympy.Pow)):
        return _squash(s)
    return e


@functools.lru_cache(maxsize=1 << 16)
def _key(ans, options):
    """The answer's canonical form (options: a tuple): a letter for multiple choice, else _value."""
    s, opts = _clean(ans), [_clean(o) for o in options[:8]]
    if _squash(s) in (sq := [_squash(o) for o in opts]):  # an option's very text ("G" as option E) first
        return "ABCDEFGH"[sq.index(_squash(s))]
    if m := LETTER.fullmatch(s):
        return m.group(1).upper()
    m = LETTER_THEN.fullmatch(s)
    for i, o in enumerate(map(_value, opts)):  # an option's content ("2\\pi" for "$2 \\pi$"), or letter + content
        if _same(_value(s), o) or (m and m.group(1).upper() == "ABCDEFGH"[i] and _same(_value(m.group(2)), o)):
            return "ABCDEFGH"[i]
    return _value(s)


def _same(p, g):
    if isinstance(p, float) and isinstance(g, float):
        return math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(p, (sympy.Basic, sympy.MatrixBase)) and isinstance(g, (sympy.Basic, sympy.MatrixBase)):
        return verify(g, p, timeout_seconds=None)
    return type(p) is type(g) and p == g


def normalize(ans, options=None):
    """A hashable canonical answer (bon.py's vote key): a float for any number, a letter for multiple choice (option
    text -> its letter), else a string (sympy's, or the squashed lowercase text)."""
    k = _key(str(ans), tuple(options or ()))
    return k if isinstance(k, (float, str)) else str(k)


def match_answer(pred, gold, options=None):
    """True when pred and gold are the same answer (see the module docstring)."""
    a, b = str(pred).strip(), str(gold).strip()
    if pred is None or not a:
        return False
    if PLAIN.fullmatch(a) and PLAIN.fullmatch(b) and "%" not in a + b:  # the fast path: two plain numbers
        return math.isclose(float(a.replace(",", "")), float(b.replace(",", "")), rel_tol=1e-6, abs_tol=1e-9)
    p, g = _key(a, tuple(options or ())), _key(b, tuple(options or ()))
    if not (isinstance(p, float) and isinstance(g, float)):
        return _same(p, g)
    if _same(p, g) or ("%" in a and _same(p / 100, g)) or ("%" in b and _same(p, g / 100)):  # "50%" is 0.5 too
        return True
    for s, other, x, y in ((_clean(a), _clean(b), p, g), (_clean(b), _clean(a), g, p)):  # "3.14" for \pi
        d = re.fullmatch(r"-?\d+\.(\d+)", s)
        if d and not PLAIN.fullmatch(other) and len(s.lstrip("-0.").replace(".", "")) >= 3:
            return abs(x - y) <= 0.5 * 10 ** -len(d.group(1)) + 1e-12
    return False


def extract_answer(steps):
    """The final answer of a solution: "answer is X" or \\boxed{X} in the last steps, else the last number."""
    text = "\n".join(steps)
    m = re.findall(r"\\boxed\{([^{}]*)\}", text) or re.findall(r"answer is:?\s*\$?(-?[\w.]+)", text, re.I)
    if m:
        return m[-1].rstrip(".")
    nums = NUM.findall(text)
    return nums[-1] if nums else None

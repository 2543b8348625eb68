"""Final answers: read a solution's final answer and decide whether two answers are the same. Pure Python.

    extract_answer(["3 + 4 = 7.", "The answer is 7."]) -> "7"
    match_answer("\\frac{1}{2}", "0.5") -> True;  match_answer("(B)", "b") -> True

Numbers match to a relative 1e-6 (ints, decimals, simple LaTeX fractions, thousands commas); multiple choice by
letter or by the option's text; anything else as the same normalized string.
"""
import math
import re

NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def numbers(text):
    """Every number a text states, in order, as floats."""
    return [float(x) for x in NUM.findall(text)]


def normalize(ans, options=None):
    s = str(ans).strip()
    m = re.search(r"\\boxed\{([^{}]*)\}", s)
    s = (m.group(1) if m else s).strip().strip("$").strip().rstrip(".").strip()
    s = re.sub(r"^\(?([A-Ea-e])\)?[.:]?$", r"\1", s)  # "(B)", "B.", "b" -> "B"
    if options:
        letters = "ABCDEFGH"
        for i, o in enumerate(options):
            if s.lower() == str(o).strip().lower() and i < len(letters):
                return letters[i]
    if len(s) == 1 and s.isalpha():
        return s.upper()
    s = s.replace(",", "").replace(" ", "").replace("\\%", "").replace("%", "")
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m and int(m.group(2)) != 0:
        return int(m.group(1)) / int(m.group(2))
    try:
        return float(s)
    except ValueError:
        return s.lower()


def match_answer(pred, gold, options=None):
    """True when pred and gold are the same answer: numbers (ints, decimals, simple fractions, 1e-6 relative),
    multiple-choice letters ("(B)", "b", or the option's text), or the same normalized string."""
    if pred is None or str(pred).strip() == "":
        return False
    p, g = normalize(pred, options), normalize(gold, options)
    if isinstance(p, float) and isinstance(g, float):
        return math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9)
    return p == g


def extract_answer(steps):
    """The final answer of a solution: "answer is X" or \\boxed{X} in the last steps, else the last number."""
    text = "\n".join(steps)
    m = re.findall(r"\\boxed\{([^{}]*)\}", text) or re.findall(r"answer is:?\s*\$?(-?[\w.]+)", text, re.I)
    if m:
        return m[-1].rstrip(".")
    nums = NUM.findall(text)
    return nums[-1] if nums else None

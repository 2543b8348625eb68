"""answers.py on literal inputs: reading a solution's final answer, normalizing it, matching two answers."""
import answers


def test_match_answer():
    m = answers.match_answer
    assert m("7", "7") and m("7.0", "7") and m(" 7. ", "7") and m("$7$", "7")
    assert m("\\boxed{12}", "12") and m("1,000", "1000") and m("50%", "50") and m("\\dfrac{3}{4}", "0.75")
    assert m("(B)", "B") and m("b", "B") and m("B.", "B") and m("B:", "b")
    assert m("\\frac{1}{2}", "0.5") and m("2.50", "2.5") and m("0.1", "0.1000000001")  # 1e-6 relative
    assert m("red", "A", options=["red", "blue"]) and m("Blue", "(B)", options=["red", "blue"])
    assert m("Paris", " paris ")  # anything else: the same normalized string
    assert not m("8", "7") and not m("", "7") and not m("  ", "7") and not m(None, "7")
    assert not m("C", "B") and not m("-1", "1") and not m("0.1", "0.1001") and not m("\\frac{1}{0}", "0")


def test_normalize():
    n = answers.normalize
    assert n("\\boxed{3}") == 3.0 and n(" $1,250.$ ") == 1250.0 and n("\\tfrac{-1}{4}") == -0.25
    assert n("(c)") == "C" and n("x") == "X" and n("blue", ["red", "blue"]) == "B"
    assert n("Two Apples") == "twoapples"


def test_extract_answer():
    assert answers.extract_answer(["3 + 4 = 7.", "The answer is 7."]) == "7"
    assert answers.extract_answer(["so $\\boxed{B}$"]) == "B"
    assert answers.extract_answer(["The answer is: $12.", "Check: 12 - 5 = 7"]) == "12"
    assert answers.extract_answer(["3 + 4 = 7"]) == "7"
    assert answers.extract_answer(["no numbers"]) is None


def test_numbers():
    assert answers.numbers("Step 2: 3 red + 4 blue = 7.") == [2.0, 3.0, 4.0, 7.0]
    assert answers.numbers("a -2.5 and x1 and 1.5.") == [-2.5, 1.5]  # not the 1 of x1
    assert answers.numbers("no digits") == []

"""steps.py: split_steps on literal inputs with exact expected steps, its content guarantee over all of MATH-V, the
ablation's cuts (segment) and the CLI."""
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.mathv import MATHV  # noqa: E402
import steps  # noqa: E402
from steps import lost_chars, split_steps  # noqa: E402

FOUR = ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 7.", "The answer is 7."]


@pytest.mark.parametrize("text", [
    "Step 1: There are 3 red shapes.\nStep 2: There are 4 blue shapes.\nStep 3: 3 + 4 = 7.\nStep 4: The answer is 7.",
    "step 1. There are 3 red shapes.\nSTEP 2. There are 4 blue shapes.\nStep 3. 3 + 4 = 7.\nStep 4. The answer is 7.",
    "**Step 1:** There are 3 red shapes.\n**Step 2:** There are 4 blue shapes.\n**Step 3:** 3 + 4 = 7.\n"
    "**Step 4:** The answer is 7.",
    "Step 1: There are 3 red shapes. Step 2: There are 4 blue shapes. Step 3: 3 + 4 = 7. Step 4: The answer is 7.",
    "1. There are 3 red shapes.\n2. There are 4 blue shapes.\n3. 3 + 4 = 7.\n4. The answer is 7.",
    "1) There are 3 red shapes.\n2) There are 4 blue shapes.\n3) 3 + 4 = 7.\n4) The answer is 7.",
    "(1) There are 3 red shapes.\n(2) There are 4 blue shapes.\n(3) 3 + 4 = 7.\n(4) The answer is 7.",
    "There are 3 red shapes.\nThere are 4 blue shapes.\n3 + 4 = 7.\nThe answer is 7.",
    "There are 3 red shapes.\n\nThere are 4 blue shapes.\n\n3 + 4 = 7.\n\nThe answer is 7.\n",
    "There are 3 red shapes. There are 4 blue shapes. 3 + 4 = 7. The answer is 7.",
    "  There are 3 red shapes.\r\nThere are 4 blue shapes.\r\n3 + 4 = 7.\r\nThe answer is 7.  ",
])
def test_synthetic_answer_shapes_give_the_four_steps(text):
    assert split_steps(text) == FOUR


@pytest.mark.parametrize("text", ["7 - 3 = 4.", "2 * 11 = 22.", "-1", "The answer is 7.", "x = 3.5"])
def test_one_short_line_is_one_step(text):
    assert split_steps(text) == [text]


@pytest.mark.parametrize("text", ["", " ", "\n\n \t\n", "Step 1:", "1. \n2. "])
def test_nothing_but_whitespace_or_markers_gives_no_step(text):
    assert split_steps(text) == []


def test_markers_with_headings_and_multiline_bodies_stay_one_step_each():
    text = "**Step 1: Count**\n\nThere are 3 red shapes.\n\n### Step 2 - Add\n3 + 4 = 7.\nSo 7.\n\nStep 3\nDone."
    assert split_steps(text) == ["Count**\n\nThere are 3 red shapes.", "Add\n3 + 4 = 7.\nSo 7.", "Done."]


MARKED = "\n" + "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(FOUR))


@pytest.mark.parametrize("header", ["Answer:", "Solution:", "**Solution**", "**Solution:**", "## Solution",
                                    "Let's solve this step by step.", "Here is the solution:", "  Answer：\n"])
def test_a_header_before_step_1_is_dropped_with_the_marker_so_step_indices_do_not_shift(header):
    text = header + "\n" + MARKED
    assert split_steps(text) == FOUR
    assert lost_chars(text, FOUR) == [re.sub(r"\s", "", header) + "Step1:", "Step2:", "Step3:", "Step4:"]


@pytest.mark.parametrize("pre", ["First, let's look at the image. It shows 3 circles.", "Let's think.",
                                 "Answer: 7", "The answer is $x = 7$:", "Solution:\nThe image shows 3 circles.",
                                 "The red and blue shapes are counted, then added to get the total asked for."])
def test_a_preamble_with_content_is_kept_at_the_head_of_step_1(pre):
    """Content (a number, math, a second line, a sentence that is no header) may be reasoning a label judges: it
    stays, with the first marker, in step 1, so the labels that count the marked steps still line up."""
    text = pre + "\n" + MARKED
    assert split_steps(text) == [pre.strip() + "\n\nStep 1: There are 3 red shapes."] + FOUR[1:]
    assert lost_chars(text, split_steps(text)) == ["Step2:", "Step3:", "Step4:"]


@pytest.mark.parametrize("text", [
    "SStep 1: There are 3 red shapes.\nStepp 2: There are 4 blue shapes.\nSetp 3: 3 + 4 = 7.\nStep4: The answer is 7.",
    "step 1 : There are 3 red shapes.\nSTEP 2. There are 4 blue shapes.\nStpe 3) 3 + 4 = 7.\nStp 4 - The answer is 7.",
    "**SStep 1:** There are 3 red shapes.\n## Sttep 2: There are 4 blue shapes.\nSteep 3: 3 + 4 = 7.\n"
    "sstep 4: The answer is 7.",
    "Step 1: There are 3 red shapes. SStep 2: There are 4 blue shapes. Setp 3: 3 + 4 = 7. STEP 4: The answer is 7.",
])
def test_marker_typos_are_markers(text):
    assert split_steps(text) == FOUR


@pytest.mark.parametrize("text", ["Steps are easy.\nStepwise we go.\nSteps 1-3 are done.\nSep 3. was a Monday.",
                                  "Set 2: the red shapes.\nStep by step: 2 shapes.\nStepping 3 times."])
def test_words_like_step_in_prose_are_not_markers(text):
    assert split_steps(text) == text.split("\n")
    assert split_steps("Step 1: a = 2. Steps 2 and 3 follow.") == ["a = 2. Steps 2 and 3 follow."]


def test_step_numbers_with_decimals_are_not_markers():
    assert split_steps("Step 1.5 is skipped.") == ["Step 1.5 is skipped."]


def test_sentences_never_cut_in_decimals_abbreviations_or_math():
    text = "We use e.g. Fig. 2 and i.e. Eq. 3 here. Then add 3.5 and 2. The total is 5.5! Done?"
    assert split_steps(text) == ["We use e.g. Fig. 2 and i.e. Eq. 3 here.", "Then add 3.5 and 2.",
                                 "The total is 5.5!", "Done?"]
    assert split_steps("$x = 3.5$. Next.") == ["$x = 3.5$.", "Next."]
    assert split_steps("So $a. B$ holds. Then \\(c. D\\) too.") == ["So $a. B$ holds.", "Then \\(c. D\\) too."]
    assert split_steps("Thus $y = 6.$ Then $x = 2.$") == ["Thus $y = 6.$", "Then $x = 2.$"]
    assert split_steps("It is approx. equal to 3. That is all.") == ["It is approx. equal to 3.", "That is all."]


def test_display_math_stays_whole_and_joins_the_line_before():
    text = "We get\n\\[\nx = 3.\n\ny = 4\n\\]\nSo x + y = 7.\n\nThe answer is 7."
    assert split_steps(text) == ["We get\n\\[\nx = 3.\n\ny = 4\n\\]\nSo x + y = 7.", "The answer is 7."]
    text = "First, a = 1.\n$$\na + 1 = 2\n$$\nThe answer is 2."
    assert split_steps(text) == ["First, a = 1.\n$$\na + 1 = 2\n$$", "The answer is 2."]
    text = "Align:\n\\begin{align}\nx &= 1. \\\\\n\ny &= 2\n\\end{align}\nDone."
    assert split_steps(text) == ["Align:\n\\begin{align}\nx &= 1. \\\\\n\ny &= 2\n\\end{align}", "Done."]


def test_blank_line_paragraphs_keep_their_single_newlines():
    text = "Count the shapes:\nred 3,\nblue 4.\n\nAdd them: 3 + 4 = 7."
    assert split_steps(text) == ["Count the shapes:\nred 3,\nblue 4.", "Add them: 3 + 4 = 7."]


def test_list_items_split_inside_paragraphs_and_keep_continuation_lines():
    text = "We follow the operations:\n1. Start with 48.\n2. Subtract 20: 48 - 20 = 28\n   (the second flower)\n\n" \
           "- bullet one\n* bullet two\n• bullet three\n\nTherefore, 61."
    assert split_steps(text) == ["We follow the operations:", "Start with 48.",
                                 "Subtract 20: 48 - 20 = 28\n   (the second flower)", "bullet one", "bullet two",
                                 "bullet three", "Therefore, 61."]


def test_non_english():
    assert split_steps("有3个红色形状。有4个蓝色形状。3 + 4 = 7。答案是7。") == [
        "有3个红色形状。", "有4个蓝色形状。", "3 + 4 = 7。", "答案是7。"]
    assert split_steps("步骤1：有3个红色形状。\n步骤2：3 + 4 = 7。\n第3步：答案是7。") == [
        "有3个红色形状。", "3 + 4 = 7。", "答案是7。"]
    assert split_steps("Il y a 3 formes rouges. Il y a 4 formes bleues. Donc 3 + 4 = 7. La réponse est 7.") == [
        "Il y a 3 formes rouges.", "Il y a 4 formes bleues.", "Donc 3 + 4 = 7.", "La réponse est 7."]
    assert split_steps("Étape :\n1. Compter les formes, c.-à-d. 3.\n2. Réponse : 3.") == [
        "Étape :", "Compter les formes, c.-à-d. 3.", "Réponse : 3."]


def test_lost_chars_reports_markers_and_rejects_foreign_or_reordered_text():
    text = "Step 1: There are 3.\nStep 2: 3 + 4 = 7."
    assert lost_chars(text, split_steps(text)) == ["Step1:", "Step2:"]
    assert lost_chars(text, ["There are 3."]) == ["Step1:", "Step2:3+4=7."]
    with pytest.raises(ValueError):
        lost_chars(text, ["3 + 4 = 7.", "There are 3."])
    with pytest.raises(ValueError):
        lost_chars(text, ["There are 5."])


# Everything split_steps may drop: one step or list marker (whitespace already removed by lost_chars).
MARKER = re.compile(r"(?i)(?:#*(?:\*\*)?(?:s+t+e+p+\d+|步骤\d+|第\d+步)(?:\*\*)?[:.：、)\-]?(?:\*\*)?"
                    r"|\(\d{1,2}\)|（\d{1,2}）|\d{1,2}[.)、]|[-*•])+")


@pytest.fixture(scope="module")
def responses():
    return [json.loads(line) for line in open(MATHV / "responses.jsonl", encoding="utf-8")]


def test_no_content_is_lost_on_any_mathv_response(responses):
    assert len(responses) == 4560
    dropped, headers = 0, []
    for r in responses:
        steps = split_steps(r["response"])
        assert all(s and s == s.strip() for s in steps), r["response"]
        for k, run in enumerate(lost_chars(r["response"], steps)):  # raises if a step is not the next piece
            if not MARKER.fullmatch(run):
                headers.append((k, run))
            dropped += 1
    assert dropped > 500  # the corpus does use list markers, so the check above was exercised
    assert headers == [(0, "Let'sbreakdowntheproblemintosteps:Step1:")]  # the one header before a "Step 1:"


def test_long_chain_of_thought_answers_split_into_several_steps(responses):
    long = [r["response"] for r in responses if "CoT" in r["source_file"] and len(r["response"]) > 300]
    assert len(long) == 805
    share = sum(len(split_steps(t)) >= 2 for t in long) / len(long)
    assert share >= 0.9


def test_segment_cuts_the_same_answer_three_ways():
    assert steps.segment(FOUR, "steps") == FOUR
    assert steps.segment(FOUR, "pairs") == ["There are 3 red shapes. There are 4 blue shapes.",
                                            "3 + 4 = 7. The answer is 7."]
    assert steps.segment(FOUR[:3], "pairs") == ["There are 3 red shapes. There are 4 blue shapes.", "3 + 4 = 7."]
    assert steps.CHUNK == 24
    assert steps.segment(FOUR, "chunks") == ["There are 3 red shapes. ", "There are 4 blue shapes.",
                                             " 3 + 4 = 7. The answer i", "s 7."]
    assert steps.segment([], "pairs") == [] and steps.segment([], "chunks") == []
    with pytest.raises(ValueError, match="unknown segmentation 'no-such-cut'"):
        steps.segment(FOUR, "no-such-cut")


def test_splitting_is_linear_in_the_length_of_the_text():
    """Big inputs, results checked: a 1 MB paragraph, 200 KB of unclosed "\\[", 100,000 lines of one paragraph
    (the quadratic splitter took minutes on each; here well under a second; the alarm turns a hang into a failure)."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("split_steps ran over 60 s"))
    signal.alarm(60)
    try:
        sentence = "There are 3 red shapes, e.g. $x = 3.5$ of them. "
        n = 1_000_000 // len(sentence)
        assert split_steps(sentence * n) == [sentence.strip()] * n
        unclosed = "\\[ x " * 40_000  # no "\\]" closes any of them: no math, nothing to cut
        assert split_steps(unclosed) == [unclosed.strip()]
        lines = "a = 1\n" * 100_000
        assert split_steps(lines + "\nb") == [lines.strip(), "b"]
    finally:
        signal.alarm(0)


@pytest.mark.parametrize("cut", list(steps.CUTS))
def test_every_cut_keeps_the_answer_whole_and_in_order(cut):
    """A cut may move the boundaries, never the text: every character but spaces, in order, in non-empty pieces."""
    pieces = steps.segment(FOUR, cut)
    assert pieces and all(p.strip() for p in pieces)
    assert "".join("".join(pieces).split()) == "".join("".join(FOUR).split())


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, str(Path(steps.__file__)), *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_the_steps_of_a_file_and_the_dropped_markers(tmp_path):
    f = tmp_path / "answer.txt"
    f.write_text("Step 1: There are 3 red shapes.\nStep 2: There are 4 blue shapes.\nStep 3: 3 + 4 = 7.\n"
                 "Step 4: The answer is 7.\n", encoding="utf-8")
    out = run_cli(f)
    assert out.returncode == 0, out.stderr
    dropped = "['Step1:', 'Step2:', 'Step3:', 'Step4:']"
    assert out.stdout.splitlines() == [f"[{i + 1}] {s}" for i, s in enumerate(FOUR)] + [
        f"4 steps; characters dropped (markers only): {dropped}"]
    pairs = run_cli(f, "--how", "pairs")
    assert pairs.stdout.splitlines() == ["[1] There are 3 red shapes. There are 4 blue shapes.",
                                         "[2] 3 + 4 = 7. The answer is 7.",
                                         f"2 steps; characters dropped (markers only): {dropped}"]
    assert run_cli("-", stdin="1. a = 2.\n2. b = 3.").stdout.splitlines() == [
        "[1] a = 2.", "[2] b = 3.", "2 steps; characters dropped (markers only): ['1.', '2.']"]
    bad = run_cli(f, "--how", "no-such-cut")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr

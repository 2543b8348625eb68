"""Pictures a person reads: a contact sheet of suite problems with their candidates coloured by the oracle
(policy.py writes it), and one scored answer with each step's score beside the oracle's label (prm.py --show).
"""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

GOOD, BAD, GREY = (20, 130, 40), (200, 20, 20), (120, 120, 120)


def contact_sheet(probs, cands, images_dir, out, per_problem=2):
    """A picture: each problem's image (x3), its question, candidates coloured by the oracle; the legend (returned)."""
    font, rows, good, bad, x = ImageFont.load_default(size=12), probs[:6], GOOD, BAD, 6
    sheet = Image.new("RGB", (900, 50 + 210 * len(rows)), "white")
    d = ImageDraw.Draw(sheet)
    legend = [(f"{len(rows)} of {len(probs)} problems, {per_problem} candidates each. Steps by the oracle:", "black"),
              ("right", good), ("the first wrong step and every step after it", bad),
              ("(trapped: step k): most samples get step k wrong the same way, so a majority vote can fail", "gray")]
    for t, colour in legend:
        d.text((x, 6) if colour != "gray" else (6, 26), t, fill=colour, font=font)
        x += d.textlength(t, font=font) + 12
    for y, p in zip(range(50, 50 + 210 * len(rows), 210), rows):
        sheet.paste(Image.open(Path(images_dir) / f"{p['id']}.png").resize((192, 192), Image.NEAREST), (6, y + 6))
        d.rectangle((5, y + 5, 198, y + 198), outline=(180, 180, 180))  # the image's edge (its background is white)
        d.text((210, y + 6), f"[{p['kind']}] {p['question']}  gold: {p['answer']}"
               + (f"  (trapped: step {p['trap']['step'] + 1})" if "trap" in p else ""), fill="black", font=font)
        for c in [c for c in cands if c["problem_id"] == p["id"]][:per_problem]:
            fe = c["first_error"] + 1  # the first wrong step from 1; 0: none
            d.text((210, y + 26), f"{c['id']}  answer {c['answer']}  first wrong step: {fe or 'none'}", "gray", font)
            for i, s in enumerate(c["steps"]):
                d.text((222, y + 41 + 15 * i), f"{i + 1}. {s}", fill=good if not fe or i + 1 < fe else bad, font=font)
            y += 15 * len(c["steps"]) + 15
    sheet.save(out)
    return legend



def caption(cand):
    """The picture's headline: is the final answer right, and where is the oracle's first wrong step."""
    ok, fe = cand.get("correct"), cand.get("first_error")
    ans = {True: "final answer right", False: "final answer wrong"}.get(ok, "final answer not checked")
    if fe is None:
        return f"{ans}; no oracle labels"
    if fe == -1:
        return f"{ans}, every step right" if ok is not False else f"{ans}, though the oracle finds no wrong step"
    return f"{ans}, but step {fe + 1} wrong (lucky)" if ok else f"{ans}: step {fe + 1} is the first wrong step"


def pick_example(cands):
    """--show's default candidate, one that teaches: the first lucky one (a right final answer after a wrong step)
    whose first wrong step is mid-way (neither the first nor the last step), else the first with a mid-way wrong
    step, else the first lucky one, else the first with any wrong step, else the first."""
    def first_error(c):
        return -1 if c.get("first_error") is None else c["first_error"]

    def mid_way(c):
        return 0 < first_error(c) < len(c["steps"]) - 1

    def lucky(c):
        return bool(c.get("correct")) and first_error(c) >= 0

    def lucky_mid_way(c):
        return lucky(c) and mid_way(c)

    def any_wrong(c):
        return first_error(c) >= 0

    for wanted in (lucky_mid_way, mid_way, lucky, any_wrong):
        for c in cands:
            if wanted(c):
                return c
    return cands[0]


def score_colour(s):
    """Red (0) through olive to green (1): the colour of a step score."""
    return int(255 * (1 - s)), int(200 * s), 60


def wrap(text, font, width):
    """Greedy word wrap to `width` pixels of `font`."""
    lines = [""]
    for w in text.split():
        t = f"{lines[-1]} {w}".strip()
        if font.getlength(t) <= width or not lines[-1]:
            lines[-1] = t
        else:
            lines.append(w)
    return lines


def oracle_label(first_error, k):
    """What the oracle says of step k (from 0) given the first wrong step (-1: none; None: no labels)."""
    if first_error is None:
        return "no oracle labels"
    if first_error == -1 or k < first_error:
        return "1 right"
    if k == first_error:
        return "0 first wrong"
    return "0 after the first"


def show(image, question, steps, scores, out, title="", first_error=None, what="PRM score, P(step right)"):
    """A picture of one scored answer: the image, the question, a colour scale, and each step with its score beside
    the oracle's label (first_error: the oracle's first wrong step, -1 none, None: no oracle labels). Returns the
    rows drawn: [{"step", "text", "score", "oracle"}]."""
    (font, small, big), W = (ImageFont.load_default(size=s) for s in (15, 13, 17)), 900
    x_text, lh = 240, 20
    rows = [{"step": k + 1, "text": s, "score": sc, "oracle": oracle_label(first_error, k)}
            for k, (s, sc) in enumerate(zip(steps, scores))]
    wrapped = [wrap(f"{r['step']}. {r['text']}", font, W - x_text - 30) for r in rows]
    head = [(t, i == 0) for i, line in enumerate(title.split("\n"))  # the first line large
            for t in wrap(line, big if i == 0 else small, W - 275)]
    qlines = wrap(question, font, W - 275)
    top = max(260, 10 + 24 * len(head) + lh * len(qlines) + 80)
    img = Image.new("RGB", (W, top + 30 + sum(lh * len(w) + 10 for w in wrapped) + 10), "white")
    d = ImageDraw.Draw(img)
    img.paste(image.resize((240, 240), Image.NEAREST), (10, 10))
    d.rectangle((9, 9, 250, 250), outline=(150, 150, 150))
    y = 10
    for t, first in head:
        d.text((265, y), t, fill="black" if first else "gray", font=big if first else small)
        y += 24
    for q in qlines:
        d.text((265, y), q, fill="black", font=font)
        y += lh
    y += 12  # the colour scale: what a score's colour means
    d.text((265, y), f"{what}: colour scale", fill="gray", font=small)
    for x in range(300):
        d.line((265 + x, y + 20, 265 + x, y + 34), fill=score_colour(x / 299))
    for v in (0, 0.5, 1):
        d.text((265 + 292 * v, y + 36), f"{v:g}", fill="gray", font=small)  # under its place on the bar
    d.text((580, y + 18), "oracle: 1 right, 0 wrong\n(steps after the first\nwrong one count as wrong)",
           fill="gray", font=small)
    y = top
    for x, t in ((10, what.split()[0]), (90, "oracle"), (x_text, "step")):
        d.text((x, y), t, fill="gray", font=small)
    y += 22
    for r, ls in zip(rows, wrapped):
        h, sc = lh * len(ls) + 6, r["score"]
        c = score_colour(sc) if sc is not None else (150, 150, 150)
        d.rectangle((10, y, 80, y + h), fill=tuple(int(v * 0.35 + 255 * 0.65) for v in c), outline=c)
        d.text((18, y + 3), "-" if sc is None else f"{sc:.2f}", fill="black", font=font)
        oc = {"1": GOOD, "0": BAD}.get(r["oracle"][0], GREY)
        d.rectangle((88, y, x_text - 8, y + h), fill=tuple(int(v * 0.25 + 255 * 0.75) for v in oc), outline=oc)
        d.text((94, y + 3), r["oracle"], fill="black", font=small if first_error is None else font)
        for j, line in enumerate(ls):
            d.text((x_text, y + 3 + lh * j), line if j == 0 else "   " + line, fill="black", font=font)
        y += h + 4
    img.save(out)
    return rows


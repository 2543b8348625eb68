"""model.py: the shared loader (offline tiny-init, determinism, save/load parity, special tokens, a learning step),
the step-tag input (encode, answer_targets, token_logprobs against a hand computation), solve, unwrap, the one
max_len default, and settings dataclasses as flags (parse_args on every script's Args)."""
import dataclasses
import importlib
import importlib.util
import inspect
import re
from types import SimpleNamespace

import pytest
import torch

import train
import policy
from common import cli
from common import model as vlm
import orm
import prm
from common import tasks
from common.tiny import tiny_tokenizer


def batch_of(processor, n=4):
    probs = tasks.make_problems(n, seed=0)
    texts = [tasks.format_steps([s for s, _, _ in tasks.gold_steps(p)]) for p in probs]
    batch, keep, skipped = vlm.encode(processor, [tasks.render(p) for p in probs], [p["question"] for p in probs],
                                      texts, max_len=512)
    assert keep == list(range(n)) and skipped == []
    return batch


def test_tiny_init_offline_and_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m1, p1 = vlm.load("tiny-init", device="cpu")
    m2, _ = vlm.load("tiny-init", device="cpu")
    m3, _ = vlm.load("tiny-init", device="cpu", seed=1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    ids = vlm.token_ids(p1)
    assert len({ids["tag"], ids["pos"], ids["neg"], ids["pad"], ids["eos"]}) == 5
    assert p1.tokenizer.convert_ids_to_tokens(ids["tag"]) == vlm.STEP_TAG
    counts = vlm.param_counts(m1)
    assert counts["vision"] > 0 and counts["language"] > 0
    assert vlm.param_counts(vlm.load("tiny-init", device="cpu", size="base")[0])["total"] > 5 * counts["total"]


def test_tokenizer_round_trips_any_text():
    tok = tiny_tokenizer()
    for text in ["There are 3 red shapes.\n3 + 4 = 7.", "非英语 $\\frac{1}{2}$ café", "Step 1: x"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_save_load_identical_logits(tmp_path):
    m, p = vlm.load("tiny-init", device="cpu")
    vlm.save(m, p, tmp_path / "tiny")
    m2, p2 = vlm.load(str(tmp_path / "tiny"), device="cpu")
    assert vlm.token_ids(p2) == vlm.token_ids(p)
    b = batch_of(p)
    with torch.no_grad():
        h1, h2 = vlm.hidden_states(m, b), vlm.hidden_states(m2, b)
    assert torch.equal(h1, h2)


def test_missing_tiny_base_error_says_how(monkeypatch, tmp_path):
    monkeypatch.setitem(vlm.SHIPPED, "tiny", tmp_path / "nothing")
    try:
        vlm.load("tiny", device="cpu")
    except FileNotFoundError as e:
        assert str(tmp_path / "nothing" / "README.md") in str(e)  # the card holds the command that makes it
    else:
        raise AssertionError("expected FileNotFoundError")


def test_forward_backward_lowers_the_loss():
    import train
    m, p = vlm.load("tiny-init", device="cpu")
    m.train()
    b = batch_of(p, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = train.loss_on(m, b, vlm.token_ids(p), "sft")
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_label_tokens_are_added_to_a_checkpoint_that_lacks_the_tag(tmp_path):
    m, p = vlm.load("tiny-init", device="cpu")
    n = m.get_input_embeddings().weight.shape[0]
    tok = tiny_tokenizer()  # rebuild a tokenizer without the step tag: a "real" checkpoint's situation
    from tokenizers import Tokenizer
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    assert vlm.STEP_TAG in raw.get_vocab()
    vocab = p.tokenizer.get_vocab()
    assert vocab[vlm.STEP_TAG] < n
    # a processor whose tokenizer lacks the tag gets it added and the embeddings resized
    from transformers import PreTrainedTokenizerFast
    from tokenizers import models, pre_tokenizers, decoders
    from tokenizers.pre_tokenizers import ByteLevel
    t = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[]))
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), decoders.ByteLevel()
    p.tokenizer = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    before = len(p.tokenizer)
    vlm.add_special_tokens(m, p)
    assert len(p.tokenizer) == before + 1
    assert m.get_input_embeddings().weight.shape[0] >= len(p.tokenizer)


def card_numbers(card):
    """The card's held-out table -> {"step_KIND": x, "answer_FAMILY": x}: the left pair of columns is a step kind
    ("count (perception, visual)" -> step_count), the right pair a family ("visual family" -> answer_visual)."""
    table = card.split("## Held-out greedy accuracy")[1]
    out = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"[\d.]+", cells[1]):
            continue
        out[f"step_{cells[0].split()[0]}"] = float(cells[1])
        if cells[3]:
            out[f"answer_{cells[2].split()[0]}"] = float(cells[3])
    return out


def test_shipped_tiny_base_matches_its_card():
    """model.load("tiny") returns the shipped base offline, and its held-out greedy accuracy is the card's (every
    number of its table, read from the card, so the test stays true when the card is regenerated): a broken loader,
    tokenizer or processor cannot pass."""
    import train
    want = card_numbers((vlm.TINY_BASE / "README.md").read_text())
    assert set(want) == {"step_count", "step_arith", "step_text_arith", "step_answer", "answer_visual",
                         "answer_text", "answer_all"}
    res = train.main(train.Args(objective="sft", model="tiny", eval_only=True, eval_n=96, device="cpu"))
    assert {k: res[k] for k in want} == pytest.approx(want, abs=0.03)


@pytest.fixture(scope="module")
def tiny():
    return vlm.load("tiny-init", device="cpu")


def test_too_long_cuts_the_question_not_the_steps(tiny):
    m, p = tiny
    pr = tasks.make_problem("z", 0)
    steps = [s for s, _, _ in tasks.gold_steps(pr)]
    long_q = pr["question"] + " filler" * 200
    batch, keep, skipped = prm.encode_steps(p, [tasks.render(pr)] * 2, [long_q, pr["question"]], [steps, steps],
                                    max_len=120)
    assert keep == [0, 1] and skipped == [] and batch["input_ids"].shape[1] <= 120
    assert int((batch["input_ids"][0] == vlm.token_ids(p)["tag"]).sum()) == len(steps)
    ends = batch["attention_mask"].sum(1).tolist()  # the answers (the last 20 tokens) are whole in both rows
    assert torch.equal(batch["input_ids"][0, ends[0] - 20:ends[0]], batch["input_ids"][1, ends[1] - 20:ends[1]])
    _, keep, skipped = prm.encode_steps(p, [tasks.render(pr)], [pr["question"]], [steps * 20], max_len=120)
    assert keep == [] and len(skipped) == 1 and "max_len" in skipped[0][1]


def test_answer_targets_on_a_literal_batch():
    ids = {"tag": 9}
    batch = {"input_ids": torch.tensor([[5, 6, 9, 7, 0], [5, 5, 6, 9, 8]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]), "prompt_lens": torch.tensor([1, 2])}
    # position j is True when token j+1 is an answer token: after the prompt, not a tag, not padding
    assert vlm.answer_targets(batch, ids, "cpu").tolist() == [[True, False, True, False], [False, True, False, True]]


def test_token_logprobs_are_the_answer_tokens_log_probs(tiny):
    m, p = tiny
    probs = tasks.make_problems(2, seed=2)
    steps = [[s for s, _, _ in tasks.gold_steps(x)] for x in probs]
    batch, _, _ = prm.encode_steps(p, [tasks.render(x) for x in probs], [x["question"] for x in probs], steps)
    ids = vlm.token_ids(p)
    with torch.no_grad():
        got = vlm.token_logprobs(m, batch, ids)
        full = torch.log_softmax(m(**{k: batch[k] for k in vlm.MODEL_KEYS if k in batch}).logits.float(), -1)
    x, att = batch["input_ids"], batch["attention_mask"]
    want = torch.zeros(x.shape)
    for r in range(2):  # by hand: log p(token j | tokens < j) at every answer token that is not a tag
        for j in range(int(batch["prompt_lens"][r]), x.shape[1]):
            if att[r, j] and x[r, j] != ids["tag"]:
                want[r, j] = full[r, j - 1, x[r, j]]
    assert int((want != 0).sum()) > 40 and torch.allclose(got, want, atol=1e-5)


def test_unwrap_returns_the_model_inside_a_wrapper(tiny):
    m, _ = tiny
    assert vlm.unwrap(m) is m and vlm.unwrap(SimpleNamespace(module=m)) is m


def test_solve_generates_cuts_into_steps_and_reads_the_answer(monkeypatch):
    calls = []

    def fake_generate(model, processor, images, prompts, prefixes=None, max_new_tokens=96, temperature=0.0, seed=0):
        calls.append(dict(prompts=prompts, prefixes=prefixes, max_new_tokens=max_new_tokens, temperature=temperature,
                          seed=seed))
        return replies[:len(prompts)]
    monkeypatch.setattr(policy, "generate", fake_generate)
    replies = ["There are 3 red shapes.\nThere are 4 blue shapes.\n3 + 4 = 7.\nThe answer is 7.", "x = 2.5", ""]
    out = policy.solve(None, None, ["i1", "i2", "i3"], ["q1", "q2", "q3"], max_new_tokens=5, temperature=0.5, seed=3)
    assert calls[-1] == dict(prompts=["q1", "q2", "q3"], prefixes=None, max_new_tokens=5, temperature=0.5, seed=3)
    assert out == [{"text": replies[0], "steps": ["There are 3 red shapes.", "There are 4 blue shapes.", "3 + 4 = 7.",
                                                  "The answer is 7."], "answer": "7"},
                   {"text": "x = 2.5", "steps": ["x = 2.5"], "answer": "2.5"},
                   {"text": "", "steps": [], "answer": None}]
    # with a prefix: the model continues "Step k+1: " after the given steps, which are kept verbatim
    replies = ["3 + 4 = 8.\nStep 4: The answer is 8.", "There are 2 red shapes."]
    prefix = [["There are 3 red shapes.", "There are 4."], []]
    out = policy.solve(None, None, ["i1", "i2"], ["q1", "q2"], prefix_steps=prefix)
    assert calls[-1]["prefixes"] == ["Step 1: There are 3 red shapes.\nStep 2: There are 4.\nStep 3: ", "Step 1: "]
    assert out == [{"text": replies[0], "steps": ["There are 3 red shapes.", "There are 4.", "3 + 4 = 8.",
                                                  "The answer is 8."], "answer": "8"},
                   {"text": replies[1], "steps": ["There are 2 red shapes."], "answer": "2"}]


def test_one_max_len_default():
    import bon
    import train
    assert vlm.MAX_LEN == 1024
    for fn in (vlm.encode, prm.score_steps, prm.score_prefixes, orm.score_answers):
        assert inspect.signature(fn).parameters["max_len"].default == vlm.MAX_LEN, fn.__qualname__
    for mod in (prm, orm, bon, train):
        assert mod.Args().max_len == vlm.MAX_LEN, mod.__name__


def test_parse_args_reads_typed_flags():
    import bon
    import train
    a = cli.parse_args(train.Args, ["--max-steps", "7", "--lr", "0.5", "--head", "tag", "--grad-ckpt", "--no-resume"])
    assert a == train.Args(max_steps=7, lr=0.5, head="tag", grad_ckpt=True, resume=False)
    assert type(a.max_steps) is int and type(a.lr) is float
    assert cli.parse_args(bon.Args, ["--scores", "a.jsonl", "b.jsonl"]).scores == ["a.jsonl", "b.jsonl"]
    with pytest.raises(SystemExit):
        cli.parse_args(train.Args, ["--max-steps", "seven"])


@pytest.mark.parametrize("name", ["prm", "orm", "judge", "train", "bon", "bench", "lab.speed", "tree_search",
                                  "omegaprm"])
def test_every_setting_is_a_typed_flag_with_its_help(name, capsys, monkeypatch):
    """A script's --help lists every field of its Args with the field's doc; no flags means the defaults."""
    mod = importlib.import_module(name)
    fields = dataclasses.fields(mod.Args)
    assert cli.parse_args(mod.Args, []) == mod.Args()
    for f in fields:  # a field parses to its own type (a float field with an int default would not)
        assert f.default is None or f.type in (list, "list") or type(f.default) is f.type, (name, f.name)
        assert f.metadata.get("help"), (name, f.name)
    monkeypatch.setenv("COLUMNS", "100000")  # argparse wraps at the terminal width
    with pytest.raises(SystemExit) as e:
        cli.parse_args(mod.Args, ["--help"], doc=mod.__doc__)
    assert e.value.code == 0
    blocks = []  # one per option: its line and the help lines under it
    for ln in capsys.readouterr().out.split("options:")[1].splitlines():
        if ln.startswith("  -"):
            blocks.append(ln.strip())
        elif blocks and ln.strip():
            blocks[-1] += " " + ln.strip()
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        block = next((b for b in blocks if b.split()[0].rstrip(",") == flag), None)
        assert block is not None, (name, flag)
        assert f.metadata["help"].replace("%%", "%") in block, (name, flag, block)


def test_a_missing_local_path_fails_at_once_naming_it(tmp_path, monkeypatch):
    """No hub retries for a folder that is not there: "out/orm" with out/ here, "./x", "/x", a bare word."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "empty").mkdir()
    for name in ("out/orm", "./orm", str(tmp_path / "orm"), "orm", "~/surely-not-a-model-here"):
        with pytest.raises(FileNotFoundError, match="no model folder"):
            vlm.load(name, device="cpu")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        vlm.resolve("out/empty")
    assert vlm.resolve("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # only a hub id goes to the hub
    assert vlm.resolve("tiny-init") == "tiny-init" and vlm.resolve("tiny") == str(vlm.TINY_BASE)
    vlm.save(*vlm.load("tiny-init", device="cpu"), tmp_path / "out" / "m")
    assert vlm.resolve("out/m") == str(tmp_path / "out" / "m")  # absolute: a checkpoint naming it loads anywhere


def test_a_saved_checkpoint_loads_with_auto_processor_or_fails_loudly(tmp_path):
    """AutoProcessor on a saved folder gives a processor that reads the image (the same pixels as ours), or, without
    torchvision (which Qwen2.5-VL's video part needs), an error: never a bare tokenizer that drops the image."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    m, p = vlm.load("tiny-init", device="cpu")
    vlm.save(m, p, tmp_path / "ck")
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / "ck")).__name__ == type(m).__name__
    pr = tasks.make_problem("x", 0, kind="count_add")
    args = dict(text=[vlm.chat_prompt(p, pr["question"])], images=[tasks.render(pr)], return_tensors="pt")
    for folder in (tmp_path / "ck", vlm.TINY_BASE):  # a saved one and the shipped base
        if importlib.util.find_spec("torchvision") is None:
            with pytest.raises(ImportError, match="[Tt]orchvision"):
                AutoProcessor.from_pretrained(folder)
        else:
            got = AutoProcessor.from_pretrained(folder)(**args)
            assert torch.allclose(got["pixel_values"], p(**args)["pixel_values"], atol=1e-5)
            assert torch.equal(got["input_ids"], p(**args)["input_ids"])
        assert torch.equal(vlm.load_processor(folder)(**args)["pixel_values"], p(**args)["pixel_values"])

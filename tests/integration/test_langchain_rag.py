"""LangChain integration on SmolLM2: a real LCEL chain over a real chromadb store, token-level layout, async,
stop strings, usage, and the layout check.

One SmolLM2 (the ``smollm2`` session fixture) is wrapped twice: without tokens, and with 50 untrained virtual
tokens in the chat layout (initialised from the paper's instruction sentence). The dense store holds the gold
paragraphs of three bundled questions plus 30 other paragraphs of the bundled sample corpus. Answers are capped
at 16 tokens so that the module stays fast on a 2-core CPU.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableSequence

from langchain_spring import (
    ChatSpring,
    SpringLLM,
    SpringRetriever,
    create_spring_rag_chain,
    format_docs,
    spring_rag_chat_prompt,
    spring_rag_prompt,
)
from langchain_spring.chat_models import message_turns, render_messages
from spring_core import SpringModel, VirtualTokens
from spring_core.data import demo_qa_path, read_corpus, read_qa, sample_corpus_path
from spring_core.prompts import format_passages
from spring_core.retrieval import create_store

pytestmark = pytest.mark.integration

MAX_NEW = 16
QUESTION_IDS = ("57283c464b864d19001647c9", "5727efabff5b5019007d98e2", "5727c94bff5b5019007d954a")
# The hub's rlm/rag-prompt: the question comes before the context and there is no marker block.
HUB_RAG_PROMPT = ChatPromptTemplate.from_messages([(
    "human",
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to answer "
    "the question. If you don't know the answer, just say that you don't know. Use three sentences maximum and "
    "keep the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:",
)])


@pytest.fixture(scope="module")
def qa():
    rows = {row["id"]: row for row in read_qa(demo_qa_path())}
    return [rows[qid] for qid in QUESTION_IDS]


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory, qa):
    gold = {p["text"] for row in qa for p in row["passages"]}
    corpus = read_corpus(sample_corpus_path())
    rows = [r for r in corpus if r["text"] in gold] + [r for r in corpus if r["text"] not in gold][:30]
    folder = tmp_path_factory.mktemp("lc-rag-store")
    create_store(folder, "dense").add(rows)
    return folder


@pytest.fixture(scope="module")
def plain(smollm2):
    return SpringModel(*smollm2)


@pytest.fixture(scope="module")
def spring(smollm2):
    model, tokenizer = smollm2
    return SpringModel(model, tokenizer, VirtualTokens.from_text(model, n=50, tokenizer=tokenizer, layout="chat"))


def rag_messages(row, k: int = 10):
    passages = [p if isinstance(p, str) else {"title": p["title"], "text": p["text"][:400]} for p in row["passages"]]
    return spring_rag_chat_prompt(k).format_messages(context=format_passages(passages), question=row["question"])


def test_lcel_chain_over_chromadb_answers_with_and_without_tokens(store_folder, plain, spring, qa):
    retriever = SpringRetriever(store=str(store_folder), k=2)
    with_tokens = create_spring_rag_chain(retriever, ChatSpring(spring_model=spring, max_tokens=MAX_NEW), k=10)
    without = create_spring_rag_chain(retriever, ChatSpring(spring_model=plain, max_tokens=MAX_NEW))
    hits = 0
    for row in qa:
        titles = [d.metadata["title"] for d in retriever.invoke(row["question"])]
        assert row["passages"][0]["title"] in titles
        answer = without.invoke(row["question"])
        assert isinstance(answer, str) and answer.strip()
        hits += any(gold.lower() in answer.lower() for gold in row["answers"])
        assert with_tokens.invoke(row["question"]).strip()
    assert hits >= 1, "the plain model never found the answer in the retrieved passages"

    message = RunnableSequence(*with_tokens.steps[:3]).invoke(qa[0]["question"])  # retrieval, prompt, chat model
    assert message.usage_metadata["input_token_details"] == {"virtual": 10}
    message = RunnableSequence(*without.steps[:3]).invoke(qa[0]["question"])
    assert message.usage_metadata["input_token_details"] == {"virtual": 0}


def test_virtual_block_sits_between_context_and_question_in_token_ids(store_folder, spring, qa):
    retriever = SpringRetriever(store=store_folder, k=2)
    chain = create_spring_rag_chain(retriever, ChatSpring(spring_model=spring, max_tokens=MAX_NEW), k=10)
    question = qa[0]["question"]
    messages = RunnableSequence(*chain.steps[:2]).invoke(question).to_messages()
    prompt = render_messages(message_turns(messages), spring.tokenizer)
    ids = spring.encode(spring.parse(prompt))

    virtual = [i for i, token in enumerate(ids) if token >= spring.vocab_rows]
    assert virtual == list(range(virtual[0], virtual[0] + 10))
    assert [ids[i] - spring.vocab_rows for i in virtual] == list(range(10))
    before = spring.tokenizer.decode(ids[: virtual[0]])
    after = spring.tokenizer.decode(ids[virtual[-1] + 1:])
    context = format_docs(retriever.invoke(question))
    assert before.endswith(context + "\n\n")
    assert before.index("<|im_start|>user\n") < before.index("[1] ")
    assert after.startswith(f"Question: {question}<|im_end|>")
    assert after.endswith("<|im_start|>assistant\n")


def test_concurrent_abatch_gives_the_sequential_answers(spring, qa):
    chat = ChatSpring(spring_model=spring, max_tokens=12)
    inputs = [rag_messages(row) for row in qa]
    sequential = [chat.invoke(messages).content for messages in inputs]
    concurrent = asyncio.run(chat.abatch(inputs))
    assert [m.content for m in concurrent] == sequential

    llm = SpringLLM(spring_model=spring, max_tokens=12)
    prompts = [spring_rag_prompt(10).format(context=format_passages(row["passages"]), question=row["question"])
               for row in qa]
    assert asyncio.run(llm.abatch(prompts)) == [llm.invoke(p) for p in prompts]


def test_stop_strings_from_constructor_and_call_are_merged(spring, qa):
    messages = rag_messages(qa[0])
    full = ChatSpring(spring_model=spring, max_tokens=MAX_NEW).invoke(messages).content
    words = full.split()
    assert len(words) >= 4, full
    late, early = f" {words[3]}", f" {words[1]}"
    chat = ChatSpring(spring_model=spring, max_tokens=MAX_NEW, stop=[late])
    assert chat.invoke(messages).content == full[: full.index(late)]
    assert chat.invoke(messages, stop=[early]).content == full[: full.index(early)]
    streamed = "".join(chunk.content for chunk in chat.stream(messages, stop=[early]))
    assert streamed == full[: full.index(early)]


def test_usage_metadata_equals_the_spring_models_usage(spring, qa):
    messages = rag_messages(qa[1], k=20)
    out = ChatSpring(spring_model=spring, max_tokens=MAX_NEW).invoke(messages)
    usage = spring.generate_from_prompt(render_messages(message_turns(messages), spring.tokenizer),
                                        max_new_tokens=MAX_NEW).usage
    assert usage.virtual_tokens == 20 and usage.prompt_tokens > 50
    assert out.usage_metadata == {
        "input_tokens": usage.prompt_tokens + 20,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "input_token_details": {"virtual": 20},
    }


def test_astream_yields_many_chunks_that_join_to_the_invoke_answer(spring, qa):
    chat = ChatSpring(spring_model=spring, max_tokens=MAX_NEW)
    messages = rag_messages(qa[2])
    answer = chat.invoke(messages)

    async def collect():
        return [chunk async for chunk in chat.astream(messages)]

    chunks = asyncio.run(collect())
    assert len(chunks) > 3
    assert "".join(c.content for c in chunks) == answer.content
    assert chunks[-1].usage_metadata == answer.usage_metadata
    assert chunks[-1].response_metadata == answer.response_metadata


def test_async_calls_do_not_block_the_event_loop(spring, qa):
    chat = ChatSpring(spring_model=spring, max_tokens=MAX_NEW)
    messages = rag_messages(qa[0])

    async def max_gap(work) -> tuple[float, float]:
        """The longest pause of a 10 ms ticker while ``work`` runs, and how long the work took."""
        beats = [time.perf_counter()]
        done = asyncio.Event()

        async def ticker():
            while not done.is_set():
                await asyncio.sleep(0.01)
                beats.append(time.perf_counter())

        task = asyncio.create_task(ticker())
        start = time.perf_counter()
        await work()
        elapsed = time.perf_counter() - start
        done.set()
        await task
        return max(b - a for a, b in zip(beats, beats[1:], strict=False)), elapsed

    async def consume_stream():
        async for _ in chat.astream(messages):
            pass

    async def scenario():
        return await max_gap(lambda: chat.ainvoke(messages)), await max_gap(consume_stream)

    for gap, elapsed in asyncio.run(scenario()):
        assert elapsed > 0.3
        assert gap < elapsed / 3, f"the event loop stalled for {gap:.2f} s of a {elapsed:.2f} s call"


def test_question_before_context_prompt_gets_the_block_after_the_context_and_warns(store_folder, spring, qa):
    retriever = SpringRetriever(store=store_folder, k=2)
    chain = {"context": retriever | format_docs, "question": lambda q: q} | HUB_RAG_PROMPT | ChatSpring(
        spring_model=spring, max_tokens=4, k=10)
    with pytest.warns(UserWarning, match="question before the context"):
        message = chain.invoke(qa[0]["question"])
    assert message.usage_metadata["input_token_details"] == {"virtual": 10}


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
import warnings

import pytest
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough, RunnableSequence

from langchain_spring import (
    SPRING_RAG_CHAT_PROMPT,
    SPRING_RAG_PROMPT,
    ChatSpring,
    SpringLLM,
    SpringRetriever,
    create_spring_rag_chain,
    format_docs,
)
from spring_core import SpringModel, VirtualTokens
from spring_core.data import demo_qa_path, read_corpus, read_qa, sample_corpus_path
from spring_core.prompts.layouts import build_prompt, format_passages
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


def rag_messages(row):
    """SPRING's chat prompt for a row's own passages, rendered: no retriever ran, so no block (the base model)."""
    passages = [p if isinstance(p, str) else {"title": p["title"], "text": p["text"][:400]} for p in row["passages"]]
    return SPRING_RAG_CHAT_PROMPT.format_messages(context=format_passages(passages), question=row["question"])


def rag_chain(store_folder, model, prompt=SPRING_RAG_CHAT_PROMPT):
    """The usual LCEL RAG chain over the chromadb store, ending in the model's message."""
    retriever = SpringRetriever(store=str(store_folder), k=2)
    return {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | model


def retrieved_passages(store_folder, question):
    docs = SpringRetriever(store=str(store_folder), k=2).invoke(question)
    return [{"title": d.metadata.get("title", ""), "text": d.page_content} for d in docs]


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

    message = RunnableSequence(*with_tokens.steps[:2]).invoke(qa[0]["question"])  # retrieval, chat model
    assert message.usage_metadata["input_token_details"] == {"virtual": 10}
    message = RunnableSequence(*without.steps[:2]).invoke(qa[0]["question"])
    assert message.usage_metadata["input_token_details"] == {"virtual": 0}


def test_a_users_lcel_chain_reads_exactly_springs_chat_layout(store_folder, spring, qa):
    question = qa[0]["question"]
    chat = ChatSpring(spring_model=spring, max_tokens=MAX_NEW, k=10)
    message = rag_chain(store_folder, chat).invoke(question)
    expected = build_prompt(question, retrieved_passages(store_folder, question), 10, layout="chat",
                            tokenizer=spring.tokenizer)
    assert expected.before.endswith("\n\n") and expected.after.startswith(f"Question: {question}<|im_end|>")
    reference = spring.generate_from_prompt(expected, max_new_tokens=MAX_NEW)
    assert message.content == reference.text
    assert message.usage_metadata["input_token_details"] == {"virtual": 10}


def test_concurrent_abatch_gives_the_sequential_answers(store_folder, spring, qa):
    questions = [row["question"] for row in qa]
    chain = rag_chain(store_folder, ChatSpring(spring_model=spring, max_tokens=12, k=10))
    sequential = [chain.invoke(q).content for q in questions]
    assert [m.content for m in asyncio.run(chain.abatch(questions))] == sequential

    completion = rag_chain(store_folder, SpringLLM(spring_model=spring, max_tokens=12, k=10), SPRING_RAG_PROMPT)
    assert asyncio.run(completion.abatch(questions)) == [completion.invoke(q) for q in questions]


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


def test_usage_metadata_equals_the_spring_models_usage(store_folder, spring, qa):
    question = qa[1]["question"]
    out = rag_chain(store_folder, ChatSpring(spring_model=spring, max_tokens=MAX_NEW, k=20)).invoke(question)
    expected = build_prompt(question, retrieved_passages(store_folder, question), 20, layout="chat",
                            tokenizer=spring.tokenizer)
    usage = spring.generate_from_prompt(expected, max_new_tokens=MAX_NEW).usage
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


def test_question_before_context_prompt_gets_the_block_after_the_context_without_a_warning(store_folder, spring, qa):
    retriever = SpringRetriever(store=store_folder, k=2)
    chain = {"context": retriever | format_docs, "question": lambda q: q} | HUB_RAG_PROMPT | ChatSpring(
        spring_model=spring, max_tokens=4, k=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rlm/rag-prompt asks first: it works, so it is only logged
        message = chain.invoke(qa[0]["question"])
    assert message.usage_metadata["input_token_details"] == {"virtual": 10}


"""``SpringRetriever`` over a real BM25 store, ``ParametricAdapterCompressor``, and ``create_spring_rag_chain``."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableSequence
from pydantic import ValidationError

from langchain_spring import (
    ChatSpring,
    ParametricAdapterCompressor,
    SpringLLM,
    SpringRetriever,
    create_spring_rag_chain,
)
from langchain_spring._base import document_passage
from spring_core import SpringModel, VirtualTokens
from spring_core.data import read_corpus, sample_corpus_path
from spring_core.retrieval import create_store, open_store

QUESTION = "What individual is the school named after?"


@pytest.fixture(scope="module")
def store_folder(tmp_path_factory):
    rows = read_corpus(sample_corpus_path())[:30]
    folder = tmp_path_factory.mktemp("bm25-store")
    create_store(folder, "bm25").add(rows)
    return folder


def test_documents_carry_text_id_title_and_score(store_folder):
    hits = open_store(store_folder).retrieve(QUESTION, top_k=3)
    docs = SpringRetriever(store=str(store_folder), k=3).invoke(QUESTION)
    assert [d.page_content for d in docs] == [h.text for h in hits]
    for doc, hit in zip(docs, hits, strict=True):
        assert doc.id == hit.id
        assert {key: doc.metadata[key] for key in ("id", "title", "score")} == {
            "id": hit.id, "title": hit.title, "score": hit.score}
    assert docs[0].metadata["score"] >= docs[-1].metadata["score"]


def test_store_object_and_per_call_k(store_folder):
    retriever = SpringRetriever(store=open_store(store_folder), k=4)
    assert len(retriever.invoke(QUESTION)) == 4
    assert len(retriever.invoke(QUESTION, k=1)) == 1
    by_path = SpringRetriever(store=store_folder, k=4).invoke(QUESTION)
    assert [d.id for d in by_path] == [d.id for d in retriever.invoke(QUESTION)]


def test_bad_store_and_k_are_refused(store_folder):
    with pytest.raises(ValidationError, match="store must be"):
        SpringRetriever(store=42)
    with pytest.raises(ValidationError):
        SpringRetriever(store=store_folder, k=0)


def test_compressor_tags_adapter_ids_without_dropping_or_mutating():
    docs = [Document(page_content="a", metadata={"id": "p1", "title": "A"}),
            Document(page_content="b", id="p2"),
            Document(page_content="c")]
    tagged = ParametricAdapterCompressor().compress_documents(docs, QUESTION)
    assert [d.page_content for d in tagged] == ["a", "b", "c"]
    assert [d.metadata["adapter_id"] for d in tagged] == ["p1", "p2", None]
    assert "adapter_id" not in docs[0].metadata
    custom = ParametricAdapterCompressor(metadata_key="prag", id_key="title").compress_documents(docs[:1], QUESTION)
    assert custom[0].metadata == {"id": "p1", "title": "A", "prag": "A"}


def test_spring_chain_answers_from_the_documents_in_springs_layout(store_folder, tiny):
    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))
    retriever = SpringRetriever(store=store_folder, k=2)
    passages = [document_passage(d) for d in retriever.invoke(QUESTION)]

    chat_chain = create_spring_rag_chain(retriever, ChatSpring(spring_model=sm, max_tokens=4))
    message = RunnableSequence(*chat_chain.steps[:2]).invoke(QUESTION)
    assert message.usage_metadata["input_token_details"] == {"virtual": 8}
    assert chat_chain.invoke(QUESTION) == sm.generate(QUESTION, passages, 8, max_new_tokens=4).text

    llm_chain = create_spring_rag_chain(retriever, SpringLLM(spring_model=sm, max_tokens=4), k=3)
    assert llm_chain.invoke(QUESTION) == sm.generate(QUESTION, passages, 3, max_new_tokens=4).text

    bound = create_spring_rag_chain(retriever, ChatSpring(spring_model=sm, k=2).bind(max_tokens=4))
    assert RunnableSequence(*bound.steps[:2]).invoke(QUESTION).usage_metadata["input_token_details"] == {
        "virtual": 2}


@pytest.mark.parametrize("text", ["[r1][r2]", "[r1]" * 60 + "Question:", "[r" + "9" * 300 + "]",
                                  "\x00SPRING-BLOCK\x00"])
def test_marker_text_in_the_question_is_plain_text_through_the_chain(store_folder, tiny, text):
    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))
    retriever = SpringRetriever(store=store_folder, k=2)
    chain = create_spring_rag_chain(retriever, ChatSpring(spring_model=sm, max_tokens=4), k=3)
    question = f"What does {text} stand for?"
    message = RunnableSequence(*chain.steps[:2]).invoke(question)
    assert message.usage_metadata["input_token_details"] == {"virtual": 3}
    passages = [document_passage(d) for d in retriever.invoke(question)]
    assert message.content == sm.generate(question, passages, 3, max_new_tokens=4).text


# ----- decoding modes: documents read one by one -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["rag-token", "rag-sequence", "rag-sequence-fast"])
def test_chain_with_a_marginal_mode_hands_each_document_and_its_score_to_the_model(mode, store_folder, tiny):
    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))
    retriever = SpringRetriever(store=store_folder, k=3)
    documents = retriever.invoke(QUESTION)
    passages = [{"title": d.metadata["title"], "text": d.page_content} for d in documents]
    expected = sm.generate(QUESTION, passages, 2, decoding=mode, scores=[d.metadata["score"] for d in documents],
                           max_new_tokens=4).text
    chat_chain = create_spring_rag_chain(retriever, ChatSpring(spring_model=sm, max_tokens=4, decoding=mode), k=2)
    assert chat_chain.invoke(QUESTION) == expected
    llm_chain = create_spring_rag_chain(retriever, SpringLLM(spring_model=sm, decoding=mode).bind(max_tokens=4), k=2)
    assert llm_chain.invoke(QUESTION) == expected


def test_documents_per_call_for_every_mode_sync_async_and_streamed(store_folder, tiny):
    import asyncio

    sm = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=1))
    documents = SpringRetriever(store=store_folder, k=2).invoke(QUESTION)
    passages = [{"title": d.metadata["title"], "text": d.page_content} for d in documents]
    scores = [d.metadata["score"] for d in documents]
    chat = ChatSpring(spring_model=sm, max_tokens=5, k=3)
    for mode in ("stuff", "rag-token", "rag-sequence"):
        expected = sm.generate(QUESTION, passages, 3, decoding=mode, scores=scores, max_new_tokens=5)
        answer = chat.invoke(QUESTION, documents=documents, decoding=mode)
        assert answer.content == expected.text
        assert answer.usage_metadata["input_token_details"]["virtual"] == expected.usage.virtual_tokens
        assert "".join(c.content for c in chat.stream(QUESTION, documents=documents, decoding=mode)) == expected.text
        assert asyncio.run(chat.ainvoke(QUESTION, documents=documents, decoding=mode)).content == expected.text


def test_documents_need_a_bare_question_a_known_mode_and_consistent_scores(store_folder, tiny):
    from langchain_core.messages import SystemMessage

    from spring_core.errors import DecodingError, OptionError

    sm = SpringModel(*tiny)
    chat = ChatSpring(spring_model=sm, max_tokens=3)
    documents = [Document("Harvard is named after John Harvard.", metadata={"score": 2.0}),
                 Document("Doctor Who is a programme.")]
    with pytest.raises(ValueError, match="pass the question alone"):
        chat.invoke([SystemMessage("Be brief."), HumanMessage(QUESTION)], documents=documents)
    with pytest.raises(DecodingError, match="passage 1 has no retriever score"):
        chat.invoke(QUESTION, documents=documents, decoding="rag-token")
    with pytest.raises(OptionError, match="decoding must be one of .*; got 'beam'"):
        chat.invoke(QUESTION, documents=documents[:1], decoding="beam")
    with pytest.raises(OptionError, match="decoding must be one of"):
        ChatSpring(spring_model=sm, decoding="beam")
    reranked = [Document("A.", metadata={"relevance_score": 0.9}), Document("B.", metadata={"relevance_score": 0.1})]
    expected = sm.generate(QUESTION, ["A.", "B."], decoding="rag-token", scores=[0.9, 0.1], max_new_tokens=3).text
    assert chat.invoke(QUESTION, documents=reranked, decoding="rag-token").content == expected

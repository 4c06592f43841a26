"""Parametric RAG inside both integrations: adapters active for one call only, across threads and asyncio tasks."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_core.documents import Document

from spring_core import OptionError
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec, UnknownDocumentError

QUESTION = "Who is Harvard named after?"
PASSAGE = "Harvard is named after John Harvard."
DOCS = [f"doc-{i}" for i in range(8)]


@pytest.fixture(scope="module")
def store_folder(hooked_sm, tmp_path_factory):
    spec = LoraSpec.for_model(hooked_sm.model, rank=2, alpha=32)
    folder = tmp_path_factory.mktemp("adapters")
    store = AdapterStore.create(folder, hooked_sm.model, spec, base_model_name="tiny")
    adapters = {}
    for i, doc in enumerate(DOCS):
        generator = torch.Generator().manual_seed(100 + i)
        adapters[doc] = {f"{name}.lora_{part}": torch.randn(*shape, generator=generator) * 0.2
                         for name, (out_f, in_f) in spec.modules.items()
                         for part, shape in (("A", (2, in_f)), ("B", (out_f, 2)))}
    store.add(adapters)
    return folder


@pytest.fixture(scope="module")
def adapters(hooked_sm, store_folder):
    return DocumentAdapters(AdapterStore.open(store_folder, model=hooked_sm.model), hooked_sm.model)


def expected_answers(hooked_sm, adapters, max_new_tokens: int = 6) -> dict[str, str]:
    answers = {}
    for doc in DOCS:
        with adapters.activate([doc]):
            answers[doc] = hooked_sm.generate(QUESTION, [], 0, max_new_tokens=max_new_tokens).text
    assert len(set(answers.values())) > 1, "the random adapters should change the answers"
    return answers


def test_chat_spring_prag_matches_sequential_answers_from_8_threads_and_8_tasks(hooked_sm, adapters):
    from langchain_spring import ChatSpring

    chat = ChatSpring(spring_model=hooked_sm, adapters=adapters, knowledge="prag", max_tokens=6)
    expected = expected_answers(hooked_sm, adapters)

    def ask(doc: str) -> str:
        return chat.invoke(QUESTION, documents=[Document(PASSAGE, metadata={"adapter_id": doc})]).content

    assert {doc: ask(doc) for doc in DOCS} == expected
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert dict(zip(DOCS, pool.map(ask, DOCS), strict=True)) == expected

    async def all_tasks() -> list[str]:
        replies = await asyncio.gather(*(chat.ainvoke(QUESTION, documents=[Document(PASSAGE, metadata={
            "adapter_id": doc})]) for doc in DOCS))
        return [reply.content for reply in replies]

    assert dict(zip(DOCS, asyncio.run(all_tasks()), strict=True)) == expected
    streamed = "".join(c.content for c in chat.stream(QUESTION, documents=[Document(PASSAGE, metadata={
        "adapter_id": "doc-3"})]))
    assert streamed == expected["doc-3"]
    assert chat.invoke(QUESTION).content == hooked_sm.generate_from_prompt(
        hooked_sm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True), max_new_tokens=6).text  # no adapter left on


def test_langchain_chain_with_the_compressor_activates_the_retrieved_documents(hooked_sm, store_folder):
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda

    from langchain_spring import ParametricAdapterCompressor, SpringLLM, create_spring_rag_chain

    class TwoDocs(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager=None):
            return [Document(PASSAGE, metadata={"id": "doc-1", "score": 2.0}),
                    Document("Yale is in New Haven.", metadata={"id": "doc-5", "score": 1.0})]

    compressor = ParametricAdapterCompressor()
    retriever = TwoDocs() | RunnableLambda(lambda docs: compressor.compress_documents(docs, QUESTION))
    llm = SpringLLM(spring_model=hooked_sm, adapters=str(store_folder), knowledge="combine", max_tokens=5)
    chain = create_spring_rag_chain(retriever, llm)
    with llm.parametric_adapters.activate(["doc-1", "doc-5"]):
        expected = hooked_sm.generate(QUESTION, [PASSAGE, "Yale is in New Haven."], 0, max_new_tokens=5).text
    assert chain.invoke(QUESTION) == expected
    with pytest.raises(UnknownDocumentError, match="no adapter for document"):
        llm.invoke(QUESTION, documents=[Document(PASSAGE, metadata={"adapter_id": "unknown"})])


def test_llama_index_llm_answers_with_adapters_per_call_in_threads_and_tasks(hooked_sm, adapters, store_folder,
                                                                               tmp_path):
    from llama_index.llms.spring import SpringLLM

    llm = SpringLLM(spring_model=hooked_sm, adapters=adapters, knowledge="prag", max_new_tokens=6)
    expected = expected_answers(hooked_sm, adapters)

    def ask(doc: str) -> str:
        return llm.answer(QUESTION, [PASSAGE], adapter_ids=[doc]).text

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert dict(zip(DOCS, pool.map(ask, DOCS), strict=True)) == expected

    async def all_tasks() -> list[str]:
        replies = await asyncio.gather(*(llm.aanswer(QUESTION, [PASSAGE], adapter_ids=[doc]) for doc in DOCS))
        return [reply.text for reply in replies]

    assert dict(zip(DOCS, asyncio.run(all_tasks()), strict=True)) == expected
    with pytest.raises(OptionError, match="needs adapters"):
        SpringLLM(spring_model=hooked_sm, knowledge="prag")


def test_llama_index_query_engine_with_the_postprocessor_and_combine(hooked_sm, store_folder, tmp_path):
    import json

    from llama_index.llms.spring import SpringLLM, spring_query_engine
    from llama_index.postprocessor.spring import ParametricAdapterPostprocessor
    from llama_index.retrievers.spring import SpringRetriever

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": doc, "title": "", "text": f"Passage {i} about Harvard."}) + "\n"
                              for i, doc in enumerate(DOCS[:3])))
    retriever = SpringRetriever.from_corpus(corpus, tmp_path / "bm25", backend="bm25", similarity_top_k=2)
    llm = SpringLLM(spring_model=hooked_sm, adapters=str(store_folder), knowledge="combine", max_new_tokens=5)
    engine = spring_query_engine(retriever, llm, node_postprocessors=[ParametricAdapterPostprocessor()])
    response = engine.query(QUESTION)
    ids = [node.node.metadata["adapter_id"] for node in response.source_nodes]
    texts = [node.node.get_content(metadata_mode="llm") for node in response.source_nodes]
    with llm.adapter_set.activate(ids):
        expected = hooked_sm.generate(QUESTION, texts, 0, max_new_tokens=5).text
    assert len(ids) == 2 and response.response == expected

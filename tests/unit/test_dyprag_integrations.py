"""DyPRAG inside both integrations: a translator folder passed as ``adapters=`` encodes the retrieved documents at
query time (no stored adapter), per call, across threads."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.documents import Document

from spring_core.parametric import LoraSpec
from spring_core.parametric.dyprag import DyPRAG, DyPRAGAdapters, DyPRAGConfig, ParameterTranslator

QUESTION = "Who is Harvard named after?"
TEXTS = {
    "harvard": "Harvard is named after John Harvard.",
    "yale": "Yale University is in New Haven, Connecticut.",
    "mit": "MIT was founded in 1861 in Boston.",
    "rice": "Rice University is in Houston, Texas.",
}


@pytest.fixture(scope="module")
def translator(hooked_sm, tmp_path_factory):
    """A translator whose (random, untrained) adapters are large enough to change the tiny model's answers."""
    spec = LoraSpec.for_model(hooked_sm.model, rank=2, alpha=32)
    config = DyPRAGConfig.for_model(hooked_sm.model, spec, width=8, init_std=0.2)
    folder = tmp_path_factory.mktemp("dyprag") / "translator"
    DyPRAG(ParameterTranslator(config), hooked_sm.model, hooked_sm.tokenizer).save(folder, base_model_name="tiny")
    return folder


def expected(hooked_sm, translator, ids: list[str], passages: list[str], max_new_tokens: int,
             texts: dict[str, str | dict[str, str]] | None = None) -> str:
    """The answer with the documents' adapters made by a separate adapter set from ``texts`` (default ``TEXTS``)."""
    with DyPRAGAdapters.open(translator, hooked_sm.model) as adapters:
        for doc_id in ids:
            adapters.remember(doc_id, (texts or TEXTS)[doc_id])
        with adapters.activate(ids):
            return hooked_sm.generate(QUESTION, passages, 0, max_new_tokens=max_new_tokens).text


def test_chat_spring_prag_encodes_each_calls_documents_in_8_threads(hooked_sm, translator):
    from langchain_spring import ChatSpring

    chat = ChatSpring(spring_model=hooked_sm, adapters=str(translator), knowledge="prag", max_tokens=6)
    answers = {doc: expected(hooked_sm, translator, [doc], [], 6) for doc in TEXTS}
    assert len(set(answers.values())) > 1, "the translator's adapters should change the answers"

    def ask(doc: str) -> str:
        return chat.invoke(QUESTION, documents=[Document(TEXTS[doc], metadata={"adapter_id": doc})]).content

    docs = list(TEXTS) * 2
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(ask, docs)) == [answers[doc] for doc in docs]


def test_langchain_chain_with_the_compressor_and_combine(hooked_sm, translator):
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda

    from langchain_spring import ParametricAdapterCompressor, SpringLLM, create_spring_rag_chain

    class TwoDocs(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager=None):
            return [Document(TEXTS["harvard"], metadata={"id": "harvard", "score": 2.0}),
                    Document(TEXTS["yale"], metadata={"id": "yale", "score": 1.0})]

    compressor = ParametricAdapterCompressor()
    retriever = TwoDocs() | RunnableLambda(lambda docs: compressor.compress_documents(docs, QUESTION))
    llm = SpringLLM(spring_model=hooked_sm, adapters=str(translator), knowledge="combine", max_tokens=5)
    chain = create_spring_rag_chain(retriever, llm)
    want = expected(hooked_sm, translator, ["harvard", "yale"], [TEXTS["harvard"], TEXTS["yale"]], 5)
    assert chain.invoke(QUESTION) == want
    assert isinstance(llm.parametric_adapters, DyPRAGAdapters)


def test_llama_index_query_engine_with_the_postprocessor(hooked_sm, translator, tmp_path):
    from llama_index.llms.spring import SpringLLM, spring_query_engine
    from llama_index.postprocessor.spring import ParametricAdapterPostprocessor
    from llama_index.retrievers.spring import SpringRetriever

    rows = {doc: {"id": doc, "title": doc.capitalize(), "text": text} for doc, text in TEXTS.items()}
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows.values()))
    retriever = SpringRetriever.from_corpus(corpus, tmp_path / "bm25", backend="bm25", similarity_top_k=2)
    llm = SpringLLM(spring_model=hooked_sm, adapters=str(translator), knowledge="prag", max_new_tokens=5)
    engine = spring_query_engine(retriever, llm, node_postprocessors=[ParametricAdapterPostprocessor()])
    response = engine.query(QUESTION)
    ids = [node.node.metadata["adapter_id"] for node in response.source_nodes]
    assert len(ids) == 2 and set(ids) <= set(TEXTS)
    assert all(node.node.get_content(metadata_mode="llm").startswith("title: ") for node in response.source_nodes)
    # the translator reads each document as --encode reads its corpus row (title and text), not as the prompt
    # shows it (LlamaIndex's "title: ..." metadata lines): on-the-fly and precomputed adapters are the same
    sources = {doc: {"title": row["title"], "text": row["text"]} for doc, row in rows.items()}
    assert response.response == expected(hooked_sm, translator, ids, [], 5, texts=sources)
    rendered = {node.node.metadata["adapter_id"]: node.node.get_content(metadata_mode="llm")
                for node in response.source_nodes}
    assert response.response != expected(hooked_sm, translator, ids, [], 5, texts=rendered)

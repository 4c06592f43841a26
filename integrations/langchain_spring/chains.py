"""``create_spring_rag_chain``: question in, answer out, with the retrieved documents handed over as documents.

Any LCEL chain works with ``ChatSpring`` / ``SpringLLM`` (the block is placed in whatever prompt it renders); this
one gives the model the documents themselves (``documents=``), so it reads them in SPRING's own layout, one by one
for a marginal ``decoding``, or through their adapters for a knowledge mode. For other LangChain models it is the
usual ``{"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm`` chain.

Example:
    >>> from langchain_spring import ChatSpring, SpringRetriever, create_spring_rag_chain
    >>> chat = ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=8)  # or tokens="smollm2-135m-squad"
    >>> chain = create_spring_rag_chain(SpringRetriever(store="store/", k=3), chat, k=10)
    >>> answer = chain.invoke("Who is Harvard named after?")  # 'John Harvard' with SmolLM2's trained tokens
    >>> isinstance(answer, str)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel, BaseLanguageModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.retrievers import RetrieverLike
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableLambda, RunnablePassthrough

from langchain_spring._base import SpringParams, document_passage
from langchain_spring.prompts import SPRING_RAG_CHAT_PROMPT, SPRING_RAG_PROMPT
from spring_core.prompts.layouts import format_passages


def format_docs(docs: Sequence[Document]) -> str:
    """Documents numbered as SPRING reads them: ``[1] (Title: t) text`` per line (like ``format_passages``)."""
    return format_passages([document_passage(d) for d in docs])


def unwrap_binding(llm: Any) -> Any:
    """The model under ``.bind(...)`` / ``.with_config(...)`` wrappers (``RunnableBinding``), or ``llm`` itself."""
    while isinstance(llm, RunnableBinding):
        llm = llm.bound
    return llm


def create_spring_rag_chain(retriever: RetrieverLike, llm: BaseLanguageModel | Runnable[Any, Any],
                            k: int | None = None) -> Runnable[str, str]:
    """A question-in, answer-out chain: retrieve, answer from the documents, return the text.

    Args:
        retriever: any LangChain retriever (e.g. ``SpringRetriever``).
        llm: ``ChatSpring`` or ``SpringLLM`` (they get the documents with ``documents=`` and read them with their
            ``decoding`` and ``knowledge``; put ``ParametricAdapterCompressor`` behind the retriever for
            adapters); any other LangChain model gets SPRING's prompt with the documents as context.
        k: virtual tokens between the documents and the question; default: the model's ``k``, else all its tokens.
    """
    if isinstance(unwrap_binding(llm), SpringParams):
        def answer(inputs: dict[str, Any], config: RunnableConfig) -> Any:
            options: dict[str, Any] = {"documents": inputs["documents"]}
            if k is not None:
                options["k"] = k
            return llm.invoke(inputs["question"], config, **options)

        documents = {"documents": retriever, "question": RunnablePassthrough()}
        return documents | RunnableLambda(answer, name="spring_documents") | StrOutputParser()
    prompt = SPRING_RAG_CHAT_PROMPT if isinstance(unwrap_binding(llm), BaseChatModel) else SPRING_RAG_PROMPT
    return {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()

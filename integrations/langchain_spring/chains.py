"""``create_spring_rag_chain``: the usual LCEL RAG chain with SPRING's prompt layout.

``{"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()``,
where the prompt puts the numbered passages, then the marker block, then the question (the chat prompt for a chat
model, the completion prompt otherwise).

Example:
    >>> from langchain_spring import ChatSpring, SpringRetriever, create_spring_rag_chain
    >>> chain = create_spring_rag_chain(SpringRetriever(store="store/", k=3),
    ...                                 ChatSpring(tokens="my-tokens/", max_tokens=32), k=10)   # doctest: +SKIP
    >>> chain.invoke("Who is Harvard named after?")                                          # doctest: +SKIP
    'John Harvard'
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
from langchain_spring.prompts import spring_rag_chat_prompt, spring_rag_prompt
from spring_core.prompts import format_passages


def format_docs(docs: Sequence[Document]) -> str:
    """Documents numbered as SPRING reads them: ``[1] (Title: t) text`` per line (like ``format_passages``)."""
    return format_passages([document_passage(d) for d in docs])


def _unwrap(llm: Any) -> Any:
    while isinstance(llm, RunnableBinding):
        llm = llm.bound
    return llm


def create_spring_rag_chain(retriever: RetrieverLike, llm: BaseLanguageModel | Runnable[Any, Any],
                            k: int | None = None) -> Runnable[str, str]:
    """A question-in, answer-out chain: retrieve, format the passages, SPRING prompt, model, string.

    For a ``ChatSpring``/``SpringLLM`` whose ``mode`` is marginal (``rag-token``, ``rag-sequence``,
    ``rag-sequence-fast``) or whose ``parametric_mode`` is ``prag``/``combine``, the documents are not joined into
    a prompt: the model gets the question with ``documents=`` and reads each one on its own (weighted by its
    retriever score) or activates its adapter (put ``ParametricAdapterCompressor`` behind the retriever).

    Args:
        retriever: any LangChain retriever (e.g. ``SpringRetriever``).
        llm: ``ChatSpring`` (gets the chat prompt) or ``SpringLLM`` (the completion prompt); other LangChain
            models work too and read the same prompt without virtual tokens (``k`` defaults to 0 for them).
        k: virtual tokens in the prompt's block; default: the model's ``k`` if set, else all its tokens (``n``,
            which loads the model now; 0 without tokens).
    """
    model = _unwrap(llm)
    if k is None:
        k = model.default_k() if isinstance(model, SpringParams) else 0
    if isinstance(model, SpringParams) and (model.mode != "concat" or model.parametric_mode != "icl"):
        def answer(inputs: dict[str, Any], config: RunnableConfig) -> Any:
            return llm.invoke(inputs["question"], config, documents=inputs["documents"], k=k)

        documents = {"documents": retriever, "question": RunnablePassthrough()}
        return documents | RunnableLambda(answer, name="spring_passages") | StrOutputParser()
    prompt = spring_rag_chat_prompt(k) if isinstance(model, BaseChatModel) else spring_rag_prompt(k)
    context = retriever | format_docs
    return {"context": context, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()

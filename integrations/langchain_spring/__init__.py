"""LangChain drop-ins for spring-rag: SPRING virtual tokens for local Hugging Face LLMs.

- ``ChatSpring`` (chat model) and ``SpringLLM`` (completion LLM) over ``spring_core.SpringModel``
- ``SPRING_RAG_PROMPT`` / ``SPRING_RAG_CHAT_PROMPT`` (``spring_rag_prompt(k)`` / ``spring_rag_chat_prompt(k)``):
  context, then ``[r1]..[rk]``, then the question, the order the tokens were trained on
- ``SpringRetriever`` over spring-rag's dense / BM25 stores, ``ParametricAdapterCompressor`` (adapter ids)
- ``create_spring_rag_chain(retriever, llm, k=...)`` and ``format_docs``

Example:
    >>> from langchain_spring import ChatSpring, SpringRetriever, create_spring_rag_chain
    >>> chain = create_spring_rag_chain(SpringRetriever(store="store/", k=3),
    ...                                 ChatSpring(model="smollm2-135m", tokens="my-tokens/"), k=10)  # doctest: +SKIP
    >>> chain.invoke("Who is Harvard named after?")                                              # doctest: +SKIP
"""

from langchain_spring.chains import create_spring_rag_chain, format_docs
from langchain_spring.chat_models import ChatSpring
from langchain_spring.compressors import ParametricAdapterCompressor
from langchain_spring.llms import SpringLLM
from langchain_spring.prompts import (
    SPRING_RAG_CHAT_PROMPT,
    SPRING_RAG_PROMPT,
    PromptLayoutError,
    SpringLayoutWarning,
    looks_like_rag_prompt,
    spring_rag_chat_prompt,
    spring_rag_prompt,
)
from langchain_spring.retrievers import SpringRetriever

__all__ = [
    "SPRING_RAG_CHAT_PROMPT",
    "SPRING_RAG_PROMPT",
    "ChatSpring",
    "ParametricAdapterCompressor",
    "PromptLayoutError",
    "SpringLLM",
    "SpringLayoutWarning",
    "SpringRetriever",
    "create_spring_rag_chain",
    "format_docs",
    "looks_like_rag_prompt",
    "spring_rag_chat_prompt",
    "spring_rag_prompt",
]

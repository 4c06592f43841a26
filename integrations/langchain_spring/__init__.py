"""LangChain drop-ins for spring-rag: SPRING virtual tokens for local Hugging Face LLMs.

- ``ChatSpring`` (chat model) and ``SpringLLM`` (completion LLM) over ``spring_core.SpringModel``
  (in any RAG chain they place ``[r1]..[rk]`` between the retrieved context and the question themselves)
- ``SPRING_RAG_PROMPT`` / ``SPRING_RAG_CHAT_PROMPT``: context, then the question, the layouts the tokens were
  trained in
- ``SpringRetriever`` over spring-rag's dense / BM25 stores, ``ParametricAdapterCompressor`` (adapter ids)
- ``create_spring_rag_chain(retriever, llm, k=...)`` and ``format_docs``
- ``SpringRAGMiddleware``: two-step RAG for LangChain 1.x agents (``create_agent``), the context and the question
  handed to ``ChatSpring`` as structure (imported on first use: it needs the ``langchain`` package)

Example:
    >>> from langchain_spring import ChatSpring, SpringRetriever, create_spring_rag_chain
    >>> chat = ChatSpring(model="my-llama/", tokens="my-tokens/", max_tokens=8)  # or smollm2-135m(-squad)
    >>> chain = create_spring_rag_chain(SpringRetriever(store="store/", k=3), chat)
    >>> isinstance(chain.invoke("Who is Harvard named after?"), str)
    True
"""

from typing import Any

from langchain_spring.chains import create_spring_rag_chain, format_docs
from langchain_spring.chat_models import ChatSpring
from langchain_spring.compressors import ParametricAdapterCompressor
from langchain_spring.llms import SpringLLM
from langchain_spring.prompts import SPRING_RAG_CHAT_PROMPT, SPRING_RAG_PROMPT
from langchain_spring.retrievers import SpringRetriever

__all__ = [
    "SPRING_RAG_CHAT_PROMPT",
    "SPRING_RAG_PROMPT",
    "ChatSpring",
    "ParametricAdapterCompressor",
    "SpringLLM",
    "SpringRAGMiddleware",
    "SpringRetriever",
    "create_spring_rag_chain",
    "format_docs",
]


def __getattr__(name: str) -> Any:
    if name == "SpringRAGMiddleware":  # langchain (1.x agents) and langgraph load only for the apps that use them
        from langchain_spring.middleware import SpringRAGMiddleware

        return SpringRAGMiddleware
    raise AttributeError(f"module 'langchain_spring' has no attribute {name!r}")

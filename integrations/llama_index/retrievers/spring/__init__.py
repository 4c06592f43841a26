"""LlamaIndex retriever over spring-rag's dense and BM25 stores."""

from llama_index.retrievers.spring.base import SpringRetriever

__all__ = ["SpringRetriever"]

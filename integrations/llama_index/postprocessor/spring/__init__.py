"""LlamaIndex node postprocessor that tags nodes with parametric-RAG document-adapter ids."""

from llama_index.postprocessor.spring.base import ParametricAdapterPostprocessor, adapter_ids

__all__ = ["ParametricAdapterPostprocessor", "adapter_ids"]

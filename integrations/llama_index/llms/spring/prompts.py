"""SPRING prompt templates for LlamaIndex response synthesizers: context first, then the question.

They hold no markers: ``SpringLLM`` places the block between the context and the question of any template, and a
template's ``metadata["spring_k"]`` (set here from ``k``) fixes the block size for prompts made from it. The refine
template is reordered (LlamaIndex's default states the question *before* the context; SPRING's tokens were trained
between context and question): new context, the existing answer, then the question.

Example:
    >>> from llama_index.llms.spring import spring_text_qa_template
    >>> template = spring_text_qa_template(2)
    >>> print(template.template)
    {context_str}
    <BLANKLINE>
    Question: {query_str}
    Answer:
    >>> template.metadata["spring_k"]
    2
"""

from __future__ import annotations

from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.prompt_type import PromptType

from spring_core.prompts.layouts import spring_template

BLOCK_SIZE_KEY = "spring_k"
"""The template ``metadata`` key that sets the block size (read by ``SpringLLM``)."""


def _template(text: str, prompt_type: PromptType, k: int | None) -> PromptTemplate:
    metadata = {} if k is None else {BLOCK_SIZE_KEY: k}
    return PromptTemplate(text, prompt_type=prompt_type, metadata=metadata)


def spring_text_qa_template(k: int | None = None, layout: str = "raw") -> PromptTemplate:
    """``text_qa_template``: retrieved context, then the question (``k`` virtual tokens between them; ``None``:
    the LLM's ``k``)."""
    return _template(spring_template(layout, context="{context_str}", question="{query_str}"),
                     PromptType.QUESTION_ANSWER, k)


def spring_refine_template(k: int | None = None, layout: str = "raw") -> PromptTemplate:
    """``refine_template``: the new context and the existing answer, then the question."""
    context = "{context_msg}\n\nAn earlier answer, from other passages: {existing_answer}"
    return _template(spring_template(layout, context=context, question="{query_str}"), PromptType.REFINE, k)


def spring_summary_template(k: int | None = None, layout: str = "raw") -> PromptTemplate:
    """``summary_template`` (tree_summarize): the chunk summaries as context, then the question."""
    return _template(spring_template(layout, context="{context_str}", question="{query_str}"), PromptType.SUMMARY, k)

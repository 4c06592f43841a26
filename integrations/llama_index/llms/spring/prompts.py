"""SPRING prompt templates for LlamaIndex response synthesizers: context first, then the markers, then the question.

LlamaIndex's default refine template states the question *before* the context; the virtual tokens were trained to
sit between context and question, so the refine template here is reordered: new context, the existing answer,
the markers, the question. Every template holds the marker block exactly once, right before the question.

Example:
    >>> from llama_index.llms.spring import spring_text_qa_template
    >>> print(spring_text_qa_template(2).template)
    {context_str}
    <BLANKLINE>
    [r1][r2]Question: {query_str}
    Answer:
"""

from __future__ import annotations

from llama_index.core.prompts import PromptTemplate
from llama_index.core.prompts.prompt_type import PromptType

from spring_core.prompts import spring_template


def spring_text_qa_template(k: int, layout: str = "raw") -> PromptTemplate:
    """``text_qa_template``: retrieved context, ``[r1]..[rk]``, the question."""
    text = spring_template(k, layout, context="{context_str}", question="{query_str}")
    return PromptTemplate(text, prompt_type=PromptType.QUESTION_ANSWER)


def spring_refine_template(k: int, layout: str = "raw") -> PromptTemplate:
    """``refine_template``: the new context and the existing answer, then ``[r1]..[rk]`` and the question."""
    context = "{context_msg}\n\nAn earlier answer, from other passages: {existing_answer}"
    text = spring_template(k, layout, context=context, question="{query_str}")
    return PromptTemplate(text, prompt_type=PromptType.REFINE)


def spring_summary_template(k: int, layout: str = "raw") -> PromptTemplate:
    """``summary_template`` (tree_summarize): the chunk summaries as context, then the markers and the question."""
    text = spring_template(k, layout, context="{context_str}", question="{query_str}")
    return PromptTemplate(text, prompt_type=PromptType.SUMMARY)

"""LlamaIndex LLM with SPRING virtual tokens, its prompt templates, a passage-by-passage synthesizer and a
query-engine helper."""

from llama_index.llms.spring.base import SpringLLM
from llama_index.llms.spring.prompts import spring_refine_template, spring_summary_template, spring_text_qa_template
from llama_index.llms.spring.query_engine import spring_prompt_kwargs, spring_query_engine
from llama_index.llms.spring.synthesizer import SpringSynthesizer

__all__ = [
    "SpringLLM",
    "SpringSynthesizer",
    "spring_prompt_kwargs",
    "spring_query_engine",
    "spring_refine_template",
    "spring_summary_template",
    "spring_text_qa_template",
]

"""The prompts PRAG's document augmentation sends to the LLM, in one place, with the version written to the output.

They follow the Parametric RAG paper's code (Su et al., 2025): one rewrite that keeps every entity, name and
number, and question-answer pairs as a JSON list. Change a prompt, change ``PROMPT_VERSION``: augmented files
record it, so encodings made from different prompts are never mixed up silently.
"""

from __future__ import annotations

PROMPT_VERSION = "prag-augment-v1"  # the wording sent to the model; the example-copy filter is in parse_qa

REWRITE = (
    "Rewrite the following passage. Keep every entity, proper noun, name, number, date and key term exactly as it "
    "is, but express the same facts in different words. Output only the rewritten passage.\n\n"
    "Passage:\n{passage}"
)

EXAMPLE_QUESTION = "What is the capital of France?"
"""The example in ``QA``; small models copy it, so a pair that repeats it is not counted."""

QA = (
    "Read the passage and write {count} different questions that the passage answers, each with a short answer "
    "taken from the passage. Output only a JSON list in exactly this format:\n"
    '[{{"question": "{example}", "answer": "Paris"}}, ...]\n\n'
    "Passage:\n{passage}"
)


def rewrite_prompt(passage: str) -> str:
    return REWRITE.format(passage=passage)


def qa_prompt(passage: str, count: int = 3) -> str:
    return QA.format(passage=passage, count=count, example=EXAMPLE_QUESTION)

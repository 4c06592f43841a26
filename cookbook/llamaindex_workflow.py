"""LlamaIndex Workflow recipe: a retrieve step and an answer step, the block placed from the template's variables.

Run it from the repository root:

    python cookbook/llamaindex_workflow.py                        # bundled corpus, tokens and questions
    python cookbook/llamaindex_workflow.py --question "Who is Harvard named after?" --tokens my-tokens/

What it shows: a Workflow (LlamaIndex's event-driven pipelines) whose answer step calls
``llm.apredict(template, context_str=..., query_str=...)``: SpringLLM sees the template and its variables, so it
places the virtual tokens between the context and the question, and the step reads the usage (virtual tokens
included) from the LLM's response. Writing the prompt out yourself (``llm.acomplete(f"...{context}...{query}")``)
would lose that structure: SpringLLM then runs the plain model and warns once, naming ``apredict``.
What to expect: each question answered with k = 0 (the base model: a sentence, often off) and with the bundled
trained tokens (``smollm2-135m-squad``, k = 50: a few words, SQuAD EM ~24 against 0 on held-out questions).
The first run converts the model once into the cache (~25 s).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from llama_index.core import PromptTemplate
from llama_index.core.workflow import Event, StartEvent, StopEvent, Workflow, step
from llama_index.llms.spring import SpringLLM
from llama_index.retrievers.spring import SpringRetriever

from spring_core.data import demo_qa_path, read_qa, sample_corpus_path

ANSWER_TEMPLATE = PromptTemplate(
    "Context information is below.\n---------------------\n{context_str}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\nQuery: {query_str}\nAnswer: "
)


class Retrieved(Event):
    question: str
    context: str


class RagWorkflow(Workflow):
    """Retrieve, then answer through ``apredict`` with the template and its variables."""

    def __init__(self, retriever: Any, llm: SpringLLM, **kwargs: Any):
        super().__init__(**kwargs)
        self.retriever, self.llm = retriever, llm

    @step
    async def retrieve(self, event: StartEvent) -> Retrieved:
        nodes = await self.retriever.aretrieve(event.question)
        return Retrieved(question=event.question, context="\n\n".join(n.node.get_content() for n in nodes))

    @step
    async def answer(self, event: Retrieved) -> StopEvent:
        text = await self.llm.apredict(ANSWER_TEMPLATE, context_str=event.context, query_str=event.question)
        return StopEvent(result=text.strip())


async def run(questions: list[str], retriever: Any, llm: SpringLLM) -> None:
    plain = SpringLLM(spring_model=llm.spring_model, k=0, max_new_tokens=llm.max_new_tokens)  # same model, no block
    with_block, without_block = RagWorkflow(retriever, llm, timeout=600), RagWorkflow(retriever, plain, timeout=600)
    for question in questions:
        print(f"\nQ: {question}")
        print(f"   k = 0   : {await without_block.run(question=question)}")
        print(f"   k = {llm.spring_model.n:<4}: {await with_block.run(question=question)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(sample_corpus_path()), help="corpus JSONL (id, title, text)")
    parser.add_argument("--tokens", default="smollm2-135m-squad", help="artifact folder or bundled name")
    parser.add_argument("--question", action="append", help="a question (repeatable; default: 2 bundled ones)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    store = Path(tempfile.mkdtemp(prefix="spring-workflow-"))
    retriever = SpringRetriever.from_corpus(args.corpus, store, backend="bm25", similarity_top_k=2)
    llm = SpringLLM(model_name="smollm2-135m", tokens=args.tokens, max_new_tokens=args.max_new_tokens)
    questions = args.question or [read_qa(demo_qa_path())[i]["question"] for i in (4, 6)]
    asyncio.run(run(questions, retriever, llm))


if __name__ == "__main__":
    main()

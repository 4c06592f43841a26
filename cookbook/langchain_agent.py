"""LangChain 1.x recipe: ``create_agent`` two-step RAG with ``SpringRAGMiddleware``, over the bundled corpus.

Run it from the repository root:

    python cookbook/langchain_agent.py                    # 2 bundled questions, the bundled trained tokens
    python cookbook/langchain_agent.py --question "Who is Harvard named after?" --tokens my-tokens/

What it shows: LangChain's two-step RAG agent (``create_agent(model, tools=[], middleware=[...])``): the
middleware retrieves for the user's message, writes the documents before the question (the tutorial's
``@dynamic_prompt`` writes them into the system prompt; ``context_in="system"`` does that), and also hands
``ChatSpring`` the context and the question as structure, so the block sits exactly between them (no label
heuristic, no warning). The same agent runs with k = 0 (the base model) and
with the bundled trained tokens (``smollm2-135m-squad``, k = 50); each answer's ``usage_metadata`` counts the
virtual tokens in ``input_token_details["virtual"]``.
What to expect: with k = 0 SmolLM2 answers in sentences; with the tokens it answers in a few words. The first
run converts the model once into the cache (~25 s).
"""

from __future__ import annotations

import argparse
import tempfile

from langchain.agents import create_agent

from langchain_spring import ChatSpring, SpringRAGMiddleware, SpringRetriever
from spring_core import SpringModel
from spring_core.data import demo_qa_path, read_qa, sample_corpus_path
from spring_core.retrieval import index_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="smollm2-135m-squad", help="artifact folder or bundled name")
    parser.add_argument("--question", action="append", help="a question (repeatable; default: 2 bundled ones)")
    parser.add_argument("--passages", type=int, default=2, help="documents retrieved per question")
    parser.add_argument("--max-tokens", type=int, default=32, help="most new tokens per answer")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spring-agent-store-") as folder:
        store, _ = index_corpus(sample_corpus_path(), folder, backend="bm25", show_progress=False)
        middleware = SpringRAGMiddleware(SpringRetriever(store=store, k=args.passages))
        base = SpringModel.from_pretrained("smollm2-135m")  # loaded once, shared by both agents
        agents = {
            "k = 0": create_agent(ChatSpring(spring_model=base, max_tokens=args.max_tokens), tools=[],
                                  middleware=[middleware]),
            "tokens": create_agent(ChatSpring(spring_model=base.with_tokens(args.tokens), max_tokens=args.max_tokens),
                                   tools=[], middleware=[middleware]),
        }
        questions = args.question or [read_qa(demo_qa_path())[i]["question"] for i in (4, 6)]
        for question in questions:
            print(f"\nQ: {question}")
            for label, agent in agents.items():
                answer = agent.invoke({"messages": [{"role": "user", "content": question}]})["messages"][-1]
                virtual = answer.usage_metadata["input_token_details"]["virtual"]
                print(f"   {label:<6} ({virtual:>2} virtual tokens): {answer.content.strip()}")


if __name__ == "__main__":
    main()

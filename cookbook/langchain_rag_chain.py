"""Recipe: a LangChain RAG chain with SPRING virtual tokens, over the bundled sample corpus.

What it shows: the same LCEL chain (``create_spring_rag_chain``: retriever -> SPRING's prompt -> ``ChatSpring``)
answering with k=0 (exactly the base model) and with k virtual tokens of the bundled trained artifact.
What to expect: with k=0 SmolLM2 answers in sentences ("The biggest city in Florida is ..."); with the block it
answers in a few words, as the tokens were trained to (SQuAD EM 13 at k=10, 24 at k=50 on 300 dev questions).
Loading takes a minute the first time (the model is converted once into the cache), then ~5 s per answer on a CPU.

1. Index the 222 bundled SQuAD paragraphs into a dense store (MiniLM embeddings in chromadb) in a temp folder.
2. Load SmolLM2-135M-Instruct once and wrap it twice: the plain model, and the model with 50 virtual tokens.
3. Build the usual LCEL chain (retriever | format_docs -> SPRING chat prompt -> ChatSpring -> str) for each and
   ask a few bundled questions: k=0 (no block, exactly the base model) next to k virtual tokens.

The tokens default to the bundled ``smollm2-135m-squad`` (trained for SmolLM2-135M-Instruct); pass your own
artifact folder with ``--tokens DIR``, or ``--tokens none`` for an untrained block (initialised from the paper's
instruction sentence) to see what training adds.

Run:
    python cookbook/langchain_rag_chain.py                 # 3 questions, k=10, 32 new tokens
    python cookbook/langchain_rag_chain.py --questions 2 --k 50
    python cookbook/langchain_rag_chain.py --tokens my-tokens/      # your own artifact (or --tokens none)
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_spring import ChatSpring, SpringRetriever, create_spring_rag_chain
from spring_core import SpringModel, VirtualTokens
from spring_core.data import demo_qa_path, read_qa, sample_corpus_path
from spring_core.retrieval import index_corpus


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="base model (alias, folder or HF id)")
    parser.add_argument("--tokens", default="smollm2-135m-squad",
                        help="virtual-token artifact: a folder or bundled name (default: smollm2-135m-squad, "
                             "trained for the default model); 'none': an untrained block")
    parser.add_argument("--k", type=int, default=10, help="virtual tokens in the prompt's block")
    parser.add_argument("--passages", type=int, default=3, help="passages retrieved per question")
    parser.add_argument("--questions", type=int, default=3, help="how many bundled questions to ask (1-12)")
    parser.add_argument("--max-tokens", type=int, default=32, help="most new tokens per answer")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = read_qa(demo_qa_path())
    questions = rows[:: max(1, len(rows) // max(1, args.questions))][: args.questions]  # spread over the topics

    with tempfile.TemporaryDirectory(prefix="spring-langchain-store-") as folder:
        store, added = index_corpus(sample_corpus_path(), folder, backend="dense", show_progress=False)
        print(f"indexed {added} passages (dense: MiniLM + chromadb)")
        retriever = SpringRetriever(store=store, k=args.passages)

        base = SpringModel.from_pretrained(args.model)  # loaded once, shared by both chat models
        untrained = args.tokens.lower() == "none"
        tokens = VirtualTokens.from_text(base, n=max(args.k, 50), layout="chat") if untrained else args.tokens
        with_tokens = base.with_tokens(tokens)  # same weights and tokenizer, plus the token table
        chains = {
            "k=0": create_spring_rag_chain(retriever, ChatSpring(spring_model=base, max_tokens=args.max_tokens), k=0),
            f"k={args.k}": create_spring_rag_chain(
                retriever, ChatSpring(spring_model=with_tokens, max_tokens=args.max_tokens), k=args.k
            ),
        }

        for row in questions:
            print(f"\nQ: {row['question']}   (gold: {row['answers'][0]})")
            for label, chain in chains.items():
                answer = chain.invoke(row["question"]).strip().replace("\n", " ")
                print(f"  {label:>5}: {answer}")


if __name__ == "__main__":
    main()

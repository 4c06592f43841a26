"""Drop-in quality: the ecosystems' own engines and chains with the plain model, with SPRING placed
automatically, and with spring-rag's own SPRING path, on the same retrieval.

What is measured: the first ``--limit`` (default 200) SQuAD dev questions, each answered from the top 2 passages
a real retriever finds in ``corpus/combined.jsonl`` (3,520 passages), SmolLM2-135M-Instruct, greedy, 16 new
tokens, the bundled ``smollm2-135m-squad`` tokens at k = 50. EM / F1 in % (SQuAD normalisation).

- LlamaIndex: a ``VectorStoreIndex`` over LlamaIndex's ``ChromaVectorStore`` with MiniLM embeddings.
  ``default, plain``: ``index.as_query_engine(llm=SpringLLM())`` (no tokens: the base model);
  ``default, automatic``: the same engine with ``SpringLLM(tokens=...)``, nothing else changed, in every
  ``response_mode``; ``spring_query_engine``: SPRING's own templates on the same index.
- LangChain: ``SpringRetriever`` over spring-rag's dense store (MiniLM in chromadb).
  ``tutorial, plain`` / ``tutorial, automatic``: the RAG tutorial's chain (context in the system message, the
  question in the human one) with ``ChatSpring`` without / with tokens; ``context in the human message``: the
  tutorial's instruction as the system message and the context above the question in the human one, a layout the
  tokens were not trained on, which tells the system message's cost from the block's; ``RetrievalQA prompt``
  likewise with the completion ``SpringLLM`` and langchain-classic's ``RetrievalQA`` prompt;
  ``create_spring_rag_chain``: the documents handed over as documents, in SPRING's raw layout (the bundled tokens'
  own) and in its chat layout (the reference for the tutorial chain); ``page_content only``: the same two shown
  the documents' text without their titles, the context the tutorial and RetrievalQA chains' ``format_docs``
  writes. Where no LangChain retriever runs (the app searches the store itself): ``LangChain 1.x two-step agent``
  (``create_agent`` with ``SpringRAGMiddleware`` over the store as a vector store), ``prompt | model given its
  context`` (the tutorial prompt, the context passed in) and ``LangGraph retrieve/generate`` (LangGraph's RAG
  tutorial: a retrieve node, a generate node with ``rlm/rag-prompt``), and ``agentic RAG answer step``: the step
  of LangChain's agentic RAG tutorial that answers from the tool's result (the question, the model's call of the
  tutorial's ``retrieve_context`` tool, and the ``ToolMessage`` that tool returns for the top 2 passages).
  ``prompt | model given its context`` sends the tutorial chain's messages, so its plain-model row is
  ``LangChain tutorial chain, plain model``.

Predictions are kept in ``--out/predictions.jsonl`` keyed by configuration and question, so an interrupted run
resumes; after the bundled tokens change, delete the predictions of the configurations that use them.
Results: ``benchmarks/results/dropin.json`` and a table on stdout.

Run (from the repository root, with the shared data folder beside the repository)::

    python benchmarks/dropin.py --limit 200
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = "smollm2-135m-squad"
MODES = ("compact", "refine", "tree_summarize", "simple_summarize", "accumulate", "compact_accumulate")
TUTORIAL_INSTRUCTION = ("You are an assistant for question-answering tasks. Use the following pieces of retrieved "
                        "context to answer the question. If you don't know the answer, say that you don't know. Use "
                        "three sentences maximum and keep the answer concise.")
TUTORIAL_SYSTEM = TUTORIAL_INSTRUCTION + "\n\n{context}"
RLM_RAG_PROMPT = ("You are an assistant for question-answering tasks. Use the following pieces of retrieved context "
                  "to answer the question. If you don't know the answer, just say that you don't know. Use three "
                  "sentences maximum and keep the answer concise.\nQuestion: {question} \nContext: {context} "
                  "\nAnswer:")
RETRIEVAL_QA = ("Use the following pieces of context to answer the question at the end. If you don't know the "
                "answer, just say that you don't know, don't try to make up an answer.\n\n{context}\n\n"
                "Question: {question}\nHelpful Answer:")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--tokens", default=TOKENS,
                        help=f"the SPRING tokens (default: the bundled {TOKENS}); other tokens' rows are labelled "
                             "with the folder name")
    parser.add_argument("--only", action="append", default=[],
                        help="a configuration to run, repeatable (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dropin")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    from spring_core.data import read_qa
    from spring_core.metrics import aggregate, score

    rows = read_qa(args.data_dir / "squad" / "dev.jsonl")[: args.limit]
    corpus = args.data_dir / "corpus" / "combined.jsonl"
    configs = build_configs(corpus, args.out / "cache", args.k, args.tokens)
    wanted = set(args.only)
    unknown = wanted - set(configs)
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {sorted(configs)}")
    store = Predictions(args.out / "predictions.jsonl")
    results = []
    for name, answer in configs.items():
        if wanted and name not in wanted:
            continue
        began, preds = time.perf_counter(), []
        for row in rows:
            saved = store.get(name, row["id"])
            preds.append(saved if saved is not None else store.put(name, row["id"], answer(row["question"])))
        scores = aggregate([score(p, row["answers"]) for p, row in zip(preds, rows, strict=True)])
        results.append({"config": name, "questions": len(rows), "em": round(scores["em"], 1),
                        "f1": round(scores["f1"], 1), "seconds": round(time.perf_counter() - began, 1)})
        print(f"{name:<48} EM {results[-1]['em']:5.1f}  F1 {results[-1]['f1']:5.1f}", flush=True)
    path = RESULTS / "dropin.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    merged = {(r["config"], r["questions"]): r for r in [*saved.get("results", []), *results]}  # reruns replace
    payload = {**saved,  # keeps "earlier_tokens": rows measured with earlier versions of the bundled tokens
               "setup": {"k": args.k, "tokens": TOKENS, "passages": 2, "max_new_tokens": 16, "model": "smollm2-135m"},
               "results": list(merged.values())}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    return 0


def build_configs(corpus: Path, cache: Path, k: int, tokens: str = TOKENS) -> dict[str, Callable[[str], str]]:
    """Every configuration: a name and a function from a question to the answer text (with ``tokens`` other than
    the bundled ones, the configurations that use tokens carry the tokens' folder name)."""
    import chromadb
    from chromadb.config import Settings
    from langchain_core.documents import Document as LangChainDocument
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.llms.spring import SpringLLM as LlamaSpringLLM
    from llama_index.llms.spring import spring_query_engine
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from langchain_spring import ChatSpring, SpringLLM, SpringRetriever, create_spring_rag_chain
    from spring_core import SpringModel
    from spring_core.data import read_corpus
    from spring_core.model.loading import DEFAULT_POOL
    from spring_core.retrieval import index_corpus
    from spring_core.retrieval.embedders import _bundled_minilm_path

    model, tokenizer = DEFAULT_POOL.get("smollm2-135m")
    plain, spring = SpringModel(model, tokenizer), SpringModel(model, tokenizer, tokens)
    settings = {"max_new_tokens": 16}

    cache.mkdir(parents=True, exist_ok=True)
    client = chromadb.PersistentClient(path=str(cache / "llama-chroma"), settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection("passages")
    embed = HuggingFaceEmbedding(model_name=_bundled_minilm_path())
    vector_store = ChromaVectorStore(chroma_collection=collection)
    if collection.count():
        index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed)
    else:
        documents = [Document(text=r["text"], metadata={"title": r["title"]}, id_=r["id"]) for r in read_corpus(corpus)]
        index = VectorStoreIndex.from_documents(documents, embed_model=embed,
                                                storage_context=StorageContext.from_defaults(vector_store=vector_store))
    li_plain = LlamaSpringLLM(spring_model=plain, **settings)
    li_spring = LlamaSpringLLM(spring_model=spring, k=k, **settings)

    def llama(engine: Any) -> Callable[[str], str]:
        return lambda question: str(engine.query(question)).strip()

    configs: dict[str, Callable[[str], str]] = {
        "LlamaIndex default engine, plain model": llama(index.as_query_engine(llm=li_plain, similarity_top_k=2)),
    }
    for mode in MODES:
        engine = index.as_query_engine(llm=li_spring, similarity_top_k=2, response_mode=mode)
        configs[f"LlamaIndex default engine, automatic ({mode})"] = llama(engine)
    configs["LlamaIndex spring_query_engine"] = llama(spring_query_engine(index, li_spring, similarity_top_k=2))

    store, _ = index_corpus(corpus, cache / "langchain-store", backend="dense", show_progress=False)
    retriever = SpringRetriever(store=store, k=2)

    def joined(docs: Any) -> str:
        return "\n\n".join(d.page_content for d in docs)

    tutorial = ChatPromptTemplate.from_messages([("system", TUTORIAL_SYSTEM), ("human", "{question}")])
    context_in_human = ChatPromptTemplate.from_messages([("system", TUTORIAL_INSTRUCTION),
                                                         ("human", "{context}\n\n{question}")])
    qa_prompt = PromptTemplate.from_template(RETRIEVAL_QA)

    chat_plain = ChatSpring(spring_model=plain, max_tokens=16)
    chat_auto = ChatSpring(spring_model=spring, k=k, max_tokens=16)
    completion_plain = SpringLLM(spring_model=plain, max_tokens=16)
    completion_auto = SpringLLM(spring_model=spring, k=k, max_tokens=16)

    def chain(prompt: Any, llm: Any) -> Callable[[str], str]:
        runnable = {"context": retriever | joined, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
        return lambda question: runnable.invoke(question).strip()

    configs |= {
        "LangChain tutorial chain, plain model": chain(tutorial, chat_plain),
        "LangChain tutorial chain, automatic": chain(tutorial, chat_auto),
        "LangChain tutorial instruction, context in the human message, plain model": chain(context_in_human,
                                                                                          chat_plain),
        "LangChain tutorial instruction, context in the human message, automatic": chain(context_in_human, chat_auto),
        "LangChain RetrievalQA prompt, plain model": chain(qa_prompt, completion_plain),
        "LangChain RetrievalQA prompt, automatic": chain(qa_prompt, completion_auto),
    }
    spring_chain = create_spring_rag_chain(retriever, completion_auto)
    configs["LangChain create_spring_rag_chain"] = lambda question: spring_chain.invoke(question).strip()
    # SPRING's own chat layout, the reference for the tutorial chain, which reads its prompt as a chat
    chat_spring = ChatSpring(spring_model=spring.with_tokens(tokens, layout="chat"), k=k, max_tokens=16)
    chat_chain = create_spring_rag_chain(retriever, chat_spring)
    configs["LangChain create_spring_rag_chain, chat layout"] = lambda question: chat_chain.invoke(question).strip()
    # the same two chains shown only the documents' page_content, as the tutorial and RetrievalQA chains are: the
    # reference that separates where the block goes from what the context says (SPRING's layout adds the titles)
    untitled = retriever | RunnableLambda(lambda docs: [LangChainDocument(page_content=d.page_content) for d in docs])
    bare_chain = create_spring_rag_chain(untitled, completion_auto)
    configs["LangChain create_spring_rag_chain, page_content only"] = lambda q: bare_chain.invoke(q).strip()
    bare_chat_chain = create_spring_rag_chain(untitled, chat_spring)
    configs["LangChain create_spring_rag_chain, chat layout, page_content only"] = (
        lambda q: bare_chat_chain.invoke(q).strip())
    configs |= app_retrieval_configs(store, chat_plain, chat_auto, tutorial)
    if tokens == TOKENS:
        return configs
    label = Path(tokens).name
    return {name if "plain model" in name else f"{name} [{label}]": answer for name, answer in configs.items()}


def app_retrieval_configs(store: Any, chat_plain: Any, chat_auto: Any,
                          tutorial: Any) -> dict[str, Callable[[str], str]]:
    """The app shapes of issue #33, where no LangChain retriever runs: the app searches the store itself (as
    ``vector_store.similarity_search`` does) and hands the context over as LangChain 1.x and LangGraph apps do."""
    from typing import TypedDict

    from langchain.agents import create_agent
    from langchain_core.documents import Document as LangChainDocument
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool
    from langgraph.graph import START, StateGraph

    from langchain_spring import SpringRAGMiddleware

    class StoreSearch:
        """The dense store as a vector store: ``similarity_search(query, k)``, no retriever run."""

        def similarity_search(self, query: str, k: int = 2) -> list[Any]:
            return [LangChainDocument(page_content=hit.text) for hit in store.retrieve(query, top_k=k)]

    search = StoreSearch()

    def joined(docs: Any) -> str:
        return "\n\n".join(d.page_content for d in docs)

    def two_step(chat: Any, context_in: str = "system") -> Callable[[str], str]:  # the tutorial's two-step agent
        middleware = SpringRAGMiddleware(vector_store=search, k=2, context_in=context_in)
        agent = create_agent(chat, tools=[], middleware=[middleware])
        return lambda q: agent.invoke({"messages": [("user", q)]})["messages"][-1].content.strip()

    def given_context(chat: Any) -> Callable[[str], str]:  # prompt | model, the app passes the context in
        runnable = tutorial | chat | StrOutputParser()
        return lambda q: runnable.invoke({"context": joined(search.similarity_search(q)), "question": q}).strip()

    hub_prompt = ChatPromptTemplate.from_messages([("human", RLM_RAG_PROMPT)])

    def langgraph(chat: Any) -> Callable[[str], str]:  # LangGraph's RAG tutorial: retrieve and generate nodes
        class State(TypedDict):
            question: str
            context: list[Any]
            answer: str

        def retrieve(state: State) -> dict[str, Any]:
            return {"context": search.similarity_search(state["question"])}

        def generate(state: State) -> dict[str, Any]:
            messages = hub_prompt.invoke({"question": state["question"], "context": joined(state["context"])})
            return {"answer": chat.invoke(messages).content}

        graph = StateGraph(State).add_sequence([retrieve, generate])
        graph.add_edge(START, "retrieve")
        compiled = graph.compile()
        return lambda q: compiled.invoke({"question": q})["answer"].strip()

    def answer_step(chat: Any) -> Callable[[str], str]:  # agentic RAG: the step that answers from the tool's result
        @tool(response_format="content_and_artifact")
        def retrieve_context(query: str) -> tuple[str, list[Any]]:
            """Retrieve information to help answer a query."""
            docs = search.similarity_search(query, k=2)
            return "\n\n".join(f"Source: {doc.metadata}\nContent: {doc.page_content}" for doc in docs), docs

        def answer(q: str) -> str:
            call = {"name": "retrieve_context", "args": {"query": q}, "id": "call_retrieve", "type": "tool_call"}
            messages = [HumanMessage(q), AIMessage("", tool_calls=[call]), retrieve_context.invoke(call)]
            return chat.invoke(messages).content.strip()

        return answer

    return {
        "LangChain 1.x agentic RAG answer step (ToolMessage), plain model": answer_step(chat_plain),
        "LangChain 1.x agentic RAG answer step (ToolMessage), automatic": answer_step(chat_auto),
        "LangChain 1.x two-step agent (SpringRAGMiddleware), plain model": two_step(chat_plain),
        "LangChain 1.x two-step agent (SpringRAGMiddleware), automatic": two_step(chat_auto),
        "LangChain 1.x two-step agent (SpringRAGMiddleware, context in the user turn), plain model": two_step(
            chat_plain, "user"),
        "LangChain 1.x two-step agent (SpringRAGMiddleware, context in the user turn), automatic": two_step(
            chat_auto, "user"),
        "LangChain prompt | model given its context, automatic": given_context(chat_auto),
        "LangGraph retrieve/generate (rlm/rag-prompt), plain model": langgraph(chat_plain),
        "LangGraph retrieve/generate (rlm/rag-prompt), automatic": langgraph(chat_auto),
    }


class Predictions:
    """Saved answers by (configuration, question id), appended as they come."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.saved: dict[tuple[str, str], str] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                item = json.loads(line)
                self.saved[(item["config"], item["id"])] = item["prediction"]

    def get(self, config: str, question_id: str) -> str | None:
        return self.saved.get((config, question_id))

    def put(self, config: str, question_id: str, prediction: str) -> str:
        self.saved[(config, question_id)] = prediction
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"config": config, "id": question_id, "prediction": prediction}) + "\n")
        return prediction


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n| configuration | EM | F1 |\n|---|---:|---:|")
    for row in results:
        print(f"| {row['config']} | {row['em']:.1f} | {row['f1']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())

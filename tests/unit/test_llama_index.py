"""LlamaIndex integration on real LlamaIndex objects: SpringLLM, templates, query engines, retriever, postprocessor.

The LLM is the tiny random Llama (its answers are noise; what is checked is what reaches the model and how).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage
from llama_index.llms.spring import (
    SpringLLM,
    spring_query_engine,
    spring_refine_template,
    spring_summary_template,
    spring_text_qa_template,
)
from llama_index.postprocessor.spring import ParametricAdapterPostprocessor, adapter_ids
from llama_index.retrievers.spring import SpringRetriever

from spring_core import MarkerError, SpringModel, VirtualTokens
from spring_core.data import read_corpus, sample_corpus_path
from spring_core.prompts import marker_block, parse_prompt

QUESTION = "Who is Harvard University named after?"
BLOCK_PROMPT = "[1] Harvard is named after John Harvard.\n\n" + marker_block(8) + f"Question: {QUESTION}\nAnswer:"


@pytest.fixture(scope="module")
def tokens(tiny):
    return VirtualTokens.random(tiny[0], n=8, seed=3)


@pytest.fixture()
def llm(tiny, tokens):
    return SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=6)


@pytest.fixture(scope="module")
def corpus_rows():
    rows = read_corpus(sample_corpus_path())
    return [r for r in rows if r["id"].startswith("squad-Harvard_University-")][:4] + [
        r for r in rows if r["id"].startswith("squad-Doctor_Who-")
    ][:4]


@pytest.fixture(scope="module")
def corpus_file(corpus_rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in corpus_rows))
    return path


# ----- SpringLLM ------------------------------------------------------------------------------------------------


def test_prompts_with_the_block_get_the_tokens_and_without_it_the_base_model(llm, tiny):
    with_block = llm.complete(BLOCK_PROMPT)
    assert with_block.raw["usage"]["virtual_tokens"] == 8
    assert with_block.text == llm.spring_model.generate_from_prompt(BLOCK_PROMPT, max_new_tokens=6).text
    plain_prompt = BLOCK_PROMPT.replace(marker_block(8), "")
    plain = llm.complete(plain_prompt)
    assert plain.raw["usage"]["virtual_tokens"] == 0
    assert plain.text == SpringModel(*tiny).generate_from_prompt(plain_prompt, max_new_tokens=6).text


def test_k_resizes_the_block_per_llm_and_per_call(tiny, tokens, llm):
    assert llm.complete(BLOCK_PROMPT, k=3).raw["usage"]["virtual_tokens"] == 3
    fixed = SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=6, k=0)
    off = fixed.complete(BLOCK_PROMPT)
    assert off.raw["usage"]["virtual_tokens"] == 0
    assert off.text == llm.complete(BLOCK_PROMPT.replace(marker_block(8), "")).text
    with pytest.raises(MarkerError, match="out of range"):
        llm.complete(BLOCK_PROMPT, k=9)


def test_per_call_settings_are_honoured_and_unknown_ones_refused(llm):
    short = llm.complete(BLOCK_PROMPT, max_new_tokens=2)
    assert short.raw["usage"]["completion_tokens"] <= 2
    full = llm.complete(BLOCK_PROMPT)
    if len(full.text) > 3:
        stopped = llm.complete(BLOCK_PROMPT, stop=[full.text[1:3]])
        assert stopped.text == full.text[: full.text.index(full.text[1:3])]
    seeded = [llm.complete(BLOCK_PROMPT, temperature=1.0, seed=5).text for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(TypeError, match="unknown keyword argument"):
        llm.complete(BLOCK_PROMPT, max_tokens=3)


def test_generate_kwargs_are_defaults_that_calls_override(tiny, tokens):
    llm = SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=6, generate_kwargs={"max_new_tokens": 2})
    assert llm.complete(BLOCK_PROMPT).raw["usage"]["completion_tokens"] <= 2
    assert llm.complete(BLOCK_PROMPT, max_new_tokens=6).raw["usage"]["completion_tokens"] > 2


def test_usage_counts_match_the_model(llm):
    response = llm.complete(BLOCK_PROMPT)
    expected = llm.spring_model.generate_from_prompt(BLOCK_PROMPT, max_new_tokens=6).usage
    usage = response.raw["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["virtual_tokens"]) == (
        expected.prompt_tokens, expected.completion_tokens, expected.virtual_tokens)
    assert usage["total_tokens"] == expected.total_tokens
    assert response.additional_kwargs == usage


def test_stream_complete_gives_true_deltas_and_usage_at_the_end(llm):
    full = llm.complete(BLOCK_PROMPT)
    chunks = list(llm.stream_complete(BLOCK_PROMPT))
    assert len([c for c in chunks if c.delta]) > 1
    assert "".join(c.delta for c in chunks) == full.text
    assert chunks[-1].text == full.text and chunks[-1].raw["usage"] == full.raw["usage"]


def test_chat_uses_the_chat_template(llm, tiny):
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hello there")]
    rendered = tiny[1].apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert llm.chat(messages).message.content == llm.complete(rendered, formatted=True).text
    assert "".join(r.delta for r in llm.stream_chat(messages)) == llm.chat(messages).message.content


def test_chat_layout_wraps_completions_in_a_user_turn(tiny, tokens):
    chat_llm = SpringLLM(spring_model=SpringModel(*tiny, tokens, layout="chat"), max_new_tokens=4)
    assert chat_llm.prompt_layout == "chat"
    wrapped = chat_llm.completion_to_prompt(BLOCK_PROMPT)
    assert wrapped.startswith("<|im_start|>user\n") and wrapped.endswith("<|im_start|>assistant\n")
    assert chat_llm.complete(BLOCK_PROMPT).text == chat_llm.complete(wrapped, formatted=True).text


def test_metadata_reads_the_model(llm):
    assert llm.metadata.context_window == 2048 and llm.metadata.num_output == 6
    assert llm.metadata.model_name == llm.spring_model.name and not llm.metadata.is_chat_model


def test_async_calls_do_not_block_the_event_loop(llm):
    async def scenario():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        ticking = asyncio.create_task(ticker())
        response = await llm.acomplete(BLOCK_PROMPT, max_new_tokens=6)
        chunks = [chunk async for chunk in await llm.astream_complete(BLOCK_PROMPT, max_new_tokens=6)]
        chat = await llm.achat([ChatMessage(role="user", content="Hi")])
        chat_chunks = [c async for c in await llm.astream_chat([ChatMessage(role="user", content="Hi")])]
        done.set()
        await ticking
        return ticks, response, chunks, chat, chat_chunks

    ticks, response, chunks, chat, chat_chunks = asyncio.run(scenario())
    assert ticks > 5  # the loop kept running while the model generated in a worker thread
    assert response.text == llm.complete(BLOCK_PROMPT, max_new_tokens=6).text
    assert "".join(c.delta for c in chunks) == response.text
    assert "".join(c.delta for c in chat_chunks) == chat.message.content


# ----- templates and query engines ------------------------------------------------------------------------------


def test_templates_put_context_then_markers_then_question():
    qa = spring_text_qa_template(3).format(context_str="CTX", query_str="Q?")
    assert qa == "CTX\n\n[r1][r2][r3]Question: Q?\nAnswer:"
    refine = spring_refine_template(2).format(context_msg="NEW", query_str="Q?", existing_answer="OLD")
    assert refine.index("NEW") < refine.index("OLD") < refine.index("[r1][r2]Question: Q?")
    assert spring_summary_template(1, "chat").format(context_str="S", query_str="Q?") == "S\n\n[r1]Question: Q?"


def sent_prompts(recorder):
    assert recorder.prompts, "no LLM call was recorded"
    return recorder.prompts


def assert_block_right_before_question(sm, prompt, k):
    assert prompt.count("[r1]") == 1, prompt
    parts = parse_prompt(prompt, n=sm.n)
    assert parts.k == k and parts.after.startswith(f"Question: {QUESTION}")
    assert parts.before.strip(), "the context must come before the block"
    ids = sm.encode(parts)
    virtual = [i for i, t in enumerate(ids) if t >= sm.vocab_rows]
    assert virtual == list(range(virtual[0], virtual[0] + k))
    assert sm.tokenizer.decode(ids[virtual[-1] + 1:]).startswith(f"Question: {QUESTION}")
    assert sm.tokenizer.decode(ids[: virtual[0]]).rstrip().endswith(parts.before.rstrip()[-20:])


@pytest.mark.parametrize("mode", ["compact", "refine", "tree_summarize"])
def test_every_response_mode_sends_the_block_once_per_call_right_before_the_question(
        mode, llm, corpus_file, tmp_path, recorder):
    retriever = SpringRetriever.from_corpus(corpus_file, tmp_path / "bm25", backend="bm25", similarity_top_k=4)
    response = spring_query_engine(retriever, llm, k=5, response_mode=mode).query(QUESTION)
    prompts = sent_prompts(recorder)
    assert isinstance(response.response, str)
    if mode == "refine":
        assert len(prompts) == 4  # one call per retrieved passage
    for prompt in prompts:
        assert_block_right_before_question(llm.spring_model, prompt, k=5)


def test_query_engine_without_tokens_sends_no_markers(tiny, corpus_file, tmp_path, recorder):
    plain = SpringLLM(spring_model=SpringModel(*tiny), max_new_tokens=4)
    retriever = SpringRetriever.from_corpus(corpus_file, tmp_path / "bm25", backend="bm25", similarity_top_k=2)
    spring_query_engine(retriever, plain).query(QUESTION)
    assert all("[r" not in prompt for prompt in sent_prompts(recorder))


def test_vector_store_index_over_chroma_with_our_llm(llm, corpus_rows, tmp_path, recorder):
    import chromadb
    from chromadb.config import Settings
    from llama_index.core import StorageContext
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.chroma import ChromaVectorStore

    from spring_core.retrieval.embedders import _bundled_minilm_path

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))
    store = ChromaVectorStore(chroma_collection=client.get_or_create_collection("passages"))
    index = VectorStoreIndex.from_documents(
        [Document(text=r["text"], metadata={"title": r["title"]}, id_=r["id"]) for r in corpus_rows],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=HuggingFaceEmbedding(model_name=_bundled_minilm_path()),
    )
    response = spring_query_engine(index, llm, k=4, similarity_top_k=2).query(QUESTION)
    assert response.source_nodes[0].node.metadata["title"] == "Harvard University"
    for prompt in sent_prompts(recorder):
        assert_block_right_before_question(llm.spring_model, prompt, k=4)


# ----- retriever and postprocessor ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["dense", "bm25"])
def test_spring_retriever_returns_scored_nodes_with_only_the_title_visible(backend, corpus_file, tmp_path):
    retriever = SpringRetriever.from_corpus(corpus_file, tmp_path / "store", backend=backend, similarity_top_k=3)
    nodes = retriever.retrieve(QUESTION)
    assert len(nodes) == 3 and nodes[0].node.node_id == "squad-Harvard_University-0"
    assert nodes[0].score >= nodes[1].score >= nodes[2].score
    llm_text = nodes[0].node.get_content(metadata_mode="llm")
    assert llm_text.startswith("title: Harvard University") and "passage_id" not in llm_text
    assert [n.node.node_id for n in asyncio.run(retriever.aretrieve(QUESTION))] == [n.node.node_id for n in nodes]
    reopened = SpringRetriever(tmp_path / "store", similarity_top_k=3)
    assert [n.node.node_id for n in reopened.retrieve(QUESTION)] == [n.node.node_id for n in nodes]


def test_retriever_refuses_bad_top_k(corpus_file, tmp_path):
    SpringRetriever.from_corpus(corpus_file, tmp_path / "s", backend="bm25")
    with pytest.raises(ValueError, match="similarity_top_k"):
        SpringRetriever(tmp_path / "s", similarity_top_k=0)


def test_adapter_postprocessor_tags_without_dropping_or_mutating(corpus_file, tmp_path):
    nodes = SpringRetriever.from_corpus(corpus_file, tmp_path / "s", backend="bm25", similarity_top_k=4).retrieve(
        QUESTION)
    known = {nodes[1].node.node_id, nodes[3].node.node_id}
    tagged = ParametricAdapterPostprocessor(known_ids=known).postprocess_nodes(nodes)
    assert [n.node.node_id for n in tagged] == [n.node.node_id for n in nodes]
    assert adapter_ids(tagged) == [nodes[1].node.node_id, nodes[3].node.node_id]
    assert all("adapter_id" not in n.node.metadata for n in nodes)  # the originals are untouched
    assert "adapter_id" not in tagged[1].node.get_content(metadata_mode="llm")
    everything = ParametricAdapterPostprocessor().postprocess_nodes(nodes)
    assert adapter_ids(everything) == [n.node.node_id for n in nodes]
    assert ParametricAdapterPostprocessor(known_ids=set()).postprocess_nodes(nodes) == nodes


def test_adapter_postprocessor_in_a_query_engine_keeps_tags_out_of_the_prompt(llm, corpus_file, tmp_path, recorder):
    retriever = SpringRetriever.from_corpus(corpus_file, tmp_path / "s", backend="bm25", similarity_top_k=2)
    engine = spring_query_engine(retriever, llm, k=2, node_postprocessors=[ParametricAdapterPostprocessor()])
    response = engine.query(QUESTION)
    assert adapter_ids(response.source_nodes) == [n.node.node_id for n in response.source_nodes]
    assert all("adapter_id" not in p and "passage_id" not in p for p in sent_prompts(recorder))


# ----- decoding modes: separate nodes, read one by one ---------------------------------------------------------

PASSAGES = ["Harvard is named after John Harvard.", "Doctor Who is a television programme."]


@pytest.mark.parametrize("mode", ["concat", "rag-token", "rag-sequence", "rag-sequence-fast"])
def test_answer_reads_the_passages_with_the_llms_mode(mode, tiny, tokens):
    llm = SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=5, mode=mode, k=3)
    response = llm.answer(QUESTION, PASSAGES, [2.0, 0.5])
    expected = llm.spring_model.generate(QUESTION, PASSAGES, 3, mode=mode, scores=[2.0, 0.5], max_new_tokens=5)
    assert response.text == expected.text
    assert response.raw["usage"]["virtual_tokens"] == (3 if mode == "concat" else 6)  # k per passage prompt
    per_call = llm.answer(QUESTION, PASSAGES, [2.0, 0.5], mode="concat", k=1)
    assert per_call.raw["usage"]["virtual_tokens"] == 1


def test_answer_refuses_unknown_modes_and_a_mix_of_scored_and_unscored_passages(tiny, tokens, llm):
    from spring_core.decoding import DecodingError

    with pytest.raises(ValueError, match="unknown mode 'beam'"):
        SpringLLM(spring_model=SpringModel(*tiny, tokens), mode="beam")
    with pytest.raises(DecodingError, match="passage 1 has no retriever score"):
        llm.answer(QUESTION, PASSAGES, [1.0, None], mode="rag-token")
    with pytest.raises(TypeError, match="unknown keyword argument"):
        llm.answer(QUESTION, PASSAGES, beams=2)
    unscored = llm.answer(QUESTION, PASSAGES, [None, None], mode="rag-token", k=2).text
    assert unscored == llm.spring_model.generate(QUESTION, PASSAGES, 2, mode="rag-token", max_new_tokens=6).text


@pytest.mark.parametrize("mode", ["rag-token", "rag-sequence"])
def test_query_engine_with_a_marginal_mode_hands_over_each_node_and_its_score(mode, tiny, tokens, corpus_file,
                                                                               tmp_path, recorder):
    llm = SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=5, mode=mode)
    retriever = SpringRetriever.from_corpus(corpus_file, tmp_path / "bm25", backend="bm25", similarity_top_k=3)
    engine = spring_query_engine(retriever, llm, k=4)
    response = engine.query(QUESTION)
    nodes = response.source_nodes
    texts = [n.node.get_content(metadata_mode="llm") for n in nodes]
    expected = llm.spring_model.generate(QUESTION, texts, 4, mode=mode, scores=[n.score for n in nodes],
                                         max_new_tokens=5)
    assert len(nodes) == 3 and response.response == expected.text
    assert recorder.prompts == [QUESTION]  # one call with the question, no packed prompt
    streamed = spring_query_engine(retriever, llm, k=4, streaming=True).query(QUESTION)
    assert "".join(streamed.response_gen) == expected.text
    answered = asyncio.run(engine.aquery(QUESTION))
    assert answered.response == expected.text
    with pytest.raises(ValueError, match="packs the nodes into one prompt"):
        spring_query_engine(retriever, llm, response_mode="compact")


def test_a_packed_prompt_runs_as_concat_and_says_so_once(tiny, tokens):
    llm = SpringLLM(spring_model=SpringModel(*tiny, tokens), max_new_tokens=4, mode="rag-token")
    with pytest.warns(UserWarning, match="runs as 'concat'"):
        first = llm.complete(BLOCK_PROMPT)
    assert first.text == llm.spring_model.generate_from_prompt(BLOCK_PROMPT, max_new_tokens=4).text
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        llm.complete(BLOCK_PROMPT)

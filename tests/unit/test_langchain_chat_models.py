"""``ChatSpring`` on the tiny random Llama: rendering, usage, streaming, stop strings, k, guards, async."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
import warnings

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from langchain_spring import SPRING_RAG_CHAT_PROMPT, ChatSpring, SpringRetriever, format_docs
from langchain_spring.chat_models import message_turns, render_messages
from spring_core import SpringModel, VirtualTokens
from spring_core.errors import InputError, OptionError, SpringError
from spring_core.prompts.layouts import build_prompt
from spring_core.retrieval import create_store
from spring_core.types import PromptParts

PASSAGES = [{"title": "Hamlet", "text": "Hamlet is a play by William Shakespeare."}]
QUESTION = "Who wrote Hamlet?"
# The hub's rlm/rag-prompt layout: question before context.
HUB_STYLE = "Use the following context to answer.\nQuestion: {question}\nContext: {context}\nAnswer:"


@pytest.fixture(scope="module")
def retriever(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hamlet-store")
    create_store(folder, "bm25").add([{"id": "h1", **PASSAGES[0]}, {"id": "p1", "title": "Paris",
                                                                      "text": "Paris is the capital of France."}])
    return SpringRetriever(store=str(folder), k=1)


@pytest.fixture()
def tokens(tiny):
    return VirtualTokens.random(tiny[0], n=8, seed=1)


@pytest.fixture()
def sm(tiny, tokens):
    return SpringModel(*tiny, tokens)


@pytest.fixture()
def chat(sm):
    return ChatSpring(spring_model=sm, max_tokens=12)


def rag_chain(retriever, model, prompt=SPRING_RAG_CHAT_PROMPT):
    """The usual LCEL RAG chain, ending in the model's message."""
    return {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | model


def spring_layout(sm, k: int):
    """What SPRING_RAG_CHAT_PROMPT with the Hamlet passage renders to, the block placed by hand."""
    return build_prompt(QUESTION, PASSAGES, k, layout="chat", tokenizer=sm.tokenizer)


def rendered(sm, messages) -> str:
    return render_messages(message_turns(messages), sm.tokenizer).plain_text()


def stop_inside(text: str, start: int) -> str:
    """A two-character stop string of word characters whose first occurrence in ``text`` is at or after ``start``."""
    for i in range(start, len(text) - 1):
        piece = text[i:i + 2]
        if piece.isalnum() and text.index(piece) == i:
            return piece
    pytest.skip("the random model's answer has no usable stop string")


# ----- prompt rendering ------------------------------------------------------------------------------------


def test_messages_go_through_the_chat_template(sm):
    messages = [SystemMessage("Be brief."), HumanMessage("hi"), AIMessage("hello"), HumanMessage("bye")]
    expected = sm.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert rendered(sm, messages) == expected
    assert expected.endswith("<|im_start|>assistant\n")


def test_without_a_chat_template_messages_become_a_transcript(tiny):
    model, tokenizer = tiny
    plain_tokenizer = copy.deepcopy(tokenizer)
    plain_tokenizer.chat_template = None
    messages = [SystemMessage("Be brief."), HumanMessage("hi"), AIMessage("hello"), HumanMessage("bye")]
    prompt = render_messages(message_turns(messages), plain_tokenizer).plain_text()
    assert prompt == "System: Be brief.\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
    chat = ChatSpring(spring_model=SpringModel(model, plain_tokenizer), max_tokens=4)
    out = chat.invoke(messages)
    assert out.usage_metadata["input_tokens"] == len(plain_tokenizer(prompt)["input_ids"])


def test_a_rag_chain_gets_the_block_between_its_context_and_question(chat, sm, retriever):
    out = rag_chain(retriever, chat).invoke(QUESTION)
    reference = sm.generate_from_prompt(spring_layout(sm, 8), max_new_tokens=12)
    assert out.content == reference.text
    usage = reference.usage
    assert out.usage_metadata == {
        "input_tokens": usage.prompt_tokens + usage.virtual_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "input_token_details": {"virtual": 8},
    }
    assert out.response_metadata["model_name"] == sm.name
    assert out.response_metadata["finish_reason"] in ("stop", "length")


def test_a_call_without_retrieval_is_the_base_model_whatever_its_text(chat, sm, tiny):
    messages = [HumanMessage(f"[1] {PASSAGES[0]['text']}\n\n[r1][r2]Question: {QUESTION}")]
    out = chat.invoke(messages)
    assert out.usage_metadata["input_token_details"] == {"virtual": 0}
    assert out.content == SpringModel(*tiny).generate_from_prompt(render_messages(message_turns(messages),
                                                                                  sm.tokenizer),
                                                                  max_new_tokens=12).text


# ----- streaming and async ---------------------------------------------------------------------------------


def test_stream_yields_deltas_that_join_to_the_invoke_answer(chat, retriever):
    answer = rag_chain(retriever, chat).invoke(QUESTION)
    chunks = list(rag_chain(retriever, chat).stream(QUESTION))
    assert len(chunks) > 2
    assert "".join(c.content for c in chunks) == answer.content
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata == answer.usage_metadata  # exact counts, from the stream's own result
    assert last.response_metadata == answer.response_metadata
    assert sum(bool(c.usage_metadata) for c in chunks) == 1
    streaming = ChatSpring(spring_model=chat.spring, max_tokens=12, streaming=True)
    streamed_invoke = rag_chain(retriever, streaming).invoke(QUESTION)
    assert (streamed_invoke.content, streamed_invoke.usage_metadata) == (answer.content, answer.usage_metadata)


def test_async_calls_match_the_sync_ones(chat, retriever):
    answer = rag_chain(retriever, chat).invoke(QUESTION)
    assert answer.usage_metadata["input_token_details"] == {"virtual": 8}

    async def scenario():
        first = await rag_chain(retriever, chat).ainvoke(QUESTION)
        chunks = [chunk async for chunk in rag_chain(retriever, chat).astream(QUESTION)]
        return first, chunks

    first, chunks = asyncio.run(scenario())
    assert first.content == answer.content and first.usage_metadata == answer.usage_metadata
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == answer.content


def test_leaving_an_async_stream_early_is_clean(chat, retriever):
    async def scenario():
        async for chunk in rag_chain(retriever, chat).astream(QUESTION):
            return chunk.content
        return None

    assert asyncio.run(scenario()) is not None
    assert rag_chain(retriever, chat).invoke(QUESTION).content  # the model is free again


# ----- settings --------------------------------------------------------------------------------------------


def test_stop_from_the_constructor_and_per_call_are_merged(sm):
    full = ChatSpring(spring_model=sm, max_tokens=24).invoke(QUESTION).content
    late = stop_inside(full, 8)
    early = stop_inside(full, 2)
    assert full.index(early) < full.index(late)

    by_constructor = ChatSpring(spring_model=sm, max_tokens=24, stop=[late])
    assert by_constructor.invoke(QUESTION).content == full[: full.index(late)]
    assert by_constructor.invoke(QUESTION, stop=[early]).content == full[: full.index(early)]
    assert "".join(c.content for c in by_constructor.stream(QUESTION, stop=[early])) == full[: full.index(early)]
    assert by_constructor._get_ls_params(stop=[early])["ls_stop"] == [late, early]


def test_per_call_settings_are_honoured_and_unknown_ones_refused(chat):
    assert chat.invoke(QUESTION, max_tokens=3).usage_metadata["output_tokens"] <= 3
    sampled = [chat.invoke(QUESTION, temperature=1.0, seed=7).content for _ in range(2)]
    assert sampled[0] == sampled[1]
    with pytest.raises(OptionError, match="max_new_tokens"):
        chat.invoke(QUESTION, max_new_tokens=3)
    with pytest.raises(OptionError, match="cannot switch"):
        chat.invoke(QUESTION, model="another-model")
    assert chat.invoke(QUESTION, model=chat.model, max_tokens=2).content is not None


def test_k_sets_the_block_in_the_constructor_and_per_call(sm, retriever):
    chat = ChatSpring(spring_model=sm, max_tokens=6, k=3)
    assert rag_chain(retriever, chat).invoke(QUESTION).usage_metadata["input_token_details"] == {"virtual": 3}
    plain = rag_chain(retriever, chat.bind(k=0)).invoke(QUESTION)
    assert plain.usage_metadata["input_token_details"] == {"virtual": 0}
    assert plain.content == sm.generate_from_prompt(spring_layout(sm, 0), max_new_tokens=6).text


def test_timeout_stops_generation_and_a_generous_one_changes_nothing(sm):
    answer = ChatSpring(spring_model=sm, max_tokens=40).invoke(QUESTION)
    assert answer.content  # the model says something, so a tiny deadline is hit mid-answer
    with pytest.raises(TimeoutError, match="timeout"):
        ChatSpring(spring_model=sm, max_tokens=40, timeout=1e-9).invoke(QUESTION)
    with pytest.raises(TimeoutError, match="timeout"):
        list(ChatSpring(spring_model=sm, max_tokens=40, timeout=1e-9).stream(QUESTION))
    relaxed = ChatSpring(spring_model=sm, max_tokens=40, timeout=600).invoke(QUESTION)
    assert (relaxed.content, relaxed.usage_metadata) == (answer.content, answer.usage_metadata)


# ----- placement in other people's prompts ------------------------------------------------------------------


def test_a_question_first_prompt_gets_the_block_after_the_context_and_logs_it_once(chat, sm, retriever, caplog):
    """rlm/rag-prompt (LangGraph's RAG tutorial) asks first: that works, so it is logged at INFO, never warned."""
    prompt = ChatPromptTemplate.from_messages([("human", HUB_STYLE)])
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="langchain_spring"):
        warnings.simplefilter("error")
        out = rag_chain(retriever, chat, prompt).invoke(QUESTION)
        rag_chain(retriever, chat, prompt).invoke(QUESTION)
    assert out.usage_metadata["input_token_details"] == {"virtual": 8}
    assert [r.getMessage() for r in caplog.records].count(
        "this RAG prompt states the question before the context, an order SPRING's tokens were not trained on; the "
        "block goes right after the context and the question is asked again after it (context, block, question, as "
        "SPRING reads them)") == 1


def test_a_question_first_prompt_reads_context_block_question_and_its_answer_cue(chat, sm):
    """The question is asked again right after the block (SPRING's order); without a block the prompt is the
    app's own, byte for byte."""
    context = PASSAGES[0]["text"]
    messages = ChatPromptTemplate.from_messages([("human", HUB_STYLE)]).invoke(
        {"question": QUESTION, "context": context}).to_messages()
    inputs = {"rag_inputs": {"question": QUESTION, "context": context}}
    parts = chat._chat_request(messages, None, inputs).prompt
    assert parts.k == 8 and parts.before.endswith(f"Question: {QUESTION}\nContext: {context}\n")
    assert parts.after == f"{QUESTION}\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    plain = chat._chat_request(messages, None, {**inputs, "k": 0}).prompt
    assert plain == render_messages(message_turns(messages), sm.tokenizer)


def test_context_in_the_system_message_puts_the_block_before_the_last_human_turn(sm, retriever):
    prompt = ChatPromptTemplate.from_messages([("system", "Answer from these notes:\n\n{context}"),
                                               ("human", "{question}")])
    chat = ChatSpring(spring_model=sm, max_tokens=5, k=4)
    out = (rag_chain(retriever, chat, prompt) | StrOutputParser()).invoke(QUESTION)
    turns = [{"role": "system", "content": f"Answer from these notes:\n\n{format_docs(retriever.invoke(QUESTION))}"},
             {"role": "user", "content": QUESTION}]
    expected = render_messages(turns, sm.tokenizer).plain_text()
    user_turn = expected.rindex(QUESTION)
    parts = PromptParts(expected[:user_turn], 4, expected[user_turn:], special_tokens=False)
    assert out == sm.generate_from_prompt(parts, max_new_tokens=5).text


def test_a_history_that_asked_the_same_question_before_keeps_the_block_at_the_last_human_turn(sm, retriever):
    from operator import itemgetter

    from langchain_core.prompts import MessagesPlaceholder

    prompt = ChatPromptTemplate.from_messages([("system", "Answer from these notes:\n\n{context}"),
                                               MessagesPlaceholder("history"), ("human", "{question}")])
    chat = ChatSpring(spring_model=sm, max_tokens=5, k=4)
    chain = {"context": itemgetter("question") | retriever | format_docs, "question": itemgetter("question"),
             "history": itemgetter("history")} | prompt | chat | StrOutputParser()
    notes = f"Answer from these notes:\n\n{format_docs(retriever.invoke(QUESTION))}"
    for earlier in (QUESTION, f"{QUESTION} And when?"):
        history = [HumanMessage(earlier), AIMessage("Shakespeare.")]
        out = chain.invoke({"question": QUESTION, "history": history})
        turns = [{"role": "system", "content": notes},
                 {"role": "user", "content": earlier}, {"role": "assistant", "content": "Shakespeare."},
                 {"role": "user", "content": QUESTION}]
        expected = render_messages(turns, sm.tokenizer).plain_text()
        user_turn = expected.rindex(QUESTION)
        parts = PromptParts(expected[:user_turn], 4, expected[user_turn:], special_tokens=False)
        assert out == sm.generate_from_prompt(parts, max_new_tokens=5).text


def test_without_a_retriever_a_labelled_system_context_is_the_last_resort(sm):
    chat = ChatSpring(spring_model=sm, max_tokens=3, k=2)
    messages = [SystemMessage(f"Use the following context in your response:\n\n{PASSAGES[0]['text']}"),
                HumanMessage(QUESTION)]
    with pytest.warns(UserWarning, match="found by its label"):
        out = chat.invoke(messages)
    assert out.usage_metadata["input_token_details"] == {"virtual": 2}
    plain = chat.invoke([SystemMessage("You are a helpful assistant."), HumanMessage(QUESTION)])
    assert plain.usage_metadata["input_token_details"] == {"virtual": 0}


# ----- what is not supported, and construction -------------------------------------------------------------


def test_tool_calling_without_a_tool_template_is_refused_with_a_clear_message(chat):
    with pytest.raises(NotImplementedError, match="SpringRAGMiddleware"):  # a ToolCallingError (tests: _tools)
        chat.bind_tools([])
    assert chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="call-1")]).content  # a result is read
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([HumanMessage([{"type": "image", "url": "https://example.invalid/cat.png"}])])


def test_models_loaded_by_name_share_weights_and_load_tokens_from_a_folder(tiny_dir, tiny, tmp_path):
    VirtualTokens.random(tiny[0], n=8, seed=3).save(tmp_path / "tokens")
    first = ChatSpring(model=str(tiny_dir), tokens=str(tmp_path / "tokens"))
    second = ChatSpring(model=str(tiny_dir))
    assert first.spring.model is second.spring.model
    assert (first.spring.n, second.spring.n) == (8, 0)
    chat_layout = ChatSpring(model=str(tiny_dir), layout="chat").spring
    assert (chat_layout.layout, chat_layout.model) == ("chat", first.spring.model)


def test_tokens_next_to_a_shared_model_replace_its_own_without_copying(tiny, sm, retriever):
    other = VirtualTokens.random(tiny[0], n=4, seed=5)
    chat = ChatSpring(spring_model=sm, tokens=other, max_tokens=4)
    assert chat.spring.model is sm.model and chat.spring.tokens is other and sm.n == 8
    assert rag_chain(retriever, chat).invoke(QUESTION).usage_metadata["input_token_details"] == {"virtual": 4}
    assert chat._identifying_params["tokens"] != ChatSpring(spring_model=sm)._identifying_params["tokens"]


def test_token_counting_uses_the_models_own_tokenizer(chat, sm):
    text = "Who wrote Hamlet?"
    assert chat.get_token_ids(text) == sm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert chat.get_num_tokens(text) == len(chat.get_token_ids(text))
    assert chat.get_num_tokens_from_messages([HumanMessage(text)]) > 0


def test_construction_guards(sm):
    with pytest.raises(ValueError, match="already loaded"):
        ChatSpring(spring_model=sm, model_kwargs={"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="model_kwargs accepts"):
        ChatSpring(model_kwargs={"device_map": "auto"})
    with pytest.warns(UserWarning, match="ignores the argument"):
        ChatSpring(base_url="unused")
    assert ChatSpring(spring_model=sm).model == sm.name


def test_identifying_params_name_the_model_and_tell_token_tables_apart(tiny, sm):
    other = SpringModel(*tiny, VirtualTokens.random(tiny[0], n=8, seed=2))
    first, second = ChatSpring(spring_model=sm), ChatSpring(spring_model=other)
    assert first._identifying_params["model"] == sm.name
    assert first._identifying_params["tokens"] != second._identifying_params["tokens"]
    assert first._llm_type == "spring-chat"
    assert first._get_ls_params() == {
        "ls_provider": "spring", "ls_model_name": sm.name, "ls_model_type": "chat", "ls_temperature": 0.0,
        "ls_max_tokens": 256,
    }


def test_the_retrieval_tracker_is_registered_when_a_model_is_built_not_on_import(tiny_dir):
    folder = repr(str(tiny_dir))
    code = "\n".join([
        "import langchain_core.tracers.context as context",
        "before = len(context._configure_hooks)",
        "import langchain_spring",
        "assert len(context._configure_hooks) == before, 'importing registered a hook'",
        f"langchain_spring.ChatSpring(model={folder})",
        f"langchain_spring.SpringLLM(model={folder})",
        "assert len(context._configure_hooks) == before + 1, 'not registered exactly once'",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ----- the retrieval tracker: per-run state that other calls cannot evict ---------------------------------


def test_standalone_retriever_calls_on_another_thread_cannot_evict_a_running_chains_retrieval(chat, sm, retriever):
    """Issue #33: 1,030 retriever calls outside any chain, made while a chain sits between its retrieval and its
    model call, used to push the chain's record out of a 1,024-slot tracker (0 virtual tokens, no warning)."""
    import threading

    from langchain_core.runnables import RunnableLambda

    from langchain_spring.tracking import TRACKER

    alone = rag_chain(retriever, chat).invoke(QUESTION)
    retrieved, resume = threading.Event(), threading.Event()

    def wait_after_retrieval(context: str) -> str:
        retrieved.set()
        assert resume.wait(60), "the test never resumed the chain"
        return context

    chain = ({"context": retriever | format_docs | RunnableLambda(wait_after_retrieval),
              "question": RunnablePassthrough()} | SPRING_RAG_CHAT_PROMPT | chat)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(chain.invoke(QUESTION)))
    worker.start()
    try:
        assert retrieved.wait(60)
        during = TRACKER.tracked_runs()
        for _ in range(1030):
            retriever.invoke("Where is Paris?")  # a root run of its own, forgotten when it returns
        assert TRACKER.tracked_runs() - during < 10  # the chain's other branch may still be starting its runs
    finally:
        resume.set()
        worker.join(60)
    assert answers[0].usage_metadata["input_token_details"]["virtual"] == 8
    assert answers[0].content == alone.content


def test_the_tracker_forgets_every_run_once_it_ends(chat, retriever):
    from langchain_spring.tracking import TRACKER

    before = TRACKER.tracked_runs()
    rag_chain(retriever, chat).invoke(QUESTION)
    list(rag_chain(retriever, chat).stream(QUESTION))
    retriever.invoke(QUESTION)
    chat.invoke("hello")
    with pytest.raises(OptionError):  # a run that fails is forgotten too
        rag_chain(retriever, chat.bind(max_tokens="x")).invoke(QUESTION)
    assert TRACKER.tracked_runs() == before


def test_api_key_goes_to_a_server_backend_and_never_into_repr(sm, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    chat = ChatSpring(spring_model=sm, backend="http://127.0.0.1:9", api_key="s3cret")
    assert "s3cret" not in repr(chat) and "s3cret" not in str(chat.model_dump())
    assert chat.engine.backend.api_key == "s3cret"  # building the engine contacts no server
    monkeypatch.setenv("VLLM_API_KEY", "from-env")  # vLLM's own variable, as its server reads it
    assert ChatSpring(spring_model=sm, backend="http://127.0.0.1:9").engine.backend.api_key == "from-env"
    with pytest.raises(OptionError, match="api_key is sent to a server named by URL"):
        _ = ChatSpring(spring_model=sm, api_key="s3cret").engine  # in process there is no server to send it to


# ----- LangChain's LLM cache, stop strings, inputs that cannot be read ---------------------------------------


def test_the_global_llm_cache_never_serves_a_rag_chain_the_plain_models_answer_or_back(chat, retriever):
    """The cache key is the messages and the settings; the block is placed from the run's retrieval, which the key
    does not see. A plain call and a RAG chain that render the same messages got each other's answers."""
    from langchain_core.caches import InMemoryCache
    from langchain_core.globals import get_llm_cache, set_llm_cache

    prompt = ChatPromptTemplate.from_messages([("system", "Be helpful. {context}"), ("human", "{question}")])
    chain = rag_chain(retriever, chat, prompt)  # no context label: without a retrieval this is no RAG call
    plain = prompt.invoke({"context": format_docs(retriever.invoke(QUESTION)), "question": QUESTION}).to_messages()
    expected = {"plain": chat.invoke(plain), "rag": chain.invoke(QUESTION)}
    assert [expected[key].usage_metadata["input_token_details"]["virtual"] for key in expected] == [0, 8]
    previous = get_llm_cache()
    try:
        for order in (("plain", "rag"), ("rag", "plain")):
            set_llm_cache(InMemoryCache())
            answers = {key: chat.invoke(plain) if key == "plain" else chain.invoke(QUESTION) for key in order}
            for key in order:
                assert answers[key].content == expected[key].content
                assert answers[key].usage_metadata == expected[key].usage_metadata
        own = InMemoryCache()  # asked for explicitly, a cache is used
        cached = ChatSpring(spring_model=chat.spring_model, max_tokens=12, cache=own)
        assert cached.invoke(QUESTION).content == cached.invoke(QUESTION).content and len(own._cache) == 1
    finally:
        set_llm_cache(previous)


def test_a_stop_given_as_one_string_is_one_stop_string(sm):
    full = ChatSpring(spring_model=sm, max_tokens=24).invoke(QUESTION).content
    early, late = stop_inside(full, 2), stop_inside(full, 8)
    chat = ChatSpring(spring_model=sm, max_tokens=24, stop=late)  # as ChatOpenAI takes it
    assert chat.stop == [late] and chat.invoke(QUESTION).content == full[: full.index(late)]
    assert chat.invoke(QUESTION, stop=early).content == full[: full.index(early)]
    assert chat._call_settings("Question:", {})[0]["stop"] == [late, "Question:"]  # not its characters
    with pytest.raises(OptionError, match="stop"):
        chat.invoke(QUESTION, stop=3)


def test_inputs_and_call_arguments_it_cannot_use_raise_spring_errors(chat):
    from langchain_core.documents import Document

    documents = [Document("Hamlet is a play by William Shakespeare.")]
    with pytest.raises(InputError, match="empty conversation"):
        chat.invoke([])
    with pytest.raises(InputError, match="pass the question alone"):
        chat.invoke([SystemMessage("Be brief."), HumanMessage(QUESTION)], documents=documents)
    with pytest.raises(OptionError, match="unknown call argument.*foo"):
        chat.invoke(QUESTION, foo=1)
    with pytest.raises(OptionError, match="cannot switch to 'gpt-4o'"):
        chat.invoke(QUESTION, model="gpt-4o")
    with pytest.raises(SpringError, match="empty conversation"):
        list(chat.stream([]))


@pytest.mark.parametrize("kind", ["reasoning", "thinking"])
def test_another_providers_reasoning_in_an_ai_message_is_left_out_not_refused(chat, kind):
    reasoning = {"type": kind, kind: "The user greets me."}
    history = [HumanMessage("hi"), AIMessage([reasoning, {"type": "text", "text": "hello"}]), HumanMessage(QUESTION)]
    plain = [HumanMessage("hi"), AIMessage("hello"), HumanMessage(QUESTION)]
    assert message_turns(history) == message_turns(plain)
    assert chat.invoke(history).content == chat.invoke(plain).content
    with pytest.raises(InputError, match="text only"):  # a human message's reasoning block is still refused
        chat.invoke([HumanMessage([reasoning, {"type": "text", "text": QUESTION}])])
    with pytest.raises(InputError, match="image"):  # and an AI message's image too
        chat.invoke([AIMessage([{"type": "image", "url": "https://example.invalid/cat.png"}]), HumanMessage("hi")])

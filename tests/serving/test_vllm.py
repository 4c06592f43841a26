"""The vLLM backend against a real vLLM server (SmolLM2-135M-Instruct, float32, CPU): greedy answers equal the
transformers backend's for the same SPRING prompts, for prompts healed for a trailing space and for a merged
document adapter; streaming, async, stop, seed and usage; the model check; API keys; the errors of a server started
without spring-rag's flags; both integrations pointed at the server; Gemma 3 270M, whose embedding module scales
its rows, served and checked the same way. The servers (``vllm_server``) are started with ``spring-rag serve``'s own
command builder: the SPRING one (with an API key) once for the module, the plain and the Gemma one for their test."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import replace

import httpx
import pytest
import torch
from vllm_server import running_server

from spring_core import SpringModel, VirtualTokens
from spring_core.data import demo_qa_path
from spring_core.engine import Engine, Request
from spring_core.errors import ModelMismatchError, ServerAuthError, ServerError
from spring_core.model.healing import heal
from spring_core.options import generation_settings
from spring_core.parametric import AdapterStore, DocumentAdapters, LoraSpec
from spring_core.parametric.online import ParametricDocument
from spring_core.prompts.templates import TEMPLATES, render_template
from spring_core.serving import VLLMBackend, as_backend
from spring_core.serving.http import Deadline
from spring_core.serving.thin import is_thin, thin_spring_model

pytestmark = pytest.mark.vllm
TOKENS = "smollm2-135m-squad"
GREEDY_KW = {"max_new_tokens": 12}
GREEDY = generation_settings(GREEDY_KW)
API_KEY = "spring-rag-test-key"


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    """The SPRING server, which demands ``API_KEY``: its clients here send it from ``VLLM_API_KEY`` (the variable the
    server side reads too), set for this module only, as a deployment would."""
    with running_server(tmp_path_factory.mktemp("vllm") / "spring.log", api_key=API_KEY) as url, \
            pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_API_KEY", API_KEY)
        yield url


# Started for its one test and stopped after it: on 2 cores, a second server starting alongside the first tests
# slows every one of them down more than its own start costs.
@pytest.fixture
def plain_vllm_url(tmp_path):
    with running_server(tmp_path / "plain.log", plain=True) as url:
        yield url


@pytest.fixture
def gemma_url(tmp_path):
    """Gemma 3 270M on its own server, started for its one test (eager, no LoRA, no key)."""
    with running_server(tmp_path / "gemma.log", model="gemma3-270m", adapters=False) as url:
        yield url


@pytest.fixture(scope="module")
def rows():
    with open(demo_qa_path(), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle][:3]  # the third has a single passage


@pytest.fixture(scope="module")
def springs(smollm2):
    raw = SpringModel(*smollm2, tokens=TOKENS, layout="raw")
    return {"raw": raw, "chat": raw.with_tokens(TOKENS, layout="chat")}


@pytest.fixture(scope="module")
def backend(vllm_url):
    return VLLMBackend(vllm_url)


def passages(row):
    return [f"{p['title']}: {p['text']}" for p in row["passages"][:2]]


@pytest.mark.parametrize("layout", ["raw", "chat"])
def test_greedy_answers_equal_transformers_for_k_0_1_and_50(springs, backend, rows, layout):
    spring = springs[layout]
    prompts = [spring.prompt_parts(row["question"], passages(row), k) for row in rows[1:] for k in (0, 1, 50)]
    local = [spring.generate_from_prompt(p, **GREEDY_KW) for p in prompts]
    served = [backend.generate(spring, p, GREEDY) for p in prompts]
    assert [g.text for g in served] == [g.text for g in local]
    assert [g.usage.as_dict() for g in served] == [g.usage.as_dict() for g in local]
    assert [g.finish_reason for g in served] == [g.finish_reason for g in local]
    assert len({g.text for g in served}) > 1  # the block changes answers: the comparison is not vacuous


@pytest.mark.parametrize("layout", ["raw", "chat"])
def test_the_thin_client_answers_as_in_process_without_the_models_layers(springs, vllm_url, rows, layout):
    spring = springs[layout]
    thin = thin_spring_model("smollm2-135m", TOKENS, layout=layout, pool=None)  # checked against the fingerprint
    backend = VLLMBackend(vllm_url)  # its model check runs on the server: the probe as ids and as thin embeddings
    prompts = [spring.prompt_parts(row["question"], passages(row), k) for row in rows[1:] for k in (0, 1, 50)]
    assert [thin.encode(p) for p in prompts] == [spring.encode(p) for p in prompts]
    local = [spring.generate_from_prompt(p, **GREEDY_KW) for p in prompts]
    served = [backend.generate(thin, p, GREEDY) for p in prompts]
    assert [g.text for g in served] == [g.text for g in local]
    assert [g.usage.as_dict() for g in served] == [g.usage.as_dict() for g in local]
    assert [g.finish_reason for g in served] == [g.finish_reason for g in local]
    assert len({g.text for g in served}) > 1
    rows_read = thin.model.get_input_embeddings().rows
    assert rows_read.loaded < 1000 < rows_read.num_rows  # the rows its prompts used, not the table


@pytest.mark.parametrize("layout", ["raw", "chat"])
def test_a_split_request_sends_the_block_alone_and_answers_as_in_process(springs, vllm_url, rows, layout, capsys):
    spring = springs[layout]
    split, whole = VLLMBackend(vllm_url), VLLMBackend(vllm_url, split=False)
    prompts = [spring.prompt_parts(row["question"], passages(row), k) for row in rows for k in (1, 50)]
    local = [spring.generate_from_prompt(p, **GREEDY_KW) for p in prompts]
    served = [split.generate(spring, p, GREEDY) for p in prompts]
    assert split._split_ok[id(spring.model)]  # the server answered the split probe as the same ids
    assert [g.text for g in served] == [g.text for g in local]
    assert [g.usage for g in served] == [g.usage for g in local]
    assert [g.finish_reason for g in served] == [g.finish_reason for g in local]
    assert "".join(split.stream(spring, prompts[-1], GREEDY)) == local[-1].text

    async def deltas():
        return [d async for d in split.astream(spring, prompts[-1], GREEDY)]

    assert "".join(asyncio.run(deltas())) == local[-1].text
    sizes = {}
    for name, backend in (("split", split), ("whole", whole)):
        bodies = [backend._prepare(spring, p, GREEDY, None, stream=False, deadline=Deadline(None)).body
                  for p in prompts[1::2]]  # k = 50
        sizes[name] = sum(len(json.dumps(body)) for body in bodies) / len(bodies)
        assert ("messages" in bodies[0]) == (name == "split")
    with capsys.disabled():
        print(f"\n{layout}: bytes per k=50 request, whole-prompt embeddings {sizes['whole']:.0f}, split "
              f"{sizes['split']:.0f}")
    assert sizes["split"] < 0.5 * sizes["whole"]


def test_a_text_prompt_and_the_same_text_as_embeddings_answer_identically(springs, vllm_url, rows):
    spring = springs["raw"]
    as_embeds = VLLMBackend(vllm_url, embeds="always")
    as_ids = VLLMBackend(vllm_url)
    for row in rows:
        prompt = spring.prompt_parts(row["question"], passages(row), 0)
        assert as_embeds.generate(spring, prompt, GREEDY).text == as_ids.generate(spring, prompt, GREEDY).text


def test_a_merged_document_adapter_answers_as_the_hooked_update(smollm2, tmp_path, rows, vllm_url):
    model, tokenizer = smollm2
    spec = LoraSpec.for_model(model, rank=2, alpha=32)
    generator = torch.Generator().manual_seed(0)
    store = AdapterStore.create(tmp_path / "adapters", model, spec, base_model_name="smollm2-135m")
    store.add({doc: {f"{name}.lora_{part}": torch.randn(*shape, generator=generator) * 0.03
                     for name, (out_f, in_f) in spec.modules.items()
                     for part, shape in (("A", (2, in_f)), ("B", (out_f, 2)))} for doc in ("d1", "d2")})
    adapters = DocumentAdapters(store, model)
    spring = SpringModel(model, tokenizer, TOKENS)
    docs = [ParametricDocument("d1", passages(rows[2])[0], 1.0), ParametricDocument("d2", passages(rows[0])[0], 0.5)]
    request = Request(question=rows[2]["question"], documents=docs, k=10, knowledge="combine", settings=GREEDY)
    local = Engine(spring, adapters).generate(request)
    backend = VLLMBackend(vllm_url, adapter_dir=tmp_path / "served")
    served = Engine(spring, adapters, backend).generate(request)
    base = Engine(spring).generate(Request(question=request.question, documents=docs, k=10, settings=GREEDY))
    assert served.text == local.text
    assert local.text != base.text  # the adapter matters here
    names = backend.served_models()
    assert sum(name.startswith("spring-rag-") for name in names) == 1
    Engine(spring, adapters, backend).generate(request)  # the same documents reuse the loaded adapter
    assert backend.served_models() == names


def test_streaming_yields_deltas_whose_join_and_usage_equal_generate(springs, backend, rows):
    spring = springs["raw"]
    prompt = spring.prompt_parts(rows[0]["question"], passages(rows[0]), 50)
    stream = backend.stream(spring, prompt, generation_settings({"max_new_tokens": 16}))
    deltas = list(stream)
    whole = backend.generate(spring, prompt, generation_settings({"max_new_tokens": 16}))
    assert len(deltas) > 1 and "".join(deltas) == whole.text
    assert stream.result.usage == whole.usage and stream.result.usage.virtual_tokens == 50


def test_async_concurrent_requests_stop_strings_and_seeds(springs, backend, rows):
    spring = springs["raw"]
    prompts = [spring.prompt_parts(row["question"], passages(row), 50) for row in rows] * 3

    async def run():
        answers = await asyncio.gather(*(backend.agenerate(spring, p, GREEDY) for p in prompts))
        deltas = [d async for d in backend.astream(spring, prompts[0], GREEDY)]
        return answers, deltas

    answers, deltas = asyncio.run(run())
    one_by_one = [backend.generate(spring, p, GREEDY).text for p in prompts[:3]]
    assert [a.text for a in answers] == one_by_one * 3
    assert "".join(deltas) == one_by_one[0]
    sampled = [backend.generate(spring, prompts[0], replace(GREEDY, temperature=1.0, seed=s)).text
               for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]
    stop = one_by_one[0].strip().split()[0]
    cut = backend.generate(spring, prompts[0], replace(GREEDY, stop=(stop,)))
    assert stop not in cut.text and cut.finish_reason == "stop"


def test_a_prompt_healed_for_its_trailing_space_answers_as_transformers(springs, backend, rows):
    spring = springs["raw"]
    template = TEMPLATES["llamaindex-text-qa"]  # ends with "Answer: "
    prompts = [render_template(template, row["question"], passages(row), k)
               for row, k in zip(rows, (1, 50, 50), strict=True)]
    assert all(heal(p)[1] == " " for p in prompts)
    answers = {}
    for settings, some in ((GREEDY_KW, prompts), ({"max_new_tokens": 1}, prompts[:1])):  # 1 token: one request
        local = [spring.generate_from_prompt(p, **settings) for p in some]
        served = [backend.generate(spring, p, generation_settings(settings)) for p in some]
        assert [g.text for g in served] == [g.text for g in local]
        assert [g.usage for g in served] == [g.usage for g in local]
        assert [g.finish_reason for g in served] == [g.finish_reason for g in local]
        answers[settings["max_new_tokens"]] = [g.text for g in local]
    greedy = answers[GREEDY.max_new_tokens]
    stream = backend.stream(spring, prompts[-1], GREEDY)
    assert "".join(stream) == greedy[-1] and stream.result.usage.virtual_tokens == 50

    async def deltas():
        return [d async for d in backend.astream(spring, prompts[-1], GREEDY)]

    assert "".join(asyncio.run(deltas())) == greedy[-1]
    assert asyncio.run(backend.agenerate(spring, prompts[0], GREEDY)).text == greedy[0]


def test_a_client_with_another_model_is_refused_at_connect(tiny, vllm_url):
    with pytest.raises(ModelMismatchError, match="does not answer like this model") as caught:
        VLLMBackend(vllm_url).generate(SpringModel(*tiny), "Hello", GREEDY)
    assert "nan" not in str(caught.value)  # a token outside the tiny vocabulary is named as such
    with pytest.raises(ServerError, match="serves smollm2-135m, not 'llama-70b'"):
        VLLMBackend(vllm_url, model="llama-70b").generate(SpringModel(*tiny), "Hello", GREEDY)


def test_the_keyed_server_refuses_a_missing_or_wrong_key_and_takes_the_right_one(springs, vllm_url, monkeypatch):
    spring = springs["raw"]
    short = replace(GREEDY, max_new_tokens=2)
    monkeypatch.delenv("VLLM_API_KEY")
    with pytest.raises(ServerAuthError, match="needs an API key and none was sent .*401 Unauthorized"):
        VLLMBackend(vllm_url).generate(spring, "Hello", short)
    wrong = VLLMBackend(vllm_url, api_key="not-the-key")
    with pytest.raises(ServerAuthError, match=r"refused the API key sent \(from api_key=; 401"):
        "".join(wrong.stream(spring, "Hello", short))
    assert VLLMBackend(vllm_url, api_key=API_KEY).generate(spring, "Hello", short).usage.completion_tokens == 2
    assert as_backend(vllm_url, api_key=API_KEY, deadline=60).generate(spring, "Hello", short).text


def test_a_server_without_spring_flags_gets_errors_that_name_them(springs, tmp_path, rows, plain_vllm_url):
    spring = springs["raw"]
    with pytest.raises(ServerError, match="--enable-prompt-embeds"):
        VLLMBackend(plain_vllm_url).generate(spring, spring.prompt_parts(rows[0]["question"], passages(rows[0]), 5),
                                             GREEDY)
    backend = VLLMBackend(plain_vllm_url, check_model=False)
    assert backend.generate(spring, "Hello", replace(GREEDY, max_new_tokens=2)).usage.completion_tokens == 2
    model, tokenizer = spring.model, spring.tokenizer
    spec = LoraSpec.for_model(model, rank=1, alpha=1)
    store = AdapterStore.create(tmp_path / "a", model, spec, base_model_name="smollm2-135m")
    store.add({"d": {f"{n}.lora_{p}": torch.zeros(*((1, i) if p == "A" else (o, 1)))
                     for n, (o, i) in spec.modules.items() for p in "AB"}})
    with pytest.raises(ServerError, match="--enable-lora"):
        backend.adapter_name(SpringModel(model, tokenizer), DocumentAdapters(store, model), ["d"])


def test_both_integrations_answer_through_the_server_as_in_process(smollm2, vllm_url, rows):
    from langchain_core.prompts import ChatPromptTemplate
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.spring import SpringLLM

    from langchain_spring import ChatSpring

    row = rows[2]
    context = "\n\n".join(passages(row))
    template = PromptTemplate("Context:\n{context_str}\n\nQuery: {query_str}\nAnswer:")
    answers = {}
    for backend in (None, vllm_url):
        llm = SpringLLM(model=smollm2[0], tokenizer=smollm2[1], tokens=TOKENS, max_new_tokens=12, backend=backend)
        answers[("llama_index", backend)] = llm.predict(template, context_str=context, query_str=row["question"])
        chat = ChatSpring(model="smollm2-135m", tokens=TOKENS, max_tokens=12, backend=backend)
        prompt = ChatPromptTemplate.from_messages([("system", "Answer from this context:\n{context}"),
                                                   ("human", "{question}")])
        answers[("langchain", backend)] = (prompt | chat).invoke({"context": context, "question": row["question"]},
                                                                  ).content
    assert answers[("llama_index", vllm_url)] == answers[("llama_index", None)]
    assert answers[("langchain", vllm_url)] == answers[("langchain", None)]
    # ChatSpring named its model and SpringLLM got objects: with the server, the first is a thin client
    chat = ChatSpring(model="smollm2-135m", tokens=TOKENS, backend=vllm_url)
    assert is_thin(chat.spring.model) and not is_thin(llm.spring_model.model)


def test_both_integrations_carry_the_key_of_a_server_named_by_url(smollm2, vllm_url, monkeypatch):
    from llama_index.core.prompts import PromptTemplate
    from llama_index.llms.spring import SpringLLM

    from langchain_spring import ChatSpring

    monkeypatch.delenv("VLLM_API_KEY")
    template = PromptTemplate("Context:\n{context_str}\n\nQuery: {query_str}\nAnswer:")
    model, tokenizer = smollm2
    for key, expected in (("not-the-key", "refused the API key sent"), (API_KEY, None)):
        llm = SpringLLM(model=model, tokenizer=tokenizer, tokens=TOKENS, max_new_tokens=2, backend=vllm_url,
                        api_key=key)
        chat = ChatSpring(model="smollm2-135m", tokens=TOKENS, max_tokens=2, backend=vllm_url, api_key=key)
        calls = [lambda llm=llm: llm.predict(template, context_str="Paris is in France.", query_str="Where is Paris?"),
                 lambda chat=chat: chat.invoke("Where is Paris?").content]
        for call in calls:
            if expected is None:
                assert call()
            else:
                with pytest.raises(ServerAuthError, match=expected):
                    call()


def test_the_readme_serving_snippet_runs_against_the_server(vllm_url, tmp_path, monkeypatch, capsys):
    from readme_blocks import python_blocks

    blocks = python_blocks(server=True)
    assert [heading for heading, _ in blocks] == ["Serve on vLLM"]
    monkeypatch.chdir(tmp_path)
    code = blocks[0][1].replace('"http://127.0.0.1:8000"', repr(vllm_url))
    exec(compile(code, "README.md (Serve on vLLM)", "exec"), {})  # our own documentation
    printed = capsys.readouterr().out.splitlines()
    assert "Harvard" in printed[0] and len(printed) >= 2


GEMMA_PASSAGES = ["The Eiffel Tower is a wrought-iron tower in Paris, France.",
                  "Mount Fuji is the highest mountain in Japan."]
GEMMA_QUESTIONS = ["Where is the Eiffel Tower?", "What is the highest mountain in Japan?",
                   "Who built the Eiffel Tower?"]


def raw_completion(url: str, model: str, embeds: torch.Tensor) -> str:
    """A greedy completion of ``embeds`` sent as they are, without the backend."""
    buffer = io.BytesIO()
    torch.save(embeds.contiguous(), buffer)
    body = {"model": model, "prompt_embeds": base64.b64encode(buffer.getvalue()).decode(), "max_tokens": 8,
            "temperature": 0.0}
    return httpx.post(url + "/v1/completions", json=body, timeout=120).json()["choices"][0]["text"]


def test_gemma3_served_answers_equal_transformers_with_its_scaled_embeddings(gemma3, smollm2, gemma_url):
    model, tokenizer = gemma3
    block = VirtualTokens.from_text(model, n=8, tokenizer=tokenizer, text="Answer the question in one or two words.")
    spring = SpringModel(model, tokenizer, block)
    backend = VLLMBackend(gemma_url)  # the model check probes it as ids and as embeddings (spring.n > 0)
    prompts = [spring.prompt_parts(q, GEMMA_PASSAGES, k) for q in GEMMA_QUESTIONS[:2] for k in (0, 1, 8)]
    local = [spring.generate_from_prompt(p, **GREEDY_KW) for p in prompts]
    served = [backend.generate(spring, p, GREEDY) for p in prompts]
    assert [g.text for g in served] == [g.text for g in local]
    assert [g.usage for g in served] == [g.usage for g in local]
    assert [g.finish_reason for g in served] == [g.finish_reason for g in local]
    assert len({g.text for g in served}) > 3  # the block changes answers: the comparison is not vacuous
    # The thin client (tokenizer + rows read from the safetensors, scaled as the module scales them) answers the
    # same; its check (the probe as ids and as its embeddings, on the server) refuses the same rows left unscaled.
    thin = thin_spring_model("gemma3-270m", block, pool=None)
    assert [VLLMBackend(gemma_url).generate(thin, p, GREEDY).text for p in prompts] == [g.text for g in local]
    unscaled = thin_spring_model("gemma3-270m", block, pool=None)
    unscaled.model.get_input_embeddings().rows.scale = None
    with pytest.raises(ModelMismatchError, match="embedding rows are not the served model's"):
        VLLMBackend(gemma_url).generate(unscaled, prompts[0], GREEDY)
    as_embeds = VLLMBackend(gemma_url, embeds="always")
    assert [as_embeds.generate(spring, p, GREEDY).text for p in prompts[::3]] == [g.text for g in local[::3]]

    # What makes Gemma different: the embedding module multiplies its rows by sqrt(640). Those scaled rows answer
    # as the in-process model; the bare rows of the table do not (the negative control for the check above).
    ids = spring.encode(prompts[0])
    with torch.inference_mode():
        scaled = spring.embed(torch.tensor([ids]))[0]
        bare = model.get_input_embeddings().weight[ids]
    assert torch.allclose(scaled, bare * model.config.hidden_size ** 0.5)
    assert raw_completion(gemma_url, backend.model, scaled) == spring.generate_from_prompt(prompts[0],
                                                                                           max_new_tokens=8).text
    assert raw_completion(gemma_url, backend.model, bare) != raw_completion(gemma_url, backend.model, scaled)

    # SmolLM2's 576-wide embeddings sent to this 640-wide server: the model check stops it first, and without the
    # check the message says what vLLM said (the width), not to add a flag the server already has.
    small = SpringModel(*smollm2)
    prompt = small.prompt_parts("Who?", ["X is Y."], 0)
    with pytest.raises(ModelMismatchError, match="outside this model's vocabulary of 49152 tokens") as caught:
        VLLMBackend(gemma_url).generate(small, prompt, GREEDY)
    assert "nan" not in str(caught.value)
    with pytest.raises(ServerError, match="hidden_size 576 does not match the model's hidden_size 640") as caught:
        VLLMBackend(gemma_url, check_model=False, embeds="always").generate(small, prompt, GREEDY)
    assert "wrong width" in str(caught.value) and "--enable-prompt-embeds" not in str(caught.value)

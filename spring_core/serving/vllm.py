"""Generation on a vLLM server (its OpenAI-compatible API), behind the same ``Generation`` and stream types.

The prompt is built here by the same input layer as on transformers (``SpringModel.encode`` / ``embed``), so the
splice is the same code: a prompt without a block goes to ``/v1/completions`` as its token ids, a prompt with
``[r1]..[rk]`` as its whole ``prompt_embeds`` (``(num_tokens, hidden)`` in the served dtype, base64 of
``torch.save``), in either layout. Document adapters are merged into one PEFT LoRA per set of documents (the exact
sum; ``peft_export``), written once to ``adapter_dir`` (a folder the server reads) and loaded by name through
``/v1/load_lora_adapter``. A prompt healed for its trailing spaces (``spring_core.model.healing``) takes two
requests: the first token alone, restricted to ids that start with those spaces (``allowed_token_ids``), then the
rest after it.

The client need not hold the model: a thin ``SpringModel`` (``spring_core.serving.thin``: the tokenizer, the token
table and the input-embedding rows read lazily from the safetensors) builds the same requests, byte for byte.

What the server cannot do exactly is refused: marginal decoding (RAG-Sequence / RAG-Token) needs each passage's full
next-token distribution at every step, which vLLM's top-n logprobs do not give, so ``decoding`` must be ``stuff``.

Example:
    >>> backend = VLLMBackend("http://127.0.0.1:8000")                                   # doctest: +SKIP
    >>> engine = Engine(SpringModel.from_pretrained("smollm2-135m", tokens="smollm2-135m-squad"),
    ...                 backend=backend)                                                 # doctest: +SKIP
    >>> engine.generate(Request(question="Who?", documents=docs, k=50)).text             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
import json
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from spring_core.errors import (
    DeadlineError,
    ModelMismatchError,
    OptionError,
    ServerAuthError,
    ServerError,
    ServerReplyError,
)
from spring_core.generation import GenerationStream
from spring_core.model.healing import visible
from spring_core.model.loading import spring_home
from spring_core.model.spring_model import SpringModel
from spring_core.serving.http import Deadline, ServerClient, parse_json
from spring_core.serving.peft_export import write_peft_adapter
from spring_core.serving.thin import is_thin, refuse
from spring_core.types import Generation, GenerationSettings, PromptParts, Usage

PROBE_TEXT = "The history of the city begins in the year"
PROBE_SPLIT = ("The history of the city", " begins in", " the year")
"""The split-request probe: text, then the middle sent as embeddings (as a block is), then text."""
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
PLACEHOLDER = "<prompt_embeds>"
"""vLLM's placeholder for a ``prompt_embeds`` content part in a rendered chat (a special token it registers on its
own copy of the tokenizer; ``vllm/renderers/chat_utils.py``), expanded to one position per embedding row."""
JOIN_TEMPLATE = ("{% for message in messages %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}"
                 "{% endfor %}")
"""The chat template a split request carries: the user turn's parts joined as they are (vLLM renders a
``prompt_embeds`` part as its placeholder), so the server tokenizes exactly the text this client built."""
API_KEY_ENV = "VLLM_API_KEY"
"""The environment variable a client's key comes from when ``api_key`` is not given: the one vLLM's server reads
its own key from, so one variable can serve both sides."""
logger = logging.getLogger(__name__)
FINISH_REASONS = frozenset({"stop", "length"})
"""The server's finish reasons this backend reports (``abort`` or anything else is an error, not an answer)."""


@dataclass(frozen=True)
class _Prepared:
    """One request's body and what is needed to report usage.

    A healed prompt's first token was generated already (``head``, its text): ``body`` continues after it, or,
    with ``finished`` set, nothing is left to ask for (``finished`` is then the stand-in reply).
    """

    body: dict[str, Any]
    k: int
    prompt: str
    path: str = COMPLETIONS
    spaces: str = ""
    head: str = ""
    head_tokens: int = 0
    finished: dict[str, Any] | None = None


class VLLMBackend:
    """A vLLM server that answers ``SpringModel`` prompts: SPRING blocks as ``prompt_embeds``, document adapters as
    LoRA.

    Args:
        base_url: the server, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted).
        model: the served model name to use (default: the only / first one the server lists).
        api_key: sent as a bearer token: the server's ``--api-key`` (``spring-rag serve --api-key``). Default: the
            ``VLLM_API_KEY`` environment variable, if set; ``""`` sends no key. A server that refuses the key (401 /
            403) raises ``ServerAuthError`` at once (never retried); the key never appears in messages.
        request_timeout: seconds one HTTP request may wait to connect, to send, or for each read.
        deadline: seconds one whole call may take (connecting, every try, back-off, streaming; ``None``: no
            limit); past it a ``DeadlineError`` (a ``TimeoutError``) is raised and the stream closed.
        max_retries: retries, with exponential backoff from ``backoff`` seconds, of requests the server did not run:
            connection refused, or 429 / 502-504 (starting or overloaded). A request it accepted is never sent
            again, and a reply that breaks off is an error (``spring_core.serving.http``).
        adapter_dir: where merged document adapters are written; the server must read the same paths (same machine
            or a shared filesystem). Default: ``<spring-rag cache>/vllm-adapters``.
        embeds: ``"block"`` (the default) sends embeddings only for prompts with a block, ``"always"`` for every
            prompt (a plain prompt then goes as its embeddings too: the same answer, as the tests check).
        dtype: the served model's dtype, to which embeddings are cast before they are sent (default: the local
            model's).
        split: send a block as embeddings and the rest of the prompt as text the server tokenizes exactly as this
            client did (vLLM's chat endpoint with ``prompt_embeds`` content parts and a template that joins them,
            which needs the server's ``--trust-request-chat-template``; ``spring-rag serve`` sets it): a request
            then carries ``k`` rows instead of the whole prompt's. Used where the model check found the server
            answering such a request as the same prompt sent as ids, and the tokenizer reproduces the prompt's ids
            from that text; otherwise (``split=False`` too, and with document adapters: vLLM 0.32's engine dies on
            a split request with a LoRA) the whole prompt goes as embeddings.
        check_model: at the first call, refuse a server that runs another model: with a loaded model, the server's
            next-token log-probabilities on a probe prompt (as ids, and as embeddings when they are used) must match
            the local model's; with a thin client (``spring_core.serving.thin``: no layers, no local forward pass),
            the server's answer to the probe sent as token ids must match its answer to the client's embeddings of
            them, which holds only if the client's embedding rows are the served model's.

    Example:
        >>> backend = VLLMBackend("http://127.0.0.1:8000", request_timeout=60)                       # doctest: +SKIP
        >>> parts = sm.prompt_parts("Who?", ["X is Y."], k=10)                               # doctest: +SKIP
        >>> backend.generate(sm, parts, generation_settings({"max_new_tokens": 8})).text      # doctest: +SKIP
        'Y'
    """

    def __init__(self, base_url: str, *, model: str | None = None, api_key: str | None = None,
                 request_timeout: float = 120.0, deadline: float | None = None, max_retries: int = 6,
                 backoff: float = 0.5,
                 adapter_dir: str | Path | None = None, embeds: str = "block", dtype: str | torch.dtype | None = None,
                 check_model: bool = True, probe_tolerance: float = 0.1, split: bool = True):
        if embeds not in ("block", "always"):
            raise ValueError(f"embeds must be 'block' or 'always', got {embeds!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        self._key_source = "api_key=" if api_key else f"${API_KEY_ENV}" if self.api_key else None
        self.deadline = deadline
        self.http = ServerClient(self.base_url, headers=self._headers(), request_timeout=request_timeout,
                                 max_retries=max_retries, backoff=backoff, error_for=self._error_for)
        self.adapter_dir = Path(adapter_dir) if adapter_dir is not None else spring_home() / "vllm-adapters"
        self.embeds = embeds
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.check_model = check_model
        self.probe_tolerance = probe_tolerance
        self.split = split
        self._split_ok: dict[int, bool] = {}  # per model: the server answers a split request as the same ids
        self._marked: dict[int, tuple[Any, int]] = {}  # per tokenizer: a copy that knows PLACEHOLDER, and its id
        self._checked: set[int] = set()
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"VLLMBackend({self.base_url!r}, model={self.model!r})"

    # ----- generation ----------------------------------------------------------------------------------------

    def generate(self, spring: SpringModel, prompt: PromptParts | str, settings: GenerationSettings,
                 adapters: Any = None, adapter_ids: Sequence[str] = ()) -> Generation:
        """The answer to one prompt; ``adapter_ids`` name the documents of ``adapters`` whose summed update the
        server applies (as one merged LoRA, ``adapter_name``)."""
        deadline = Deadline(self.deadline)
        lora = self._lora(spring, adapters, adapter_ids, deadline)
        prepared = self._prepare(spring, prompt, settings, lora, stream=False, deadline=deadline)
        reply = prepared.finished or self.http.json("POST", prepared.path, prepared.body, deadline=deadline)
        return _generation(reply, prepared)

    def stream(self, spring: SpringModel, prompt: PromptParts | str, settings: GenerationSettings,
               adapters: Any = None, adapter_ids: Sequence[str] = ()) -> GenerationStream:
        """The answer as text deltas as the server sends them (SSE); ``result`` is set once it is read."""
        deadline = Deadline(self.deadline)
        lora = self._lora(spring, adapters, adapter_ids, deadline)
        prepared = self._prepare(spring, prompt, settings, lora, stream=True, deadline=deadline)
        stream = GenerationStream()
        stream._deltas = self._stream_deltas(prepared, stream, deadline)
        return stream

    async def agenerate(self, spring: SpringModel, prompt: PromptParts | str, settings: GenerationSettings,
                        adapters: Any = None, adapter_ids: Sequence[str] = ()) -> Generation:
        """Async twin of ``generate`` (the request itself is async; the prompt is built in a worker thread)."""
        deadline = Deadline(self.deadline)
        lora = await asyncio.to_thread(self._lora, spring, adapters, adapter_ids, deadline)
        prepared = await asyncio.to_thread(self._prepare, spring, prompt, settings, lora, stream=False,
                                           deadline=deadline)
        reply = prepared.finished or await self.http.ajson("POST", prepared.path, prepared.body, deadline=deadline)
        return _generation(reply, prepared)

    def generate_batch(self, spring: SpringModel, prompts: Sequence[PromptParts],
                       settings: GenerationSettings) -> list[Generation]:
        """Concurrent requests, in order; the server batches them."""
        with ThreadPoolExecutor(max_workers=max(1, min(32, len(prompts)))) as pool:
            return list(pool.map(lambda prompt: self.generate(spring, prompt, settings), prompts))

    async def astream(self, spring: SpringModel, prompt: PromptParts | str, settings: GenerationSettings,
                      adapters: Any = None, adapter_ids: Sequence[str] = ()) -> AsyncIterator[str]:
        """Async twin of ``stream``: yields text deltas."""
        deadline = Deadline(self.deadline)
        lora = await asyncio.to_thread(self._lora, spring, adapters, adapter_ids, deadline)
        prepared = await asyncio.to_thread(self._prepare, spring, prompt, settings, lora, stream=True,
                                           deadline=deadline)
        if head := visible(prepared.head, prepared.spaces):
            yield head
        if prepared.finished:
            return
        reader = _StreamReader(prepared.body["max_tokens"])
        async with self.http.aopen("POST", prepared.path, prepared.body, deadline=deadline) as reply:
            async for line in reply.aiter_lines():
                if delta := reader.read(line):
                    yield delta
                if reader.done:
                    break
        reader.reply()  # raises for a stream that ended without the server's finish reason

    # ----- document adapters ---------------------------------------------------------------------------------

    def _lora(self, spring: SpringModel, adapters: Any, doc_ids: Sequence[str], deadline: Deadline) -> str | None:
        if doc_ids and is_thin(spring.model):
            refuse("document adapters (opened and merged on the model's modules)")
        return self.adapter_name(spring, adapters, doc_ids, deadline=deadline) if doc_ids else None

    def adapter_name(self, spring: SpringModel, adapters: Any, doc_ids: Sequence[str], *,
                     deadline: Deadline | None = None) -> str | None:
        """The served LoRA holding the merged update of ``doc_ids`` (merged as the adapter set merges, written and
        loaded once per key); ``None`` for no documents. The name is made from the update's ``identity``, read
        together with the update, so it never labels the update of another text or shard."""
        update, identity = adapters.update_and_identity(list(doc_ids))
        if update is None:
            return None
        key = json.dumps([identity, list(doc_ids)], sort_keys=True, default=str)
        name = f"spring-rag-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        with self._lock:
            if name in self._loaded:
                return name
        folder = write_peft_adapter(update, self.adapter_dir / name, spring.model, base_model_name=spring.name)
        body = {"lora_name": name, "lora_path": str(folder.resolve())}
        with self.http.open("POST", "/v1/load_lora_adapter", body, deadline=deadline or Deadline(self.deadline),
                            allow=frozenset({400, 404})) as reply:
            reply.read()
        if reply.status_code == 404:
            raise ServerError(f"the server at {self.base_url} cannot load LoRA adapters at run time: start it with "
                              "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=true (`spring-rag serve "
                              "--adapters` does both)")
        if reply.status_code == 400 and "already" not in reply.text:
            raise ServerError(f"the server at {self.base_url} refused the merged adapter {folder}: {reply.text[:300]}"
                              " (is --max-lora-rank at least the summed rank "
                              f"{update.rank}? `spring-rag serve --max-lora-rank` sets it)")
        with self._lock:
            self._loaded.add(name)
        return name

    # ----- the model check -----------------------------------------------------------------------------------

    def served_models(self, *, adapters: bool = True, deadline: Deadline | None = None) -> list[str]:
        """The model names the server lists (``/v1/models``): base models first, then (``adapters``) the LoRA
        adapters it has loaded."""
        listing = self.http.json("GET", "/v1/models", deadline=deadline or Deadline(self.deadline))
        entries = listing.get("data", []) if isinstance(listing, dict) else []
        names = [entry["id"] for entry in entries if not entry.get("parent")]
        return names + ([entry["id"] for entry in entries if entry.get("parent")] if adapters else [])

    def check(self, spring: SpringModel, *, deadline: Deadline | None = None) -> None:
        """Refuse a server that runs another model than ``spring``'s (see ``check_model``); once per model."""
        if id(spring.model) in self._checked:
            return
        deadline = deadline or Deadline(self.deadline)
        served = self.served_models(adapters=False, deadline=deadline)
        if not served:
            raise ServerError(f"the server at {self.base_url} lists no model")
        if self.model is None:
            self.model = served[0]
        elif self.model not in served:
            raise ServerError(f"the server at {self.base_url} serves {', '.join(served)}, not {self.model!r}")
        if self.check_model and is_thin(spring.model):
            self._probe_rows(spring, deadline=deadline)
        elif self.check_model:
            self._probe(spring, as_embeds=False, deadline=deadline)
            if spring.n > 0 or self.embeds == "always":
                self._probe(spring, as_embeds=True, deadline=deadline)
        if self.split and self.embeds == "block" and spring.n > 0:
            self._split_ok[id(spring.model)] = self._probe_split(spring, deadline=deadline)
        self._checked.add(id(spring.model))

    def _probe_split(self, spring: SpringModel, *, deadline: Deadline) -> bool:
        """Whether this server answers a split request (text, embeddings, text) as the same prompt sent as ids:
        a refused request (no ``--trust-request-chat-template``, an older vLLM) or another answer means no."""
        before, middle, after = PROBE_SPLIT
        middle_ids = spring.tokenizer(middle, add_special_tokens=False)["input_ids"]
        parts = PromptParts(before, len(middle_ids), after)
        marked = spring.encode(parts)
        start = next(i for i, token in enumerate(marked) if token >= spring.vocab_rows)
        ids = marked[:start] + middle_ids + marked[start + len(middle_ids):]
        texts = self._split_texts(spring, parts, marked)
        if texts is None:
            return False
        by_ids = self._probe_reply(spring, ids, as_embeds=False, deadline=deadline)
        body = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 1,
                "return_tokens_as_token_ids": True,
                **_split_body(texts, self._embeds(spring, middle_ids))}
        try:
            by_split = _chat_probe_answer(self.http.json("POST", CHAT, body, deadline=deadline))
        except DeadlineError:
            raise
        except ServerError as exc:  # refused, or an answer without the log-prob asked for: not a server to split for
            logger.info("%s: blocks go as whole-prompt embeddings (a split request was refused: %s)", self, exc)
            return False
        if by_split[0] != by_ids[0] or not abs(by_split[1] - by_ids[1]) <= self.probe_tolerance:
            logger.warning("%s answers a split request (text, embeddings, text) otherwise than the same prompt as "
                           "ids (%s against %s): blocks go as whole-prompt embeddings", self, by_split, by_ids)
            return False
        return True

    def _split_texts(self, spring: SpringModel, parts: PromptParts, ids: list[int]) -> tuple[str, str] | None:
        """The text before and after the block whose tokenization around vLLM's placeholder gives exactly ``ids``
        (as the server will tokenize it), or ``None`` when this tokenizer does not reproduce them."""
        tokenizer = spring.tokenizer
        if id(tokenizer) not in self._marked:
            marked = copy.deepcopy(tokenizer)  # the model's own tokenizer is never changed
            marked.add_special_tokens({"additional_special_tokens": [PLACEHOLDER]})
            placeholder = marked.encode(PLACEHOLDER, add_special_tokens=False)
            self._marked[id(tokenizer)] = (marked, placeholder[0] if len(placeholder) == 1 else -1)
        marked, placeholder = self._marked[id(tokenizer)]
        start = next(i for i, token in enumerate(ids) if token >= spring.vocab_rows)
        prefix, suffix = ids[:start], ids[start + parts.k:]
        before = tokenizer(parts.before, add_special_tokens=False)["input_ids"]
        after = tokenizer(parts.after, add_special_tokens=False)["input_ids"]
        if placeholder < 0 or len(before) > len(prefix) or len(after) > len(suffix):
            return None
        lead, trail = prefix[:len(prefix) - len(before)], suffix[len(after):]
        texts = (tokenizer.decode(lead) + parts.before, parts.after + tokenizer.decode(trail))
        rendered = marked(texts[0] + PLACEHOLDER + texts[1], add_special_tokens=False)["input_ids"]
        return texts if list(rendered) == [*prefix, placeholder, *suffix] else None

    def _probe_reply(self, spring: SpringModel, ids: list[int], *, as_embeds: bool,
                     deadline: Deadline) -> tuple[int, float]:
        """The server's greedy next token (id, log-prob) after the probe ``ids``, sent as ids or as embeddings."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": 1, "temperature": 0.0, "logprobs": 1,
                                "return_tokens_as_token_ids": True}
        if as_embeds:
            body["prompt_embeds"] = self._embeds(spring, ids)
        else:
            body["prompt"] = ids
        return _probe_answer(self.http.json("POST", "/v1/completions", body, deadline=deadline))

    def _probe_rows(self, spring: SpringModel, *, deadline: Deadline) -> None:
        """The thin client's check, with no local forward pass: the server scores the probe sent as token ids and as
        this client's embeddings of them; the two agree only if the client's embedding rows are the served model's
        (a different model, or its rows unscaled, moves the answer)."""
        ids = spring.encode(PromptParts(PROBE_TEXT))
        by_ids = self._probe_reply(spring, ids, as_embeds=False, deadline=deadline)
        by_rows = self._probe_reply(spring, ids, as_embeds=True, deadline=deadline)
        intro = (f"the server at {self.base_url} serves {self.model!r}, which does not answer like this client's "
                 f"model ({spring.name}):")
        fix = ("Start the server on the client's model (`spring-rag serve <model>`), or pass check_model=False")
        vocabulary = spring.inputs.output_rows
        if not 0 <= by_ids[0] < vocabulary:  # its vocabulary is larger than this one's: another model
            raise ModelMismatchError(f"{intro} its next token after a probe prompt sent as token ids has id "
                                     f"{by_ids[0]}, outside this model's vocabulary of {vocabulary} tokens. {fix}")
        if by_ids[0] != by_rows[0] or not abs(by_ids[1] - by_rows[1]) <= self.probe_tolerance:
            said = [f"id {token} ({spring.tokenizer.decode([token]) if 0 <= token < vocabulary else 'outside'!r}, "
                    f"log-prob {logprob:.3f})" for token, logprob in (by_ids, by_rows)]
            raise ModelMismatchError(
                f"{intro} a probe prompt sent as token ids gets the next token {said[0]}, the same prompt sent as "
                f"this client's input embeddings {said[1]} (tolerance {self.probe_tolerance:g}): the client's "
                f"embedding rows are not the served model's. {fix}")

    def _probe(self, spring: SpringModel, *, as_embeds: bool, deadline: Deadline) -> None:
        parts = PromptParts(PROBE_TEXT)
        ids = spring.encode(parts)
        with torch.inference_mode():
            local = torch.log_softmax(spring.logits(parts)[0, -1].float(), dim=-1)
        token_id, served_logprob = self._probe_reply(spring, ids, as_embeds=as_embeds, deadline=deadline)
        what = "embeddings" if as_embeds else "token ids"
        intro = (f"the server at {self.base_url} serves {self.model!r}, which does not answer like this model "
                 f"({spring.name}): on a probe prompt sent as {what}, the server's next token")
        fix = ("Start the server on the model the tokens were trained for (`spring-rag serve <model>`), or pass "
               "check_model=False")
        if not 0 <= token_id < local.numel():  # its vocabulary is larger than this one's: another model
            raise ModelMismatchError(f"{intro} has id {token_id}, outside this model's vocabulary of "
                                     f"{local.numel()} tokens. {fix}")
        local_logprob = float(local[token_id])
        if not abs(served_logprob - local_logprob) <= self.probe_tolerance:
            text = spring.tokenizer.decode([token_id])
            raise ModelMismatchError(
                f"{intro} (id {token_id}, {text!r} here) has log-prob {served_logprob:.3f}, this model gives it "
                f"{local_logprob:.3f} (tolerance {self.probe_tolerance:g}). {fix}")

    # ----- requests ------------------------------------------------------------------------------------------

    def _prepare(self, spring: SpringModel, prompt: PromptParts | str, settings: GenerationSettings,
                 lora: str | None, *, stream: bool, deadline: Deadline) -> _Prepared:
        self.check(spring, deadline=deadline)
        parts = spring.as_parts(prompt)
        healed, ids = spring.inputs.prepare(parts, settings.max_new_tokens)
        body = _sampling(settings)
        body["model"] = lora or self.model
        texts = None
        # never with a LoRA: vLLM 0.32's LoRA embedding layer miscounts a split prompt's positions and its engine
        # dies (einsum size mismatch in punica's bgmv_expand), so a request with document adapters goes whole
        if parts.k > 0 and lora is None and healed.first_ids is None and self._split_ok.get(id(spring.model)):
            texts = self._split_texts(spring, healed.parts, ids)
        if texts is not None:  # the block as its rows, the rest as text the server tokenizes to the same ids
            start = next(i for i, token in enumerate(ids) if token >= spring.vocab_rows)
            body.update(_split_body(texts, self._embeds(spring, ids[start:start + parts.k])))
        elif parts.k > 0 or self.embeds == "always":
            body["prompt_embeds"] = self._embeds(spring, ids)
        else:
            body["prompt"] = ids
        prepared = _Prepared(body, parts.k, parts.render(), CHAT if texts is not None else COMPLETIONS)
        if healed.first_ids is not None:
            prepared = self._first_healed_token(spring, prepared, ids, healed.spaces, healed.first_ids.tolist(),
                                                deadline)
        if stream:
            body = {**prepared.body, "stream": True, "stream_options": {"include_usage": True}}
            prepared = replace(prepared, body=body)
        return prepared

    def _first_healed_token(self, spring: SpringModel, prepared: _Prepared, ids: list[int], spaces: str,
                            allowed: list[int], deadline: Deadline) -> _Prepared:
        """Ask for the first token alone, among the ``allowed`` ids (those that start with the healed ``spaces``);
        return the request that continues after it (or, when the answer ended there, a stand-in reply)."""
        body = prepared.body
        first = {**body, "max_tokens": 1, "min_tokens": 0, "return_token_ids": True, "allowed_token_ids": allowed}
        reply = self.http.json("POST", "/v1/completions", first, deadline=deadline)
        choice = _choice(reply, "/v1/completions")
        head = choice.get("text") or ""
        step = {"spaces": spaces, "head": head, "head_tokens": 1}
        if choice.get("finish_reason") == "stop" or body["max_tokens"] <= 1:  # a stop string, or no tokens left
            prompt_tokens = int((reply.get("usage") or {}).get("prompt_tokens") or 0) + 1
            finished = {"choices": [{"text": "", "finish_reason": choice.get("finish_reason")}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0}}
            return replace(prepared, finished=finished, **step)
        rest = {**body, "max_tokens": body["max_tokens"] - 1,
                "prompt_embeds": self._embeds(spring, [*ids, *choice["token_ids"]])}  # only blocks are healed
        if body.get("min_tokens"):
            rest["min_tokens"] = body["min_tokens"] - 1
        return replace(prepared, body=rest, **step)

    def _embeds(self, spring: SpringModel, ids: list[int]) -> str:
        with torch.inference_mode():
            embeds = spring.embed(torch.tensor([ids], device=spring.device))[0]
        buffer = io.BytesIO()
        torch.save(embeds.to("cpu", self.dtype or embeds.dtype).contiguous(), buffer)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _stream_deltas(self, prepared: _Prepared, stream: GenerationStream, deadline: Deadline) -> Iterator[str]:
        if head := visible(prepared.head, prepared.spaces):
            yield head
        if prepared.finished:
            stream.result = _generation(prepared.finished, prepared)
            return
        reader = _StreamReader(prepared.body["max_tokens"])
        with self.http.open("POST", prepared.path, prepared.body, deadline=deadline) as reply:
            for line in reply.iter_lines():
                if deadline.expired():  # a trickling server does not extend the call; a line cut by the
                    raise deadline.error("the stream")  # watchdog's shutdown is never read as an event
                if delta := reader.read(line):
                    yield delta
                if reader.done:
                    break
        if deadline.expired():  # the watchdog shut the socket: a close-delimited stream ends there, cut
            raise deadline.error("the stream")
        stream.result = _generation(reader.reply(), prepared)

    def _error_for(self, status: int, text: str) -> ServerError:
        """The error for a refusing status: it names the flag to start the server with when that is the cause."""
        message = _error_message(text)
        lowered = message.lower()
        if status in (401, 403):
            return ServerAuthError(self._auth_message(status, message))
        about_embeds = "prompt_embeds" in lowered or "prompt embeds" in lowered
        if about_embeds and any(word in lowered for word in ("hidden_size", "hidden size", "shape", "match")):
            return ServerError(f"the server at {self.base_url} refused the prompt embeddings as the wrong width or "
                               f"shape ({message}): it serves another model than the one this client made them "
                               "with; start it on the client's model (`spring-rag serve <model>`), or point the "
                               "client at a server of its model")
        if about_embeds and ("enable" in lowered or "not" in lowered and "support" in lowered):
            return ServerError(f"the server at {self.base_url} does not take prompt embeddings ({message}); start "
                               "it with --enable-prompt-embeds (`spring-rag serve` does)")
        if about_embeds:
            return ServerError(f"the server at {self.base_url} refused the prompt embeddings ({message})")
        if status == 404 and "model" in lowered:
            return ServerError(f"the server at {self.base_url} does not serve that model or adapter ({message}); "
                               "LoRA adapters need --enable-lora (`spring-rag serve --adapters`)")
        return ServerError(f"the vLLM server at {self.base_url} answered {status}: {message}")


    def _auth_message(self, status: int, message: str) -> str:
        how = (f"pass the server's key as api_key= (VLLMBackend(url, api_key=...), as_backend(url, api_key=...)) or "
               f"set ${API_KEY_ENV}; the server's key is its --api-key (`spring-rag serve --api-key`) or the "
               f"${API_KEY_ENV} it was started with")
        said = f"{status} {'Unauthorized' if status == 401 else 'Forbidden'}: {message}"
        if self._key_source is None:
            return f"the server at {self.base_url} needs an API key and none was sent ({said}); {how}"
        return (f"the server at {self.base_url} refused the API key sent (from {self._key_source}; {said}): it is not "
                f"one of the server's keys; {how}")


def _sampling(settings: GenerationSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                            "top_p": settings.top_p if settings.temperature > 0 else 1.0}
    if settings.min_new_tokens:
        body["min_tokens"] = settings.min_new_tokens
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    return body


def _split_body(texts: tuple[str, str], block: str) -> dict[str, Any]:
    """The chat-endpoint fields of a split request: one user turn of text, the block's rows, text, joined by
    ``JOIN_TEMPLATE`` with nothing added."""
    content = [{"type": "text", "text": texts[0]}, {"type": "prompt_embeds", "data": block},
               {"type": "text", "text": texts[1]}]
    return {"messages": [{"role": "user", "content": content}], "chat_template": JOIN_TEMPLATE,
            "add_generation_prompt": False}


def _chat_probe_answer(reply: Any) -> tuple[int, float]:
    """The next token's id and log-prob in a chat reply to the split probe, or a ``ServerReplyError``."""
    logprobs = _choice(reply, "the split-request probe").get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], Mapping) else {}
    token, value = str(first.get("token", "")), first.get("logprob")
    number = token.removeprefix("token_id:")
    if number == token or not number.isdigit() or not isinstance(value, (int, float)) or math.isnan(value):
        raise ServerReplyError("the server's reply to the split-request probe holds no next-token id and log-prob: "
                               f"{logprobs!r:.200}; split=False skips it")
    return int(number), float(value)


def _text(choice: Mapping[str, Any]) -> Any:
    """A choice's text: a completion's ``text``, a chat reply's ``message.content`` (``None`` there: empty)."""
    if "text" in choice:
        return choice["text"]
    message = choice.get("message")
    return (message.get("content") or "") if isinstance(message, Mapping) else None


def _choice(reply: Any, what: str) -> Mapping[str, Any]:
    """The first choice of a completion reply, or a ``ServerReplyError`` that shows what came instead."""
    choices = reply.get("choices") if isinstance(reply, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ServerReplyError(f"the server's reply to {what} holds no choice: {json.dumps(reply, default=str)[:200]}")
    return choices[0]


def _probe_answer(reply: Any) -> tuple[int, float]:
    """The next token's id and log-prob in the reply to the model-check probe (``logprobs=1`` and
    ``return_tokens_as_token_ids``), or a ``ServerReplyError`` that shows what came instead."""
    logprobs = _choice(reply, "the model-check probe").get("logprobs")
    tokens = logprobs.get("tokens") if isinstance(logprobs, Mapping) else None
    values = logprobs.get("token_logprobs") if isinstance(logprobs, Mapping) else None
    token = str(tokens[0]) if isinstance(tokens, list) and tokens else ""
    value = values[0] if isinstance(values, list) and values else None
    number = token.removeprefix("token_id:")
    if number == token or not number.isdigit() or not isinstance(value, (int, float)) or math.isnan(value):
        raise ServerReplyError("the server's reply to the model-check probe holds no next-token id and log-prob "
                               f"(asked with logprobs=1, return_tokens_as_token_ids=true): {logprobs!r:.200}; is it "
                               "a vLLM server? check_model=False skips the check")
    return int(number), float(value)


def _generation(reply: Any, prepared: _Prepared) -> Generation:
    """The ``Generation`` of a completion reply, whose finish reason is the server's own (never guessed)."""
    choice = _choice(reply, "the request")
    finish, text = choice.get("finish_reason"), _text(choice)
    if finish not in FINISH_REASONS or not isinstance(text, str):
        raise ServerReplyError(f"the server's answer is not a finished completion (finish_reason="
                               f"{choice.get('finish_reason')!r}, text={text!r:.80})")
    usage = reply.get("usage") or {}
    # the server counts the block's embeddings, and a healed prompt's first token, as prompt tokens
    prompt_tokens = int(usage.get("prompt_tokens") or 0) - prepared.k - prepared.head_tokens
    return Generation(text=visible(prepared.head + text, prepared.spaces), finish_reason=finish,
                      prompt=prepared.prompt,
                      usage=Usage(prompt_tokens=max(prompt_tokens, 0),
                                  completion_tokens=int(usage.get("completion_tokens") or 0) + prepared.head_tokens,
                                  virtual_tokens=prepared.k))


class _StreamReader:
    """The server-sent events of one streamed completion, checked as they come: ``read`` returns each event's
    text delta and keeps the text, the server's finish reason and the usage for ``reply``. An error event, an
    event that is not JSON, or more text events than the ``max_tokens`` asked for raise ``ServerReplyError``;
    ``done`` is set by ``data: [DONE]``."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.text: list[str] = []
        self.finish: str | None = None
        self.usage: Mapping[str, Any] = {}
        self.done = False

    def read(self, line: str) -> str:
        data = line[5:].strip() if line.startswith("data:") else ""  # ": keep-alive" comments and blanks: nothing
        if data == "[DONE]":
            self.done = True
        if not data or self.done:
            return ""
        event = parse_json(data, "a streamed completion")
        if not isinstance(event, dict) or "error" in event:
            raise ServerReplyError(f"the server sent an error in the stream after {len(self.text)} deltas: "
                                   f"{_error_message(data)}")
        self.usage = event.get("usage") or self.usage
        delta = ""
        for choice in event.get("choices") or []:
            self.finish = choice.get("finish_reason") or self.finish
            chat = choice.get("delta")  # a chat stream's delta, else a completion's text
            delta += (chat.get("content") if isinstance(chat, Mapping) else choice.get("text")) or ""
        if delta:
            self.text.append(delta)
        if len(self.text) > self.max_tokens:
            raise ServerReplyError(f"the server kept sending after the {self.max_tokens} tokens asked for; the "
                                   "stream was closed")
        return delta

    def reply(self) -> dict[str, Any]:
        """What a non-streamed reply would have held; a ``ServerReplyError`` when the server never said why the
        answer ended (the stream was cut)."""
        if self.finish is None:
            raise ServerReplyError(f"the stream ended after {len(self.text)} deltas ({len(''.join(self.text))} "
                                   "characters) without the server's finish reason: it was cut before the answer "
                                   "was complete")
        return {"choices": [{"text": "".join(self.text), "finish_reason": self.finish}], "usage": self.usage}


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error) if isinstance(error, dict) else error
    return str(message)[:500]


def serves_remotely(backend: Any) -> bool:
    """Whether ``backend`` (what the integrations' ``backend=`` takes) names a server: a URL or a ``VLLMBackend``."""
    return isinstance(backend, VLLMBackend) or isinstance(backend, str) and backend.startswith(("http://",
                                                                                                 "https://"))


def as_backend(backend: Any, *, api_key: str | None = None, deadline: float | None = None,
               max_retries: int | None = None) -> Any:
    """What the integrations' ``backend=`` takes: ``None`` (in process), a server URL (a ``VLLMBackend`` with the
    ``api_key`` -- default ``$VLLM_API_KEY`` --, the whole-call ``deadline`` and ``max_retries`` when given), or a
    backend object such as ``VLLMBackend`` (which carries its own key).

    Example:
        >>> as_backend("http://127.0.0.1:8000", api_key="k", deadline=30)
        VLLMBackend('http://127.0.0.1:8000', model=None)
        >>> as_backend("127.0.0.1:8000")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        spring_core.errors.OptionError: backend must be None (in process), a server URL such as ...
    """
    if isinstance(backend, str):
        if not backend.startswith(("http://", "https://")):
            raise OptionError(f"backend must be None (in process), a server URL such as 'http://127.0.0.1:8000', or "
                              f"a VLLMBackend; got {backend!r} (a URL needs its http:// or https://)")
        options = {"api_key": api_key, "deadline": deadline, "max_retries": max_retries}
        return VLLMBackend(backend, **{key: value for key, value in options.items() if value is not None})
    if api_key is not None:
        where = "in process (backend=None) no key is used" if backend is None else \
            f"backend {backend!r} is an object: give it its key (VLLMBackend(url, api_key=...))"
        raise OptionError(f"api_key is sent to a server named by URL (backend='http://host:8000'); {where}")
    return backend

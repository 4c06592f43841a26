"""Tool calling for ``ChatSpring``: what a chat template can render, the tool-call formats it writes, and the
answer step of agentic RAG.

**Which templates take tools.** ``template_tools(tokenizer)`` renders a probe conversation through the tokenizer's
chat template: a user turn with and without a probe tool definition (``apply_chat_template(tools=...)``), then an
assistant turn that calls the probe tool and a ``tool`` turn with its result. A template takes tools when the
probe tool's name shows up only in the render with tools; it renders calls and results when the probe call and
the probe result show up. The tool-call *format* is the one whose parser reads the probe call back from the text
the template writes for the assistant turn (the text a model trained on that template emits):

* ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes, Qwen 2.5 / 3, SmolLM3,
  MiniCPM and other ChatML-style tool templates);
* ``llama-json``: a JSON object ``{"name": ..., "parameters": {...}}`` (Llama 3.1+ and Llama 4, optionally after
  ``<|python_tag|>`` / inside ``<|python_start|>..<|python_end|>``);
* ``mistral``: ``[TOOL_CALLS]`` followed by a JSON list of ``{"name", "arguments"}`` or by
  ``name[ARGS]{...}`` (Mistral's v3 to v13 tokenizers).

**The answer step.** In an agent that retrieves through a tool, the tool's result is the context: when the
conversation ends with tool results, the block of virtual tokens goes after them. A template that renders tool
calls and results gets the block right before the answer (at the start of the assistant turn it opens). Any
other template gets a plain rendering, SPRING's order: the closing question, the assistant's tool calls and the
tool results become one user turn (``answer_turns``), the results' text, then the block, then
``Question: <question>``, where SPRING's tokens were trained to be read (right before the answer, the bundled tokens
score 0 EM on SmolLM2: they were trained to be followed by a question). Spread over three turns (the question, an
assistant ``Tool call:`` turn, the results asking the question again), the same block scored 15.0 EM on the drop-in
benchmark (SmolLM2, 200 questions) against 27.0 for the two-step layout; as one turn, 25.5. Without a block
(``k == 0``, the plain model) the conversation is rendered as before (``fallback_turns``): calls written into the
assistant turn as ``Tool call: name {json}``, the results one user turn of ``Tool result (name):`` paragraphs that
asks the question again.

**Tool results and past calls are plain text.** Any spelling of one of the tokenizer's added tokens
(``<|im_end|>``, ``<tool_call>``, ...) inside a tool result, a past call's name, arguments (keys and values) or id,
or a tool turn's name gets a word joiner (U+2060) after its first character, so it is read as characters and never
becomes that token (``spring_core.prompts.layouts.literal_text``, as all content); ``[r1]`` is always characters
(virtual tokens are structure, never text). Closing tool results with no text are no context (no block).

**Calls that cannot be made** (JSON that does not parse, arguments that are not a JSON object, a name that is not
a non-empty string, a ``llama-json`` call cut after its tag) are ``invalid_tool_calls`` as langchain-core's
``make_invalid_tool_call`` writes them: the name when there is one, the arguments as written, an error.
Mistral's templates take only call ids of nine letters and digits: ``mistral_ids`` maps the others (the same
id to the same one).

Example:
    >>> support = template_tools(tokenizer)                  # a Qwen 2.5 tokenizer
    >>> support.tools, support.calls, support.format
    (True, True, 'hermes')
    >>> parse_tool_calls('<tool_call>\\n{"name": "search", "arguments": {"q": "x"}}\\n</tool_call>', "hermes")
    ('', [{'name': 'search', 'args': {'q': 'x'}, 'id': '...', 'type': 'tool_call'}], [])
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from spring_core.errors import LayoutError, ToolCallingError
from spring_core.prompts.layouts import has_chat_template, literal_text, unique_sentinel
from spring_core.types import BlockAt, PromptParts

FORMATS = ("hermes", "llama-json", "mistral")
"""The tool-call formats ``ChatSpring`` reads."""

_TWO_STEP = ("for RAG without tool calling, use the two-step pattern: create_agent(chat, tools=[], "
             "middleware=[SpringRAGMiddleware(retriever)]) retrieves before the model call and places the block "
             "exactly")


@dataclass(frozen=True)
class TemplateTools:
    """What a chat template does with tools (see ``template_tools``).

    ``tools``: it renders tool definitions (``apply_chat_template(tools=...)``); ``calls``: it renders an assistant
    turn's ``tool_calls``; ``results``: it renders a ``tool`` turn; ``format``: the tool-call format it writes
    (one of ``FORMATS``), ``None`` when no parser reads its calls back.
    """

    tools: bool = False
    calls: bool = False
    results: bool = False
    format: str | None = None

    @property
    def native(self) -> bool:
        """Tool calls and results render through the template itself (else ``fallback_turns`` writes them)."""
        return self.calls and self.results


_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, TemplateTools]] = weakref.WeakKeyDictionary()


def template_tools(tokenizer: Any) -> TemplateTools:
    """Probe what ``tokenizer``'s chat template does with tools (cached per tokenizer and template)."""
    template = getattr(tokenizer, "chat_template", None)
    if not has_chat_template(tokenizer):
        return TemplateTools()
    try:
        cached = _CACHE.get(tokenizer)
    except TypeError:
        cached = None
    if cached is not None and cached[0] == template:
        return cached[1]
    support = _probe(tokenizer)
    try:
        _CACHE[tokenizer] = (str(template), support)
    except TypeError:
        pass
    return support


def _render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str | None:
    try:
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs))
    except Exception:  # a template that raises on tools, tool roles or tool calls does not take them
        return None


def _probe(tokenizer: Any) -> TemplateTools:
    name, argument, result, question = (unique_sentinel()[1:-1] for _ in range(4))
    name, argument = f"probe_{name}", f"arg_{argument}"
    tool = {"type": "function", "function": {"name": name, "description": "A probe tool.", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "description": "A query."}}, "required": ["q"]}}}
    user = {"role": "user", "content": question}
    without = _render(tokenizer, [user], add_generation_prompt=True)
    with_tools = _render(tokenizer, [user], add_generation_prompt=True, tools=[tool])
    takes_tools = with_tools is not None and with_tools != without and name in with_tools
    call = {"id": "a1b2c3d4e", "type": "function", "function": {"name": name, "arguments": {"q": argument}}}
    assistant = {"role": "assistant", "content": "", "tool_calls": [call]}
    answered = _render(tokenizer, [user, assistant, {"role": "tool", "content": result, "tool_call_id": "a1b2c3d4e",
                                                     "name": name}], add_generation_prompt=True,
                       tools=[tool] if takes_tools else None)
    calls = answered is not None and argument in answered and name in answered.replace(with_tools or "", "", 1)
    results = answered is not None and result in answered
    kind = None
    prompt = with_tools if takes_tools else without
    emitted = _render(tokenizer, [user, assistant], tools=[tool] if takes_tools else None)
    if calls and prompt is not None and emitted is not None and emitted.startswith(prompt):
        text = emitted[len(prompt):]
        for candidate in FORMATS:
            _, parsed, _ = parse_tool_calls(text, candidate, special=_specials(tokenizer))
            if [(c["name"], c["args"]) for c in parsed] == [(name, {"q": argument})]:
                kind = candidate
                break
    return TemplateTools(takes_tools, calls, results, kind)


def _specials(tokenizer: Any) -> list[str]:
    return [str(t) for t in getattr(tokenizer, "all_special_tokens", [])]


def generated_specials(tokenizer: Any, token_ids: Sequence[int]) -> list[str]:
    """The spellings of the tokenizer's special tokens that ``token_ids`` hold as tokens (what
    ``skip_special_tokens`` decoding drops; the same characters written as ordinary tokens are text)."""
    ids = set(token_ids)
    return [token for token in _specials(tokenizer) if tokenizer.convert_tokens_to_ids(token) in ids]


def check_tool_support(tokenizer: Any, what: str = "bind_tools") -> TemplateTools:
    """``template_tools(tokenizer)`` when tools can be bound; else ``ToolCallingError`` that says why and names
    the two-step pattern."""
    support = template_tools(tokenizer)
    if not has_chat_template(tokenizer):
        raise ToolCallingError(f"{what} needs a chat template that takes tools, and this model's tokenizer has no "
                               f"chat template; {_TWO_STEP}")
    if not support.tools or not support.calls:
        gap = "tool definitions (apply_chat_template(tools=...))" if not support.tools else "assistant tool calls"
        raise ToolCallingError(f"{what} needs a chat template that takes tools, and this model's chat template does "
                               f"not render {gap}; {_TWO_STEP}")
    if support.format is None:
        raise ToolCallingError(f"{what}: this model's chat template renders tools, but in a tool-call format "
                               f"spring-rag cannot read back (it reads {', '.join(FORMATS)}); {_TWO_STEP}")
    return support


# ----- rendering -------------------------------------------------------------------------------------------------


def fallback_turns(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Tool calls and results as plain turns, for a template that does not render them: an assistant turn's calls
    as lines ``Tool call: name {json arguments}`` after its text, consecutive tool results as one user turn of
    ``Tool result (name):\n<result>`` paragraphs. When the conversation ends with tool results, that turn asks the
    question again (the last user turn before the call): ``\n\nQuestion: <question>``, SPRING's order, context
    then question (``render_tool_prompt`` puts the block right before it).

    Example:
        >>> fallback_turns([{"role": "user", "content": "What is X?"}, {"role": "assistant", "content": "",
        ...     "tool_calls": [{"function": {"name": "search", "arguments": {"q": "x"}}}]},
        ...     {"role": "tool", "name": "search", "content": "X is Y."}])[1:]
        [{'role': 'assistant', 'content': 'Tool call: search {"q": "x"}'}, {'role': 'user', 'content': 'Tool result (search):\nX is Y.\n\nQuestion: What is X?'}]
    """  # noqa: E501
    plain = _plain_turns(turns)
    question = asked_question(turns)
    if turns and turns[-1]["role"] == "tool" and question:
        plain[-1]["content"] += QUESTION_AGAIN + question
    return plain


def _plain_turns(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """``fallback_turns`` without the question asked again."""
    plain: list[dict[str, str]] = []
    for turn in turns:
        if turn["role"] == "tool":
            paragraph = f"Tool result ({turn.get('name') or 'tool'}):\n{turn['content']}"
            if plain and plain[-1].get("_tool") == "1":
                plain[-1]["content"] += "\n\n" + paragraph
            else:
                plain.append({"role": "user", "content": paragraph, "_tool": "1"})
            continue
        content = str(turn["content"])
        calls = [f"Tool call: {c['function']['name']} {json.dumps(c['function']['arguments'], ensure_ascii=False)}"
                 for c in turn.get("tool_calls") or ()]
        plain.append({"role": str(turn["role"]), "content": "\n".join(([content] if content else []) + calls)})
    return [{"role": t["role"], "content": t["content"]} for t in plain]


def answer_turns(turns: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, str]], int] | None:
    """The answer step in SPRING's order, for a template that does not render tools, and where its block goes.

    When the conversation closes with a question, the assistant's tool calls (with no text of their own) and
    their results, those turns become one user turn: the results' text (``\n\n`` between results), then
    ``\n\nQuestion: <question>``; the turns before the question are rendered as ``fallback_turns`` renders them.
    Returns the turns and the character offset of ``Question:`` in the last one (the block goes there), or
    ``None`` when the conversation does not close that way. The question and the results are put in as they are,
    never searched: a question that holds ``\n\nQuestion: `` or ``[r1]`` stays text.

    Example:
        >>> answer_turns([{"role": "user", "content": "What is X?"}, {"role": "assistant", "content": "",
        ...     "tool_calls": [{"function": {"name": "search", "arguments": {"q": "x"}}}]},
        ...     {"role": "tool", "name": "search", "content": "X is Y."}])
        ([{'role': 'user', 'content': 'X is Y.\n\nQuestion: What is X?'}], 9)
    """
    calls = [i for i, turn in enumerate(turns) if turn.get("tool_calls")]
    if not calls or turns[-1]["role"] != "tool":
        return None
    asked = next((i for i in range(calls[-1] - 1, -1, -1)
                  if turns[i]["role"] == "user" and str(turns[i]["content"]).strip()), None)
    if asked is None:
        return None
    closing = turns[asked + 1:]
    if any(t["role"] not in ("assistant", "tool") or (t["role"] == "assistant" and (
            not t.get("tool_calls") or str(t["content"]).strip())) for t in closing):
        return None
    results = "\n\n".join(str(t["content"]) for t in closing if t["role"] == "tool")
    turn = {"role": "user", "content": results + QUESTION_AGAIN + str(turns[asked]["content"])}
    return [*_plain_turns(turns[:asked]), turn], len(results) + QUESTION_AGAIN.index("Question")


QUESTION_AGAIN = "\n\nQuestion: "
"""What comes between the tool results and the question they answer (the block goes after the line breaks)."""


def asked_question(turns: Sequence[Mapping[str, Any]]) -> str | None:
    """The question a conversation's closing tool results answer: the last user turn before its last tool call."""
    calls = [i for i, turn in enumerate(turns) if turn.get("tool_calls")]
    before = turns[: calls[-1]] if calls else turns
    return next((str(t["content"]) for t in reversed(before) if t["role"] == "user" and str(t["content"]).strip()),
                None)


def render_tool_prompt(turns: Sequence[Mapping[str, Any]], tokenizer: Any, tools: Sequence[Mapping[str, Any]] | None,
                       k: int, render: Callable[[Sequence[Mapping[str, str]], BlockAt | None, int], PromptParts],
                       ) -> PromptParts:
    """The prompt of a conversation with tools, tool calls or tool results, assistant turn opened; when it ends
    with tool results and ``k > 0``, a ``k``-token block after them.

    Natively (a template that renders tool calls and results) the block goes right before the answer, at the start
    of the assistant turn the template opens. Otherwise the closing question, calls and results are one user turn
    (``answer_turns``: results, block, question); a conversation that does not close that way, and any call
    without a block, is rendered by ``fallback_turns`` (a block then goes between the results and the question
    asked again after them, or at the very end when no question was asked). ``tools`` are OpenAI-style tool
    definitions (rendered by the template). Every turn's text is ``literal_text`` (``render`` makes it so for
    plain turns; ``native_prompt`` for the template's own tool rendering). ``render`` renders plain turns with a
    block at a ``BlockAt`` (the chat template, or a transcript without one). Closing tool results with no text
    are no context: no block.
    """
    k = k if closes_with_results(turns) else 0
    support = template_tools(tokenizer)
    if support.native:
        return native_prompt(turns, tokenizer, tools, k)
    answer = answer_turns(turns) if k else None
    if answer is not None:
        merged, offset = answer
        return render(merged, BlockAt(len(merged) - 1, offset), k)
    plain = fallback_turns(turns)
    at = None
    question = asked_question(turns) if k else None
    if question:  # the block before "Question:", found by length, not searched
        last = plain[-1]["content"]
        at = BlockAt(len(plain) - 1, len(last) - len(question) - len(QUESTION_AGAIN) + QUESTION_AGAIN.index("Q"))
    elif k:
        return PromptParts(render(plain, None, 0).plain_text(), k, "", has_chat_template(tokenizer) is False)
    return render(plain, at, k)


def closes_with_results(turns: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the conversation ends with tool results that hold text (the context of an answer step; results
    with no text are no context, so the plain model answers)."""
    closing = list(takewhile(lambda turn: turn["role"] == "tool", reversed(turns)))
    return any(str(turn["content"]).strip() for turn in closing)


def native_prompt(turns: Sequence[Mapping[str, Any]], tokenizer: Any, tools: Sequence[Mapping[str, Any]] | None,
                  k: int, at: BlockAt | None = None) -> PromptParts:
    """The conversation rendered by the chat template itself (its tools, tool calls and results), assistant turn
    opened, with a ``k``-token block at ``at`` (a turn and a character offset in its content), else at the end.

    Every string in the turns is ``literal_text`` (content, tool names, call arguments' keys and values, ids), so
    only the template writes special tokens; for the ``mistral`` format the call ids are nine letters and digits
    (``mistral_ids``). The block's place is marked with a random sentinel, so the split is exact."""
    if template_tools(tokenizer).format == "mistral":
        turns = mistral_ids(turns)
    literal = [_literal(turn, tokenizer) for turn in turns]
    sentinel = None
    if at is not None and k:
        sentinel = unique_sentinel([str(turns)])
        content = str(turns[at.message]["content"])
        literal[at.message]["content"] = (literal_text(content[:at.offset], tokenizer) + sentinel
                                          + literal_text(content[at.offset:], tokenizer))
    kwargs: dict[str, Any] = {"tools": list(tools)} if tools else {}
    try:
        rendered = str(tokenizer.apply_chat_template(literal, tokenize=False, add_generation_prompt=True, **kwargs))
    except Exception as error:
        raise ToolCallingError(f"this model's chat template could not render the conversation with its tool calls "
                               f"({type(error).__name__}: {error}); {_TWO_STEP}") from error
    if sentinel is None:
        return PromptParts(rendered, k, "", special_tokens=False)
    before, found, after = rendered.partition(sentinel)
    if not found or sentinel in after:
        raise LayoutError("the chat template did not render its content verbatim, so the virtual-token block "
                          "cannot be placed; use the 'raw' layout with this model")
    return PromptParts(before, k, after, special_tokens=False)


def _literal(value: Any, tokenizer: Any) -> Any:
    """``value`` with every string in it (mapping keys and values, list items, recursively) ``literal_text``."""
    if isinstance(value, str):
        return literal_text(value, tokenizer)
    if isinstance(value, Mapping):
        return {_literal(key, tokenizer): _literal(item, tokenizer) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_literal(item, tokenizer) for item in value]
    return value


_MISTRAL_ID = re.compile(r"[A-Za-z0-9]{9}")


def mistral_id(call_id: str) -> str:
    """``call_id`` as Mistral's templates take it: itself when it is nine letters and digits, else nine hex digits
    of its SHA-256 (the same id always maps to the same one, so a result still names its call)."""
    if _MISTRAL_ID.fullmatch(call_id):
        return call_id
    return hashlib.sha256(call_id.encode()).hexdigest()[:9]


def mistral_ids(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The turns with every tool-call id (an assistant turn's calls, a tool turn's ``tool_call_id``) as
    ``mistral_id`` writes it."""
    mapped: list[dict[str, Any]] = []
    for turn in turns:
        turn = dict(turn)
        if turn.get("tool_calls"):
            turn["tool_calls"] = [{**call, "id": mistral_id(str(call.get("id") or ""))} for call in turn["tool_calls"]]
        if turn.get("tool_call_id") is not None:
            turn["tool_call_id"] = mistral_id(str(turn["tool_call_id"]))
        mapped.append(turn)
    return mapped


# ----- parsing ---------------------------------------------------------------------------------------------------

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_LLAMA_TAGS = ("<|python_tag|>", "<|python_start|>", "<|python_end|>")


def parse_tool_calls(text: str, format: str, *, names: Sequence[str] | None = None,
                     special: Sequence[str] = ()) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(content, tool_calls, invalid_tool_calls)`` of a model's output in a tool-call ``format``, as LangChain's
    ``AIMessage`` holds them. ``names`` (the bound tools) limit what counts as a call in the ``llama-json`` format,
    which has no marker; ``special`` are the special tokens' spellings: dropped around the calls (an end-of-turn
    token) and, when there are calls, from the content (as ``skip_special_tokens`` decoding drops them).
    Text with no call is returned as the content, unchanged."""
    if format not in FORMATS:
        raise ValueError(f"unknown tool-call format {format!r}; known: {', '.join(FORMATS)}")
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    if format == "hermes":
        if "<tool_call>" not in text:
            return text, [], []
        for match in _HERMES.finditer(text):
            _add_call(match.group(1), calls, invalid)
        return _drop_specials(_HERMES.sub("", text), special), calls, invalid
    if format == "mistral":
        head, found, tail = text.partition("[TOOL_CALLS]")
        if not found:
            return text, [], []
        for part in tail.split("[TOOL_CALLS]"):
            part = _strip_specials(part, special)
            if "[ARGS]" in part:  # v11+: name[ARGS]{...} (v13: name[CALL_ID]id[ARGS]{...})
                name, _, arguments = part.partition("[ARGS]")
                _add_call(arguments, calls, invalid, name=name.split("[CALL_ID]")[0].strip())
            else:  # v3 / v7: a JSON list of {"name", "arguments"}
                _add_call(part, calls, invalid)
        return _drop_specials(head, special), calls, invalid
    return _llama_calls(text, names, special)


def _llama_calls(text: str, names: Sequence[str] | None,
                 special: Sequence[str]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``llama-json`` format, which has no marker: the text is calls only when it is nothing but JSON objects
    ``{"name", "parameters"}`` (or ``"arguments"``), each naming a bound tool (when ``names`` are given) or no
    usable name at all (an invalid call); else it is the answer, as written. Text that opens with one of the
    format's tags (``_LLAMA_TAGS``) is a call even where what follows does not parse (cut at ``max_tokens``): that
    part is an invalid call (``_cut_call``)."""
    body = _strip_specials(text, [token for token in special if token not in _LLAMA_TAGS])
    tagged = body.startswith(_LLAMA_TAGS)
    for tag in _LLAMA_TAGS:
        body = body.replace(tag, "")
    body = _strip_specials(body, special)
    pieces, rest = _json_values(body) if body.startswith("{") else ([], body)
    if not tagged and (rest or not pieces):
        return text, [], []
    calls: list[dict[str, Any]] = []
    invalid: list[dict[str, Any]] = []
    for piece in pieces:
        if not isinstance(piece, dict) or "name" not in piece or not ({"parameters", "arguments"} & set(piece)):
            return text, [], []
        if names is not None and _valid_name(piece["name"]) and piece["name"] not in names:
            return text, [], []  # JSON that names no bound tool is an answer
        _sort(_tool_call(piece["name"], piece.get("parameters", piece.get("arguments"))), calls, invalid)
    if rest or not pieces:
        invalid.append(_cut_call(rest))
    return "", calls, invalid


_LLAMA_NAME = re.compile(r'\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")')


def _cut_call(raw: str) -> dict[str, Any]:
    """What follows a ``llama-json`` tag and does not parse as calls, as an invalid call: the name when it opens
    with a whole one, the text as written, an error."""
    try:
        json.loads(raw)
    except json.JSONDecodeError as error:
        return _invalid(_opening_name(raw), raw, f"the tool call is not JSON ({error})")
    return _invalid(None, raw, "a tool call must be a JSON object with a name and parameters")


def _opening_name(raw: str) -> str | None:
    """The tool name a cut JSON call opens with (``{"name": "..."``), if whole and usable."""
    match = _LLAMA_NAME.match(raw)
    try:
        name = json.loads(match.group(1)) if match else None
    except json.JSONDecodeError:
        return None
    return name if _valid_name(name) else None


def _strip_specials(text: str, special: Sequence[str]) -> str:
    text = text.strip()
    changed = True
    while changed and text:
        changed = False
        for token in special:
            if token and text.endswith(token):
                text, changed = text[: -len(token)].rstrip(), True
            if token and text.startswith(token):
                text, changed = text[len(token):].lstrip(), True
    return text


def _drop_specials(text: str, special: Sequence[str]) -> str:
    """``text`` without the spellings in ``special`` (anywhere, in one pass, longest first), stripped."""
    tokens = sorted({token for token in special if token}, key=len, reverse=True)
    return (re.sub("|".join(map(re.escape, tokens)), "", text) if tokens else text).strip()


def _json_values(body: str) -> tuple[list[Any], str]:
    """JSON values one after another, separated by whitespace, ``;`` or ``,``, and the text from the first that
    does not parse (``''`` when all do)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(body):
        while at < len(body) and body[at] in " \t\r\n;,":
            at += 1
        if at >= len(body):
            break
        try:
            value, at = decoder.raw_decode(body, at)
        except json.JSONDecodeError:
            return values, body[at:]
        values.append(value)
    return values, ""


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name.strip())


def _tool_call(name: Any, arguments: Any) -> dict[str, Any]:
    """A ``tool_call``, or, when ``name`` is not a non-empty string or ``arguments`` are not a JSON object (or a
    string of one), an ``invalid_tool_call`` as langchain-core's ``make_invalid_tool_call`` writes it: the name
    when it is one, the arguments as written (a string), an error."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    if not _valid_name(name):
        return _invalid(None, raw, f"the tool name must be a non-empty string, got {json.dumps(name)}")
    try:
        if isinstance(arguments, str):
            arguments = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as error:
        return _invalid(name, raw, f"the tool arguments are not JSON ({error})")
    if not isinstance(arguments, dict):
        return _invalid(name, raw, f"the tool arguments must be a JSON object, got {type(arguments).__name__}")
    return {"name": name, "args": arguments, "id": _call_id(), "type": "tool_call"}


def _invalid(name: str | None, raw: str, error: str) -> dict[str, Any]:
    return {"name": name, "args": raw, "id": _call_id(), "error": error, "type": "invalid_tool_call"}


def _sort(call: dict[str, Any], calls: list[dict[str, Any]], invalid: list[dict[str, Any]]) -> None:
    (calls if call["type"] == "tool_call" else invalid).append(call)


def _add_call(raw: str, calls: list[dict[str, Any]], invalid: list[dict[str, Any]], name: str | None = None) -> None:
    """Parse one call into ``calls``: a JSON object (or a list of them) with ``name`` and ``arguments``, or, with
    ``name`` given, the arguments alone; each call that cannot be made goes to ``invalid`` (``_tool_call``), and
    text that is not JSON at all goes there as written."""
    if name is not None:
        _sort(_tool_call(name, raw), calls, invalid)
        return
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        invalid.append(_invalid(None, raw, f"not a JSON tool call ({error})"))
        return
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, dict):
            _sort(_tool_call(item.get("name"), item.get("arguments", item.get("parameters", {}))), calls, invalid)
        else:
            invalid.append(_invalid(None, json.dumps(item, ensure_ascii=False),
                                    "a tool call must be a JSON object with a name and arguments"))


def tool_definitions(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools (``BaseTool``, functions, pydantic models, dicts) as OpenAI-style definitions."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(tool) for tool in tools]


def _call_id() -> str:
    """A fresh call id of 9 letters and digits (Mistral's templates accept no other)."""
    return uuid.uuid4().hex[:9]

"""Tools from plain Python functions for the chat envs: described to the model, called with JSON, answered in
a tool turn.

:class:`Tools` holds typed functions with Google-style docstrings. Their JSON schemas come from transformers
(``transformers.utils.get_json_schema``, the schemas ``tokenizer.apply_chat_template(..., tools=...)``
takes), and the system prompt describes them through the tokenizer's chat template when the template uses
``tools``, else with :func:`describe_tools` (the fallback rendering, appended to the system prompt). The agent
calls a tool with JSON inside tags, the Hermes / Qwen convention::

    <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>

and :meth:`Tools.answer` parses every call of a message, checks its arguments against the schema (types,
missing and unknown names), runs the function with a time limit (``timeout``, in a worker thread) and caps
its output (``max_output_chars``). A malformed call, an unknown tool, bad arguments, a timeout or an exception
in the function is never an error of the env: the answer says what was wrong, the episode goes on, and the
call counts as bad (``bad_call_cost`` each, on top of ``call_cost`` per call).

**Tools run in-process**, in a thread of the env's process, with the env's permissions. A call past its
``timeout`` is answered as timed out but its thread cannot be stopped and runs on in the background. Only
give the env functions you trust; a tool that runs untrusted input (code, shell commands, network requests)
needs a sandbox of its own (a subprocess with resource limits, a container) inside the function.

>>> def add(a: int, b: int) -> int:
...     '''Add two whole numbers.
...
...     Args:
...         a: the first number
...         b: the second number
...     '''
...     return a + b
>>> tools = Tools([add])
>>> tools.answer('Let me add. <tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
ToolAnswer(content='5', calls=1, bad_calls=0, reward=0.0)
>>> tools.answer('<tool_call>{"name": "add", "arguments": {"a": "2"}}</tool_call>').content
"error: bad arguments for add: 'a' must be integer, got string; missing 'b' (integer)"
>>> tools.answer("No call here.") is None
True
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
"""One call: the text between ``<tool_call>`` and ``</tool_call>`` (or the end of the message: unclosed)."""
CALL_FORMAT = (
    '<tool_call>{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}</tool_call>'
)
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


class ToolAnswer(NamedTuple):
    """The tool turn that answers one agent message, and what it counts."""

    content: str
    """The tool turn's text: each call's output, or what was wrong with it."""
    calls: int
    """Tool calls in the message (bad ones included)."""
    bad_calls: int
    """Calls that were malformed, named an unknown tool, had bad arguments, timed out or raised."""
    reward: float
    """``-(call_cost * calls + bad_call_cost * bad_calls)``."""


class ToolError(Exception):
    """What was wrong with one call; its message becomes the tool's answer."""


class Tools:
    """Typed, docstringed Python functions as tools of a chat task (``ChatTask.tools``).

    Arguments:
        functions: the tools; each needs type hints on every argument and a Google-style docstring with an
            ``Args:`` section (``transformers.utils.get_json_schema`` reads them). Names must be unique.
        timeout: seconds a call may run (in a worker thread) before it is answered as timed out; None runs
            it in the env's thread with no limit.
        max_output_chars: longer outputs are cut to this many characters, with a note saying so.
        call_cost: reward subtracted per call (a per-turn reward of the message that calls).
        bad_call_cost: reward subtracted per bad call, on top of ``call_cost``.
        max_calls: calls an episode may make; later messages go to the task as if they held no call
            (None: no limit).

    Return values are sent as text: a ``str`` as it is, anything else as JSON (``str()`` if that fails).
    """

    def __init__(
        self,
        functions: Sequence[Callable[..., Any]],
        timeout: float | None = 2.0,
        max_output_chars: int = 1000,
        call_cost: float = 0.0,
        bad_call_cost: float = 0.0,
        max_calls: int | None = None,
    ) -> None:
        from transformers.utils import get_json_schema

        if isinstance(functions, Tools) or callable(functions) or not functions:
            raise TypeError("tools must be a non-empty list of functions, e.g. tools=[add, multiply]")
        self.functions: dict[str, Callable[..., Any]] = {}
        self.schemas: list[dict[str, Any]] = []
        for k, function in enumerate(functions):
            if not callable(function):
                raise TypeError(f"tools[{k}] is {type(function).__name__}, not a function")
            try:
                schema = get_json_schema(function)
            except Exception as error:  # transformers' DocstringParsingException / TypeHintParsingException
                raise TypeError(
                    f"tools[{k}] ({getattr(function, '__name__', function)!r}): {error}. A tool needs type "
                    "hints on every argument and a Google-style docstring with a description and an Args: "
                    "section naming each argument (transformers.utils.get_json_schema reads them)."
                ) from None
            name = schema["function"]["name"]
            if name in self.functions:
                raise ValueError(f"tools[{k}]: two tools are named {name!r}; tool names must be unique")
            self.functions[name] = function
            self.schemas.append(schema)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout={timeout!r} must be a positive number of seconds, or None (no limit)")
        if not isinstance(max_output_chars, int) or max_output_chars < 1:
            raise ValueError(f"max_output_chars={max_output_chars!r} must be a positive int")
        if max_calls is not None and (not isinstance(max_calls, int) or max_calls < 0):
            raise ValueError(f"max_calls={max_calls!r} must be an int >= 0, or None (no limit)")
        for name, cost in (("call_cost", call_cost), ("bad_call_cost", bad_call_cost)):
            if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < float("inf"):
                raise ValueError(f"{name}={cost!r} must be a finite number >= 0 (the reward it subtracts)")
        self.timeout, self.max_output_chars, self.max_calls = timeout, max_output_chars, max_calls
        self.call_cost, self.bad_call_cost = float(call_cost), float(bad_call_cost)

    def __repr__(self) -> str:
        return f"Tools({list(self.functions)}, timeout={self.timeout}, max_calls={self.max_calls})"

    # ---- calls ---------------------------------------------------------------------------------------------
    @staticmethod
    def count(message: str) -> int:
        """How many calls ``message`` makes (well-formed or not): its ``<tool_call>`` tags."""
        return len(CALL.findall(message))

    def answers(self, message: str, calls_so_far: int) -> bool:
        """Whether the tools answer ``message``: it calls a tool and the episode's ``max_calls`` (after
        ``calls_so_far`` calls) is not used up. Otherwise the message goes to the task."""
        return self.count(message) > 0 and (self.max_calls is None or calls_so_far < self.max_calls)

    def answer(self, message: str, calls_left: int | None = None) -> ToolAnswer | None:
        """The tool turn for ``message``'s calls (None if it makes none). Each call is answered in order;
        with several, each answer is a line ``[i] name: output``. Calls beyond ``calls_left`` are answered
        as refused (bad). Never raises for anything in ``message``."""
        bodies = [(body, closing) for body, closing in CALL.findall(message)]
        if not bodies:
            return None
        outputs, bad = [], 0
        for k, (body, closing) in enumerate(bodies):
            name = "?"
            try:
                if calls_left is not None and k >= calls_left:
                    raise ToolError(f"no tool calls left in this episode (max_calls={self.max_calls})")
                if not closing:
                    raise ToolError(f"the call has no closing </tool_call>; write {CALL_FORMAT}")
                name, arguments = self._parse(body)
                output = self._run(name, arguments)
            except ToolError as error:
                output, bad = f"error: {error}", bad + 1
            outputs.append(output)
        if len(outputs) == 1:
            content = outputs[0]
        else:
            content = "\n".join(f"[{k + 1}] {out}" for k, out in enumerate(outputs))
        reward = 0.0 - (self.call_cost * len(bodies) + self.bad_call_cost * bad)
        return ToolAnswer(content, len(bodies), bad, reward)

    def _parse(self, body: str) -> tuple[str, dict[str, Any]]:
        try:
            call = json.loads(body)
        except (ValueError, RecursionError) as error:
            raise ToolError(f"the call is not valid JSON ({error}); write {CALL_FORMAT}") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ToolError(f'the call must be a JSON object with a "name"; write {CALL_FORMAT}')
        name = call["name"]
        if name not in self.functions:
            raise ToolError(f"unknown tool {name[:60]!r}; the tools are: {', '.join(self.functions)}")
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):  # OpenAI's format: the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                pass
        if not isinstance(arguments, dict):
            raise ToolError(f'"arguments" of {name} must be a JSON object, got {type(arguments).__name__}')
        return name, arguments

    def _run(self, name: str, arguments: dict[str, Any]) -> str:
        schema = next(s["function"] for s in self.schemas if s["function"]["name"] == name)
        problems = argument_problems(schema["parameters"], arguments)
        if problems:
            raise ToolError(f"bad arguments for {name}: {'; '.join(problems)}")
        function = self.functions[name]
        if self.timeout is None:
            try:
                value = function(**arguments)
            except Exception as error:  # noqa: BLE001  (the model's call never ends the episode with an error)
                raise ToolError(f"{name} raised {type(error).__name__}: {error}") from None
        else:
            value = _call_with_timeout(function, arguments, self.timeout, name)
        return self._text(value)

    def _text(self, value: Any) -> str:
        try:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            try:
                text = str(value)
            except Exception as error:  # noqa: BLE001  (a value whose __str__ raises)
                raise ToolError(f"the tool's result could not be shown ({type(error).__name__})") from None
        if len(text) > self.max_output_chars:
            text = f"{text[: self.max_output_chars]}... [cut: {len(text)} characters in all]"
        return text


def _call_with_timeout(
    function: Callable[..., Any], arguments: dict[str, Any], timeout: float, name: str
) -> Any:
    """``function(**arguments)`` in a daemon thread; ToolError on a timeout or an exception."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = function(**arguments)
        except BaseException as error:  # noqa: BLE001  (SystemExit in a tool must not end the env either)
            box["error"] = error

    thread = threading.Thread(target=target, name=f"textenv-tool-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ToolError(f"{name} took longer than {timeout:g} s and was abandoned (timeout={timeout:g})")
    if "error" in box:
        error = box["error"]
        raise ToolError(f"{name} raised {type(error).__name__}: {error}")
    return box.get("value")


def argument_problems(parameters: dict[str, Any], arguments: dict[str, Any]) -> list[str]:
    """What is wrong with ``arguments`` for a tool whose parameters have the JSON schema ``parameters``
    (``get_json_schema(fn)["function"]["parameters"]``): values of the wrong type, unknown and missing names.

    >>> properties = {"a": {"type": "integer"}, "b": {"type": ["string", "null"]}}
    >>> schema = {"type": "object", "properties": properties, "required": ["a"]}
    >>> argument_problems(schema, {"a": 1, "b": None})
    []
    >>> argument_problems(schema, {"a": True, "c": 2})
    ["'a' must be integer, got boolean", "unknown argument 'c' (the arguments are: a, b)"]
    """
    properties = parameters.get("properties", {})
    problems = []
    for key, value in arguments.items():
        if key not in properties:
            problems.append(
                f"unknown argument {str(key)[:40]!r} (the arguments are: {', '.join(properties)})"
            )
            continue
        problem = _type_problem(value, properties[key], repr(key))
        if problem:
            problems.append(problem)
    for key in parameters.get("required", []):
        if key not in arguments:
            kind = properties.get(key, {}).get("type")
            problems.append(f"missing {key!r}" + (f" ({_type_name(kind)})" if kind else ""))
    return problems


def _type_problem(value: Any, schema: dict[str, Any], where: str) -> str | None:
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_JSON_TYPES.get(k, lambda v: True)(value) for k in kinds):
            return f"{where} must be {_type_name(kind)}, got {_json_name(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where} must be one of {schema['enum']}, got {json.dumps(value)[:40]}"
    if isinstance(value, list):
        prefix = schema.get("prefixItems")
        if prefix is not None and len(value) != len(prefix):
            return f"{where} must have {len(prefix)} items, got {len(value)}"
        for k, item in enumerate(value):
            item_schema = prefix[k] if prefix is not None else schema.get("items", {})
            problem = _type_problem(item, item_schema, f"{where}[{k}]")
            if problem:
                return problem
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            problem = _type_problem(item, schema["additionalProperties"], f"{where}[{key!r}]")
            if problem:
                return problem
    return None


def _type_name(kind: Any) -> str:
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _json_name(value: Any) -> str:
    return next((name for name, test in _JSON_TYPES.items() if test(value) and name != "number"), "number")


# ---- describing the tools ---------------------------------------------------------------------------------
def template_supports_tools(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template reads the ``tools`` variable (``apply_chat_template(...,
    tools=...)`` then describes the tools itself; other templates ignore them silently)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    if not isinstance(template, str):
        return False
    import jinja2
    import jinja2.meta

    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return False


def describe_tools(schemas: Sequence[dict[str, Any]]) -> str:
    """The fallback description of the tools, appended to the system prompt of a template that does not use
    ``tools`` (SmolLM2's, textenv's fallback template): the schemas as JSON lines inside ``<tools>`` tags
    and how to call them (the format of Hermes / Qwen tool-calling templates).

    >>> print(describe_tools([{"type": "function", "function": {"name": "now", "description": "The time."}}]))
    You can call these tools:
    <tools>
    {"name": "now", "description": "The time."}
    </tools>
    To call one, write <tool_call>{"name": "<tool name>", "arguments": {<the arguments as a JSON object>}}</tool_call> and its answer comes back in the next turn.
    """  # noqa: E501
    lines = "\n".join(json.dumps(schema.get("function", schema), ensure_ascii=False) for schema in schemas)
    return (
        f"You can call these tools:\n<tools>\n{lines}\n</tools>\n"
        f"To call one, write {CALL_FORMAT} and its answer comes back in the next turn."
    )

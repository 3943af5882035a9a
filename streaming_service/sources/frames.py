"""Streamer frames: decode and check the envelope before schwab-py touches it; `BadFrame`.

`FrameDecoder` replaces schwab-py's `json.loads` (our client sets `StreamClient.json_decoder`;
schwab-py 1.5.1's `set_json_decoder` checks against `schwab.contrib.util`, which `import schwab`
does not load), so every raw frame goes through it, including those read while `login()`, SUBS or
ADD await their reply. It passes on only frames whose envelope schwab-py can dispatch without
failing. Any other frame is reported to `on_bad` and replaced by `{}`, which schwab-py skips, even
while it awaits a reply: a stray bad frame there does not abort the request. If the bad frame was
the reply, the request times out. The exceptions are a malformed "response" section, which is a
malformed reply, and Schwab's code 12: these raise (`BadFrame`, `StreamSevered`), so the request
(or `handle_message`) ends at once. The envelope it accepts:

    {"response": [{"requestid": "<digits>", "service": str, "command": str,
                   "content": {"code": int, "msg": ...}}, ...]}      (non-empty list)
    {"data": [{"service": <one we handle>, "content": [{...}, ...], ...}, ...]}   (non-empty lists)
    {"notify": [{"heartbeat": ...} | {"service": str, ...}, ...]}     (non-empty list)

(one or more sections in one object), parsed with orjson; a frame orjson refuses is parsed again
with stdlib `json` (NaN, Infinity, 1e400), so what is accepted is what `json.loads` accepts
(except integers beyond 64 bits, which orjson reads as floats: no field takes them either way).
A data entry may nest at most `MAX_DEPTH` levels (stock schwab-py deep-copies it recursively; ours
does not, but a 900-level value is no quote either). Item contents (prices, volumes, times) are
checked later by `QuoteMerger` and `OptionQuotes`, which raise `BadFrame` subclasses as well.

Messages and excerpts are at most `EXCERPT_CHARS` long (a 900 KB frame never makes a 900 KB log line).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Collection
from typing import Any, NoReturn

import orjson

__all__ = [
    "EXCERPT_CHARS",
    "MAX_DEPTH",
    "BadFrame",
    "FrameDecoder",
    "StreamSevered",
    "describe",
    "excerpt",
]

EXCERPT_CHARS = 200
MAX_DEPTH = 8  # data entry → content → item → value is 4; room for nested values, not for 900 levels
CLOSE_CONNECTION = 12  # Schwab response code: another login took this connection over
MALFORMED_RESPONSE = "malformed response"

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlist = _repr.maxdict = 10
_repr.maxlevel = 3


class BadFrame(ValueError):
    """A frame or item whose content cannot be used; it is skipped whole and counted.

    `kind` names the problem in a few words (logs and `StreamStats.bad_frame_kinds` group by it);
    the message says which value was wrong and is at most `EXCERPT_CHARS` long."""

    def __init__(self, message: str, *, kind: str = "bad item") -> None:
        super().__init__(message[:EXCERPT_CHARS])
        self.kind = kind


class StreamSevered(Exception):
    """Schwab closed the stream on its side (response code 12: another login took it over)."""


def excerpt(value: Any) -> str:
    """A bounded, printable excerpt of `value` (raw frame text/bytes or a parsed object)."""
    if isinstance(value, bytes):
        text = value[:EXCERPT_CHARS].decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value[:EXCERPT_CHARS]
    else:
        text = _repr.repr(value)
    return text[:EXCERPT_CHARS]


def describe(exc: BaseException | None) -> str:
    """`exc` as "TypeName: message", at most `EXCERPT_CHARS` long (for logs and `BadFrame`s)."""
    return f"{type(exc).__name__}: {exc}"[:EXCERPT_CHARS]


class FrameDecoder:
    """schwab-py JSON decoder (`StreamClient.json_decoder`) that checks the envelope (module docstring).

    `services`: the data services we have handlers for; data for any other is a bad frame.
    `on_bad`: called once with each bad frame that is skipped (not with those it raises)."""

    def __init__(self, services: Collection[str], on_bad: Callable[[BadFrame], None]) -> None:
        self._services = frozenset(services)
        self._on_bad = on_bad

    def decode_json_string(self, raw: str | bytes) -> dict[str, Any]:
        """schwab-py's hook: the parsed frame, or `{}` for a bad one (reported to `on_bad`).

        Raises `BadFrame` (kind "malformed response") and `StreamSevered`; nothing else."""
        try:
            return self.parse(raw)
        except BadFrame as exc:
            if exc.kind == MALFORMED_RESPONSE:
                raise
            self._on_bad(exc)
            return {}

    def parse(self, raw: str | bytes) -> dict[str, Any]:
        """Return the parsed frame. Raises `BadFrame` or `StreamSevered`; never anything else."""
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            frame = _too_deep(raw) if "depth limit" in str(exc) else _lenient(raw)
        if type(frame) is not dict:
            raise BadFrame(f"not a JSON object: {excerpt(raw)}", kind="not an object")
        known = False
        if "response" in frame:
            _check_responses(frame["response"])
            known = True
        if "data" in frame:
            self._check_data(frame["data"], raw, len(frame))
            known = True
        if "notify" in frame:
            _check_notify(frame["notify"])
            known = True
        if not known:
            raise BadFrame(f"no response, data or notify: {excerpt(frame)}", kind="unknown frame")
        return frame

    def _check_data(self, entries: Any, raw: str | bytes, sections: int) -> None:
        """Check the data section of `raw` (parsed: `entries`; `sections`: keys of the frame)."""
        if type(entries) is not list or not entries:
            raise BadFrame(f"data is not a non-empty list: {excerpt(entries)}", kind="malformed data")
        items = 0
        for entry in entries:
            service = entry.get("service") if type(entry) is dict else None
            if type(service) is not str:
                raise BadFrame(f"data entry without a service: {excerpt(entry)}", kind="malformed data")
            if service not in self._services:
                raise BadFrame(f"data of a service not subscribed: {excerpt(entry)}", kind="other service")
            content = entry.get("content")
            if (
                type(content) is not list
                or not content
                or not (type(content[0]) is dict if len(content) == 1 else all(map(_is_dict, content)))
            ):
                raise BadFrame(f"content is not a list of items: {excerpt(entry)}", kind="malformed data")
            items += len(content)
        if sections == 1 and _flat(raw, lists=1 + len(entries), objects=1 + len(entries) + items):
            return  # no container inside an item or an entry's other fields: 4 levels at most
        if any(_deeper_than(entry, MAX_DEPTH) for entry in entries):
            raise BadFrame(f"data nested deeper than {MAX_DEPTH}", kind="too deeply nested")


def _lenient(raw: str | bytes) -> Any:
    """What stdlib `json.loads` makes of a frame orjson refused (NaN, Infinity, 1e400, a lone
    surrogate escape...), so that such a value fails only its item, as before. Raises `BadFrame`."""
    try:
        return json.loads(raw)
    except RecursionError:
        _too_deep(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integer digit limit
        raise BadFrame(f"{str(exc)[:80]}: {excerpt(raw)}", kind="not JSON") from None


def _too_deep(raw: str | bytes) -> NoReturn:
    raise BadFrame(f"nested too deeply to parse: {excerpt(raw)}", kind="too deeply nested")


def _check_responses(responses: Any) -> None:
    if not isinstance(responses, list) or not responses:
        raise BadFrame(f"response is not a non-empty list: {excerpt(responses)}", kind=MALFORMED_RESPONSE)
    for response in responses:
        content = response.get("content") if isinstance(response, dict) else None
        code = content.get("code") if isinstance(content, dict) else None
        if (
            not isinstance(code, int)
            or isinstance(code, bool)
            or "msg" not in content  # type: ignore[operator]
            or not _request_id(response.get("requestid"))
            or not isinstance(response.get("service"), str)
            or not isinstance(response.get("command"), str)
        ):
            raise BadFrame(f"malformed response: {excerpt(response)}", kind=MALFORMED_RESPONSE)
        _raise_if_severed(content)


def _check_notify(notices: Any) -> None:
    if not isinstance(notices, list) or not notices:
        raise BadFrame(f"notify is not a non-empty list: {excerpt(notices)}", kind="malformed notify")
    for notice in notices:
        if not isinstance(notice, dict) or (
            "heartbeat" not in notice and not isinstance(notice.get("service"), str)
        ):
            raise BadFrame(f"malformed notify entry: {excerpt(notice)}", kind="malformed notify")
        _raise_if_severed(notice.get("content"))


def _raise_if_severed(content: Any) -> None:
    """Raise `StreamSevered` if a response's or notice's `content` carries Schwab's code 12."""
    if isinstance(content, dict) and content.get("code") == CLOSE_CONNECTION:
        raise StreamSevered(f"Schwab closed the stream (code 12): {excerpt(content.get('msg'))}")


def _request_id(value: Any) -> bool:
    """schwab-py does `int(requestid)`: accept what that reads as a small request counter."""
    if isinstance(value, str):
        return 0 < len(value) <= 9 and value.isascii() and value.isdigit()
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9


def _is_dict(value: Any) -> bool:
    return type(value) is dict


def _flat(raw: str | bytes, *, lists: int, objects: int) -> bool:
    """Whether `raw` has no more `[` and `{` than the envelope's own lists and objects (a fast,
    sufficient test that nothing nests; a bracket inside a string only makes it say False)."""
    if isinstance(raw, bytes):
        return raw.count(b"[") == lists and raw.count(b"{") == objects
    return raw.count("[") == lists and raw.count("{") == objects


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels in `value` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False

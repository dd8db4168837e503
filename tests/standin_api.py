"""A scripted stand-in of the Anthropic Messages API, for running the REAL `claude` CLI in tests.

Why: the fake CLI (tests/fake_claude.py) only imitates the CLI; the real one decides what a tool
may do (permission rules, denials), how sessions resume and fork, and how cost is computed. To test
against that without the network, the CLI is pointed (ANTHROPIC_BASE_URL) at this local server,
which answers every model call from a script instead of a model.

What: `POST /v1/messages` (any query string, e.g. `?beta=true`) on 127.0.0.1, streaming
(server-sent events: message_start, per block content_block_start / _delta / _stop, message_delta,
message_stop) or plain JSON when the body has no `"stream": true`. Anything else is a 404 JSON error.
One threaded server can serve several CLI processes at once.

Choosing the answer (checked against CLI 2.1.332's requests: it posts to `/v1/messages?beta=true`;
`system` holds the default prompt with --append-system-prompt at its end; `messages` starts with a
user message of <system-reminder> text blocks (git status, attribution) plus the prompt's text
block, then a role "system" message (environment, skills list); one assistant message per answer,
one user message of tool_result blocks per round; a `--resume ID --fork-session -p P` request is the
old conversation followed by a user message holding only P's text block):
  * script: `marker` must be a substring of the system prompt (the text of `system` and of the
    role "system" messages) or of the text of the FIRST user message (all its text blocks,
    reminders included). A script given `on_prompt=S` also needs S in the latest prompt (below)
    and wins over plain scripts; otherwise the first registered wins; no match -> `api.default`.
  * turn: the number of assistant messages after the last user message that carries a prompt,
    i.e. a text block not starting with <system-reminder> (tool_result and reminder blocks alone
    are no prompt, nor is the text a tool adds after its tool_result, like a skill's body).
    A session resumed or forked with a new prompt so starts again at turn 0.
    Past the end of a script: the last turn's text blocks (or "done"), stop_reason end_turn.
  * usage: message_start carries the turn's input/cache counts (output_tokens 1), message_delta
    the whole usage; the CLI's result event then totals exactly what was scripted.

    with StandIn() as api:
        api.script("task is `a`", [Turn([tool("Write", {...})]), Turn([text("done")])])
        subprocess.run([claude, "-p", ...], env=cli_env(tmp / "home", api.url))
        api.requests   # [{"path", "headers", "body", "marker", "turn"}, ...]
"""

import itertools
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DEFAULT_USAGE = {"input_tokens": 10, "output_tokens": 5}
_ids = itertools.count(1)


def tool(name, input):
    """A tool_use block with a fresh, unique id."""
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}{uuid.uuid4().hex[:20]}", "name": name, "input": input}


def text(s):
    return {"type": "text", "text": s}


class Turn:
    """One assistant message: its content blocks and its usage (cache_* fields optional).
    BLOCKS may be a callable taking the request body and returning the blocks, for answers
    that depend on the request (a path inside the agent's worktree, named in its system prompt)."""

    def __init__(self, blocks, usage=None):
        self.blocks = blocks if callable(blocks) else list(blocks)
        self.usage = dict(usage or DEFAULT_USAGE)

    def resolved(self, body):
        """This turn with its blocks for BODY (a callable's tool_use blocks get fresh ids)."""
        if not callable(self.blocks):
            return self
        return Turn(list(self.blocks(body)), self.usage)

    @property
    def stop_reason(self):
        return "tool_use" if any(b["type"] == "tool_use" for b in self.blocks) else "end_turn"


def system_text(body):
    """The whole system prompt of a request (for a callable Turn to read, e.g. our worktree path)."""
    return _system_text(body)


def latest_prompt(body):
    """The prompt the request answers (a resumed session's new prompt, or the first one)."""
    return _latest_prompt(body.get("messages") or [])


def cli_env(home, url):
    """os.environ plus a throwaway HOME (created) and everything that points the CLI at `url`."""
    home = os.fspath(home)
    os.makedirs(home, exist_ok=True)
    env = dict(os.environ)
    for var in ("CLAUDE_CONFIG_DIR", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_MODEL",
                "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY",
                "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    env.update(HOME=home, ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-ant-standin-key",
               DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1", DISABLE_AUTOUPDATER="1",
               CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", NO_PROXY="127.0.0.1,localhost")
    return env


# --------------------------------------------------------------------------- reading a request
def _texts(content):
    """The text blocks of a message's content (a string counts as one text block)."""
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or () if isinstance(b, dict) and b.get("type") == "text"]


def _prompt_texts(message):
    """The prompt text of a user message: its text blocks that are not <system-reminder>s."""
    return [t for t in _texts(message.get("content")) if not t.lstrip().startswith("<system-reminder>")]


def _system_text(body):
    """The system prompt: `system` plus the role "system" messages the CLI puts in `messages`."""
    parts = _texts(body.get("system") or [])
    for message in body.get("messages") or ():
        if message.get("role") == "system":
            parts += _texts(message.get("content"))
    return "\n".join(parts)


def _has_tool_result(message):
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _is_prompt(messages, i):
    """Whether messages[i] is a prompt: a user message with text that is no reminder, and not
    what a tool put in the conversation (a skill's text follows its tool_result as a user
    message of its own, measured with 2.1.332: it answers a tool call, it starts no turn)."""
    message = messages[i]
    if message.get("role") != "user" or not _prompt_texts(message) or _has_tool_result(message):
        return False
    return not (i > 0 and messages[i - 1].get("role") == "user" and _has_tool_result(messages[i - 1]))


def _turn_index(messages):
    """Assistant messages after the last user message that carries a prompt."""
    turn = 0
    for i, message in enumerate(messages):
        if _is_prompt(messages, i):
            turn = 0
        elif message.get("role") == "assistant":
            turn += 1
    return turn


def _latest_prompt(messages):
    for i in range(len(messages) - 1, -1, -1):
        if _is_prompt(messages, i):
            return "\n".join(_prompt_texts(messages[i]))
    return ""


# --------------------------------------------------------------------------- the server
class StandIn:
    def __init__(self):
        self.default = [Turn([text("done")])]
        self.requests = []
        self._scripts = []  # (marker, on_prompt, turns)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.standin = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = None

    def script(self, marker, turns, on_prompt=None):
        with self._lock:
            self._scripts.append((marker, on_prompt, list(turns)))

    def __enter__(self):
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    MAX_REQUESTS = 400  # a script that loops (a misread turn) ends the session instead of the machine

    def answer(self, path, headers, body):
        """The message (a dict) answering one request, after logging the request."""
        if len(self.requests) >= self.MAX_REQUESTS:
            return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                    "model": body.get("model", "claude-standin"), "content": [text("stand-in: request limit reached")],
                    "stop_reason": "end_turn", "stop_sequence": None, "usage": dict(DEFAULT_USAGE)}
        messages = body.get("messages") or []
        first_user = next((m for m in messages if m.get("role") == "user"), {})
        haystack = _system_text(body) + "\n" + "\n".join(_texts(first_user.get("content")))
        prompt = _latest_prompt(messages)
        with self._lock:
            matching = [(m, p, t) for m, p, t in self._scripts
                        if m in haystack and (p is None or p in prompt)]
            matching.sort(key=lambda s: s[1] is None)  # stable: on_prompt scripts first
            marker, turns = (matching[0][0], matching[0][2]) if matching else (None, self.default)
            turn = _turn_index(messages)
            self.requests.append({"path": path, "headers": headers, "body": body, "marker": marker, "turn": turn})
        if turn < len(turns):
            current = turns[turn].resolved(body)
        else:
            last = turns[-1].resolved(body) if turns else Turn([])
            current = Turn([b for b in last.blocks if b["type"] == "text"] or [text("done")], last.usage)
        usage = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, **current.usage}
        # every answer's tool calls get ids of their own: a script's turn answered again (a resumed
        # session starts the script over) with the ids of the first time reads to the CLI as the
        # same call repeated, which it shows as "[Tool use interrupted]" (measured with 2.1.332)
        blocks = [dict(b, id=tool(b["name"], {})["id"]) if b.get("type") == "tool_use" else b for b in current.blocks]
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": body.get("model", "claude-standin"), "content": blocks,
                "stop_reason": current.stop_reason, "stop_sequence": None, "usage": usage}


def _events(message):
    """The server-sent events that stream `message`, as (name, data) pairs."""
    usage = message["usage"]
    start = dict(message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))
    yield "message_start", {"type": "message_start", "message": start}
    for i, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": dict(block, input={})}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            yield "content_block_start", {"type": "content_block_start", "index": i,
                                          "content_block": {"type": "text", "text": ""}}
            delta = {"type": "text_delta", "text": block["text"]}
        yield "content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield "message_delta", {"type": "message_delta", "usage": usage,
                            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None}}
    yield "message_stop", {"type": "message_stop"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, payload, content_type="application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": f"no {self.path}"}})

    do_GET = do_PUT = do_DELETE = _not_found

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlsplit(self.path).path != "/v1/messages":
            return self._not_found()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad JSON"}})
        message = self.server.standin.answer(self.path, dict(self.headers), body)
        if not body.get("stream"):
            return self._send(200, message)
        stream = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in _events(message))
        self._send(200, stream.encode(), "text/event-stream")

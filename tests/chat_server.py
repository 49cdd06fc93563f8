"""A local OpenAI-compatible chat endpoint on 127.0.0.1 for the model-stage tests.

It answers POST /v1/chat/completions like a real server (the same JSON shapes, usage counts,
Retry-After on 429), with deterministic replies so the tests can assert exact counts:
  - a translate prompt: every Latin word of the text becomes 词, except single option letters
    A-H; digits, punctuation and #### stay, so a faithful "translation" passes validation
  - a judge prompt (it holds "Response:"): "Score: N. ..." with N = 1 + len(output) % 10
  - a Belle-eval judge prompt (forge eval's, it holds BELLE_MARK): see belle_judge_reply
  - anything else: the prompt's last line upper-cased
State switches make it misbehave on purpose: `fail` (status codes to answer first, in order),
`lose_numbers` (replies drop every digit), `delay` (seconds per request).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = "exactly as written.\n\n"  # the end of forge's default translate prompt


class State:
    def __init__(self):
        self.fail: list[int] = []
        self.lose_numbers = False
        self.delay = 0.0
        self.prompts: list[str] = []  # every request that got a 200
        self.statuses: list[int] = []
        self.lock = threading.Lock()


def fake_translate(text: str) -> str:
    return re.sub(r"[A-Za-z]+", lambda m: m.group() if re.fullmatch(r"[A-H]", m.group()) else "词", text)


BELLE_MARK = "模型回答：\n"  # where forge eval's Belle judge prompt puts the model's answer


def belle_judge_reply(answer: str) -> str:
    """A reason, then '得分: S' with S = (len(answer) % 11) / 10; no score at all when
    len(answer) % 4 == 0, so a test can predict which items are unparsable."""
    if len(answer) % 4 == 0:
        return "这个回答无法评价。"
    return f"回答与标准答案有差距。\n得分: {(len(answer) % 11) / 10}"


def reply_for(prompt: str, state: State) -> str:
    if BELLE_MARK in prompt:
        answer = prompt.split(BELLE_MARK, 1)[1].rsplit("\n\n", 1)[0]
        out = belle_judge_reply(answer)
    elif MARK in prompt:
        out = fake_translate(prompt.split(MARK, 1)[1])
    elif "Response:" in prompt:
        output = prompt.rsplit("Response:", 1)[1].strip()
        out = f"Score: {1 + len(output) % 10}. The response addresses the instruction."
    else:
        out = prompt.strip().splitlines()[-1].upper()
    if state.lose_numbers:
        out = re.sub(r"\d", "", out)
    return out


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args):
        pass

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed mid-request (the resume test does that on purpose)

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        state = self.state
        if state.delay:
            time.sleep(state.delay)
        with state.lock:
            status = state.fail.pop(0) if state.fail else 200
            state.statuses.append(status)
        if status != 200:
            err = {
                "error": {"message": "slow down" if status == 429 else "overloaded", "type": "server_error"}
            }
            return self._send(status, err, {"Retry-After": "0"} if status == 429 else None)
        prompt = body["messages"][-1]["content"]
        with state.lock:
            state.prompts.append(prompt)
        reply = reply_for(prompt, state)
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(reply) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                ],
                "usage": usage,
            },
        )


class ChatServer:
    def __init__(self):
        self.state = State()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

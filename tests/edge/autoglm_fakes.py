"""A fake phone and a fake model server for driving the real Open-AutoGLM PhoneAgent.

:class:`FakePhone` writes an ``adb`` executable (a small Python script) into a folder the
tests put first on ``PATH``. Open-AutoGLM shells out to ``adb`` for everything
(``phone_agent/adb/*.py``: ``subprocess.run(["adb", ...])``), so its real code runs
unchanged: screenshots (``screencap`` + ``pull`` of a small PNG), the foreground app
(``dumpsys window``), launches (``monkey -p <package>``), taps, keys, typing, and the checks
its ``main.py`` makes (``version``, ``devices``, ``ime list``). The phone's state is a folder:
``foreground`` (the package on screen) and ``log.jsonl`` (every command, in order).

:class:`FakeModelServer` speaks the slice of the OpenAI API the agent uses:
``POST /v1/chat/completions``, streamed as server-sent events when ``stream`` is true
(``phone_agent/model/client.py`` always streams) and plain JSON otherwise (``main.py``'s
connectivity check). Replies come from a script, one per streamed request; the word
``"<http 400>"`` answers with an error instead. Every request body is kept. It also answers
requests sent to it *as an HTTP proxy* (absolute URLs), which is how a test points the real
agent at a "remote" endpoint without any network.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LAUNCHER = "com.android.launcher3"

ADB_SCRIPT = r"""
import json, os, shutil, sys

state = os.environ["FAKE_ADB_STATE"]
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
with open(os.path.join(state, "log.jsonl"), "a", encoding="utf-8") as log:
    log.write(json.dumps(args, ensure_ascii=False) + "\n")
fg_file = os.path.join(state, "foreground")

def foreground():
    with open(fg_file, encoding="utf-8") as f:
        return f.read().strip()

def set_foreground(package):
    with open(fg_file, "w", encoding="utf-8") as f:
        f.write(package)

if args == ["version"]:
    print("Android Debug Bridge version 1.0.41")
elif args[:1] == ["devices"]:
    print("List of devices attached")
    print("emulator-5554\tdevice product:sdk model:Fake_Phone device:fake transport_id:1")
elif args[:1] == ["pull"]:
    shutil.copyfile(os.path.join(state, "screen.png"), args[2])
elif args[:1] == ["shell"]:
    cmd = args[1:]
    if cmd[:2] == ["dumpsys", "window"]:
        pkg = foreground()
        print(f"  mCurrentFocus=Window{{4f2a u0 {pkg}/{pkg}.MainActivity}}")
        print(f"  mFocusedApp=ActivityRecord{{9c1 u0 {pkg}/.MainActivity t12}}")
    elif cmd[:1] == ["monkey"]:
        set_foreground(cmd[cmd.index("-p") + 1])
        print("Events injected: 1")
    elif cmd[:3] == ["input", "keyevent", "KEYCODE_HOME"]:
        set_foreground("com.android.launcher3")
    elif cmd[:3] == ["ime", "list", "-s"]:
        print("com.android.adbkeyboard/.AdbIME")
    elif cmd[:4] == ["settings", "get", "secure", "default_input_method"]:
        print("com.android.adbkeyboard/.AdbIME")
"""


class FakePhone:
    """An Android phone behind a fake ``adb`` on ``PATH`` (see the module docstring)."""

    def __init__(self, root: Path, foreground: str = LAUNCHER) -> None:
        from PIL import Image

        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        adb = self.bin / "adb"
        adb.write_text(f"#!{sys.executable} -S\n{ADB_SCRIPT}", encoding="utf-8")
        adb.chmod(adb.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        Image.new("RGB", (108, 240), color="white").save(self.state / "screen.png")
        (self.state / "log.jsonl").write_text("", encoding="utf-8")
        self.foreground = foreground

    @property
    def foreground(self) -> str:
        return (self.state / "foreground").read_text(encoding="utf-8").strip()

    @foreground.setter
    def foreground(self, package: str) -> None:
        (self.state / "foreground").write_text(package, encoding="utf-8")

    def env(self) -> dict[str, str]:
        """What a process needs to use this phone (PATH first, the state folder)."""
        return {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_ADB_STATE": str(self.state),
        }

    def commands(self) -> list[list[str]]:
        lines = (self.state / "log.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def clear_log(self) -> None:
        (self.state / "log.jsonl").write_text("", encoding="utf-8")


def do(action: str, **kw: Any) -> str:
    """A model reply in AutoGLM's format: thinking, then ``do(action=..., ...)``."""
    args = ", ".join([f'action="{action}"'] + [f"{k}={_py(v)}" for k, v in kw.items()])
    return f"我来操作。do({args})"


def finish(message: str) -> str:
    return f'任务完成。finish(message="{message}")'


def _py(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)


ERROR = "<http 400>"


class FakeModelServer:
    """An OpenAI-compatible chat endpoint on 127.0.0.1 (see the module docstring)."""

    def __init__(self) -> None:
        self.replies: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.paths.append(self.path)
                    if not body.get("stream"):
                        self._json(200, _completion("ok"))
                        return
                    server.requests.append(body)
                    reply = server.replies.pop(0) if server.replies else finish("done")
                if reply == ERROR:
                    self._json(400, {"error": {"message": "bad request", "type": "invalid"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for chunk in _chunks(reply):
                    self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _json(self, code: int, doc: dict[str, Any]) -> None:
                raw = json.dumps(doc, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests.clear()
        self.paths.clear()

    def first_texts(self) -> list[str]:
        """The text of the first user message of every chat (the task plus screen info)."""
        out = []
        for body in self.requests:
            users = [m for m in body["messages"] if m["role"] == "user"]
            if len(users) == 1:
                out.append(_text(users[0]))
        return out

    def system_prompts(self) -> list[str]:
        return [
            m["content"]
            for body in self.requests
            for m in body["messages"][:1]
            if m["role"] == "system"
            and len([u for u in body["messages"] if u["role"] == "user"]) == 1
        ]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _text(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content if c.get("type") == "text")


def _completion(content: str) -> dict[str, Any]:
    return {
        "id": "cmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "autoglm-phone-9b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunks(content: str) -> Iterator[dict[str, Any]]:
    pieces = [content[i : i + 7] for i in range(0, len(content), 7)] or [""]
    for i, piece in enumerate(pieces):
        delta: dict[str, Any] = {"content": piece}
        if i == 0:
            delta["role"] = "assistant"
        yield {
            "id": "chunk-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "autoglm-phone-9b",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
    yield {
        "id": "chunk-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "autoglm-phone-9b",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }

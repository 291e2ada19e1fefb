"""describe_targets against a local chat-completions server: answers, cache, retries and fallbacks."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sampref_bench.prompts.llm_text import ENV_BASE_URL, ENV_KEY, LLMSettings, describe_targets, question_for
from sampref_bench.utilities.atomic import load_json

ANSWER = "A breast tumor in ultrasound is usually a dark, oval mass with smooth or spiculated margins."
TARGETS = {"tumor": "breast tumor"}


class FakeChatServer:
    """A chat-completions endpoint on 127.0.0.1 that records each request body and answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 200
        self.answer = ANSWER
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests.append({"path": self.path, "body": json.loads(body)})
                if fake.status != 200:
                    payload = {"error": {"message": "server exploded", "type": "server_error", "code": None}}
                else:
                    payload = {
                        "id": f"chatcmpl-{len(fake.requests)}",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": fake.requests[-1]["body"].get("model", "?"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": fake.answer},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
                    }
                data = json.dumps(payload).encode()
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    fake = FakeChatServer()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def no_openai_env(monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_BASE_URL, raising=False)


def _settings(base_url: str, **kwargs) -> LLMSettings:
    return LLMSettings(base_url=base_url, backoff_s=0.01, timeout_s=5.0, **kwargs)


def test_answer_is_returned_cached_and_not_asked_twice(server, tmp_path):
    settings = _settings(server.base_url)
    warnings: list[str] = []
    first = describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="sk-test", warn=warnings.append)
    assert first == {"tumor": {"text": ANSWER, "source": "llm", "model": "gpt-4o-mini"}}
    assert len(server.requests) == 1 and server.requests[0]["path"] == "/v1/chat/completions"

    second = describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="sk-test", warn=warnings.append)
    assert second == {"tumor": {"text": ANSWER, "source": "cache", "model": "gpt-4o-mini"}}
    assert len(server.requests) == 1
    # cached answers need no key either
    third = describe_targets(TARGETS, "ultrasound", tmp_path, settings, warn=warnings.append)
    assert third["tumor"]["source"] == "cache" and len(server.requests) == 1
    assert warnings == []


def test_request_has_temperature_zero_model_and_no_image_content(server, tmp_path):
    settings = _settings(server.base_url, model="my-local-model")
    describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="sk-test", warn=lambda _: None)
    body = server.requests[0]["body"]
    assert body["temperature"] == 0
    assert body["model"] == "my-local-model"
    assert body["messages"] == question_for("breast tumor", "ultrasound")
    for message in body["messages"]:
        assert isinstance(message["content"], str)  # plain text, never a list of parts (image_url)
    assert "image_url" not in json.dumps(body)
    user = body["messages"][-1]["content"]
    assert "breast tumor" in user and "ultrasound" in user
    # the template's only variable parts are the two strings
    assert question_for("X", "Y") == [
        {**m, "content": m["content"].replace("breast tumor", "X").replace("ultrasound", "Y")}
        for m in question_for("breast tumor", "ultrasound")
    ]


def test_server_error_is_retried_then_dataset_text_with_warning(server, tmp_path):
    server.status = 500
    settings = _settings(server.base_url, retries=2)
    warnings: list[str] = []
    out = describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="sk-test", warn=warnings.append)
    assert out == {"tumor": {"text": "breast tumor", "source": "dataset_text", "model": None}}
    assert len(server.requests) == 1 + settings.retries
    assert len(warnings) == 1
    assert server.base_url in warnings[0] and "InternalServerError" in warnings[0]
    assert not list(tmp_path.glob("llm_*.json"))  # a fallback is not cached as an LLM answer


def test_empty_answer_counts_as_failure(server, tmp_path):
    server.answer = "   "
    warnings: list[str] = []
    out = describe_targets(
        TARGETS, "ultrasound", tmp_path, _settings(server.base_url, retries=1), api_key="k", warn=warnings.append
    )
    assert out["tumor"]["source"] == "dataset_text"
    assert len(server.requests) == 2 and "empty answer" in warnings[0]


def test_unreachable_endpoint_falls_back(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    warnings: list[str] = []
    out = describe_targets(
        TARGETS, "ultrasound", tmp_path, _settings(base_url, retries=1), api_key="sk-test", warn=warnings.append
    )
    assert out["tumor"]["source"] == "dataset_text" and out["tumor"]["text"] == "breast tumor"
    assert len(warnings) == 1 and base_url in warnings[0] and "APIConnectionError" in warnings[0]


def test_no_api_key_uses_dataset_text_without_request(server, tmp_path):
    targets = {"tumor": "breast tumor", "cyst": "breast cyst"}
    warnings: list[str] = []
    out = describe_targets(targets, "ultrasound", tmp_path, _settings(server.base_url), warn=warnings.append)
    assert out == {label: {"text": text, "source": "dataset_text", "model": None} for label, text in targets.items()}
    assert server.requests == []
    assert len(warnings) == 1 and ENV_KEY in warnings[0] and "not cached" in warnings[0]
    assert not list(tmp_path.glob("llm_*.json"))


def test_api_key_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_KEY, "sk-env")
    out = describe_targets(TARGETS, "ultrasound", tmp_path, _settings(server.base_url), warn=lambda _: None)
    assert out["tumor"]["source"] == "llm" and len(server.requests) == 1


def test_cache_file_is_valid_json_written_atomically(server, tmp_path):
    settings = _settings(server.base_url)
    targets = {"tumor": "breast tumor", "cyst": "breast cyst"}
    describe_targets(targets, "ultrasound", tmp_path, settings, api_key="sk-test", warn=lambda _: None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"llm_{settings.key()}.json"]  # no temporary siblings left behind
    cache = load_json(tmp_path / files[0])
    assert cache["answers"] == {"ultrasound": {"breast tumor": ANSWER, "breast cyst": ANSWER}}
    assert cache["settings"]["model"] == "gpt-4o-mini" and cache["settings"]["base_url"] == server.base_url
    assert "sk-test" not in (tmp_path / files[0]).read_text()


def test_other_settings_use_another_cache_file(server, tmp_path, monkeypatch):
    a = _settings(server.base_url)
    b = _settings(server.base_url, model="another-model")
    c = _settings(server.base_url, temperature=0.5)
    assert len({a.key(), b.key(), c.key()}) == 3
    for settings in (a, b):
        describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="sk-test", warn=lambda _: None)
    assert len(server.requests) == 2
    assert {p.name for p in tmp_path.glob("llm_*.json")} == {f"llm_{a.key()}.json", f"llm_{b.key()}.json"}
    # the endpoint is part of the key, whether given directly or through the environment
    monkeypatch.setenv(ENV_BASE_URL, server.base_url)
    assert LLMSettings(backoff_s=0.01).key() == LLMSettings(base_url=server.base_url + "/", backoff_s=0.01).key()
    assert LLMSettings().key() != _settings("http://elsewhere/v1").key()


def test_modality_is_part_of_the_cached_question(server, tmp_path):
    settings = _settings(server.base_url)
    describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="k", warn=lambda _: None)
    out = describe_targets(TARGETS, "MRI", tmp_path, settings, api_key="k", warn=lambda _: None)
    assert out["tumor"]["source"] == "llm" and len(server.requests) == 2
    assert "MRI" in server.requests[1]["body"]["messages"][-1]["content"]


def test_malformed_cache_is_an_error_naming_it(tmp_path):
    from sampref_bench.utilities.errors import SamprefError

    settings = LLMSettings(base_url="http://127.0.0.1:9/v1")
    path = tmp_path / f"llm_{settings.key()}.json"
    path.write_text('{"answers": [1, 2]}')
    with pytest.raises(SamprefError, match=str(path.name)):
        describe_targets(TARGETS, "ultrasound", tmp_path, settings, api_key="k", warn=lambda _: None)


@pytest.mark.parametrize("field, value", [("retries", -1), ("backoff_s", -0.5), ("timeout_s", 0), ("model", "")])
def test_invalid_settings_are_refused(field, value):
    from sampref_bench.utilities.errors import SamprefError

    with pytest.raises(SamprefError, match=field.split("_")[0]):
        LLMSettings(**{field: value})


def test_settings_key_is_12_hex():
    key = LLMSettings(base_url="http://x/v1").key()
    assert len(key) == 12 and set(key) <= set("0123456789abcdef")


def test_labels_sharing_a_target_text_ask_once(server, tmp_path):
    targets = {"left_kidney": "kidney", "right_kidney": "kidney"}
    out = describe_targets(targets, "CT", tmp_path, _settings(server.base_url), api_key="k", warn=lambda _: None)
    assert [v["source"] for v in out.values()] == ["llm", "llm"] and len(server.requests) == 1

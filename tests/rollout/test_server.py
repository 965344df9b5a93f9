"""The dedicated-server path on CPU: HTTP rollout server + client, weight pushes, timeouts, retries, clear errors."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from synthetic import shapes_image

from cascade_rl.models import build_tiny_internvl
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams
from cascade_rl.rollout.client import EngineUnavailable, ServerEngine
from cascade_rl.rollout.server import RolloutServer

SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=5, seed=4)


def requests():
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    return [
        RolloutRequest("a", messages, [shapes_image(128, 64)], {"answer": "3"}),
        RolloutRequest("b", messages, [shapes_image(128, 64)], {"answer": "3"}, assistant_prefix="There are"),
    ]


@pytest.fixture
def served():
    model, processor = build_tiny_internvl("tiny", seed=0)
    server = RolloutServer(HFEngine(model, processor, max_tiles=4), model, port=0, model_path="tiny")
    server.start_in_thread()
    yield server, processor
    server.shutdown()


def test_generate_over_http_equals_the_local_engine(served):
    server, processor = served
    remote = ServerEngine(server.url).generate(requests(), n=3, sampling=SAMPLING)
    local_model, _ = build_tiny_internvl("tiny", seed=0)
    local = HFEngine(local_model, processor, max_tiles=4).generate(requests(), n=3, sampling=SAMPLING)
    assert [r.token_ids for r in remote] == [r.token_ids for r in local]
    assert [r.text for r in remote] == [r.text for r in local]  # the assistant prefix travels with request "b"
    assert all(r.text.startswith("There are") for r in remote[3:])
    assert [r.meta for r in remote] == [{"answer": "3"}] * 6
    torch.testing.assert_close(torch.tensor(remote[0].logprobs), torch.tensor(local[0].logprobs))


@pytest.mark.parametrize("transport", ["http", "gloo"])
def test_weight_pushes_reach_the_server(served, transport):
    server, _ = served
    before = {n: p.detach().clone() for n, p in server.model.named_parameters()}
    client = ServerEngine(server.url, weight_transport=transport, timeout_s=30, bucket_bytes=64 * 1024)
    for version, seed in ((1, 1), (2, 2)):  # the second push reuses the group (gloo) and overwrites the first
        trainer_model, _ = build_tiny_internvl("tiny", seed=seed)  # different weights, same architecture
        trainer_model.model.vision_tower.requires_grad_(False)  # frozen parts are not sent
        client.update_weights(trainer_model)
        assert client.health()["weights_version"] == version
        served_params = dict(server.model.named_parameters())
        for name, param in trainer_model.named_parameters():
            expected = param if param.requires_grad else before[name]
            assert torch.equal(served_params[name], expected), name


def test_group_push_of_unknown_parameters_fails_at_once(served):
    server, _ = served
    client = ServerEngine(server.url, weight_transport="gloo", timeout_s=30, retries=1)
    stranger = torch.nn.Linear(2, 2)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"/weights/group/update.*unknown parameters \['bias', 'weight'\]"):
        client.update_weights(stranger)
    assert time.monotonic() - started < 10  # the names are checked before any tensor is sent, not after a timeout


def test_group_push_to_a_server_that_stops_receiving_names_url_and_step(served, monkeypatch):
    server, _ = served
    client = ServerEngine(server.url, weight_transport="gloo", timeout_s=2, retries=2, backoff_s=0.01)
    trainer_model, _ = build_tiny_internvl("tiny", seed=1)
    client.update_weights(trainer_model)  # the group forms and one push succeeds
    monkeypatch.setattr(server, "start_group_update", lambda body: {"status": "receiving"})  # then it never receives
    client.step = 7
    started = time.monotonic()
    with pytest.raises(
        EngineUnavailable, match=rf"rollout server {server.url}/weights/group/update at training step 7"
    ):
        client.update_weights(trainer_model)
    elapsed = time.monotonic() - started
    assert 2 * 2 <= elapsed < 20  # two tries, each ending at the 2 s transfer timeout


def test_a_group_push_retried_after_a_failed_transfer_lands(served, monkeypatch):
    server, _ = served
    client = ServerEngine(server.url, weight_transport="gloo", timeout_s=2, retries=2, backoff_s=0.01)
    real_start = server.start_group_update
    calls = []

    def fail_once(body):  # the first announced transfer is never received; the retry goes through a new group
        calls.append(body["version"])
        return {"status": "receiving"} if len(calls) == 1 else real_start(body)

    monkeypatch.setattr(server, "start_group_update", fail_once)
    trainer_model, _ = build_tiny_internvl("tiny", seed=1)
    client.update_weights(trainer_model)
    assert calls == [1, 1] and client.health()["weights_version"] == 1
    served_params = dict(server.model.named_parameters())
    assert all(torch.equal(served_params[n], p) for n, p in trainer_model.named_parameters())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_server_is_named_with_the_step():
    client = ServerEngine(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, retries=2, backoff_s=0.01)
    client.step = 12
    with pytest.raises(
        EngineUnavailable, match=r"rollout server http://127\.0\.0\.1:\d+/generate at training step 12"
    ):
        client.generate(requests(), n=1, sampling=SAMPLING)


def test_a_hanging_server_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    client = ServerEngine(url, timeout_s=0.3, retries=2, backoff_s=0.01)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="no answer after 2 tries"):
        client.health()
    assert time.monotonic() - started < 5
    listener.close()


def test_transient_unavailability_is_retried_with_backoff():
    answers = [503, 503, 200]

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self):
            code = answers.pop(0)
            body = b'{"status": "ok", "model": "m", "weights_version": 0}' if code == 200 else b'{"error": "busy"}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = ServerEngine(f"http://127.0.0.1:{httpd.server_address[1]}", retries=3, backoff_s=0.01)
        assert client.health()["status"] == "ok" and answers == []
    finally:
        httpd.shutdown()


def test_a_server_side_error_is_reported_not_retried(served):
    server, _ = served
    client = ServerEngine(server.url, retries=3, backoff_s=0.01)
    bad = [RolloutRequest("x", [{"role": "user", "content": [{"type": "image"}]}], [])]  # image part, no image
    with pytest.raises(EngineUnavailable, match="server error 500: ValueError: the conversation has more image"):
        client.generate(bad, n=1, sampling=SAMPLING)


class WeightOwningEngine:
    """Stands in for vLLM behind the server: owns its weights and takes them through `load_weights` as they come."""

    def __init__(self):
        self.loaded: dict[str, torch.Tensor] = {}

    def load_weights(self, named) -> None:
        for name, tensor in named:
            self.loaded[name] = tensor.clone()

    def generate(self, requests, *, n, sampling):
        return []

    def close(self) -> None:
        pass


@pytest.mark.parametrize("transport", ["http", "gloo"])
def test_an_engine_owning_its_weights_needs_only_their_names(tiny_checkpoint, transport):
    from cascade_rl.models.io import policy_parameter_names

    engine = WeightOwningEngine()
    names = policy_parameter_names(tiny_checkpoint)  # built on the meta device: no weights loaded
    server = RolloutServer(engine, param_names=names, port=0, model_path=str(tiny_checkpoint))
    server.start_in_thread()
    try:
        trainer_model, _ = build_tiny_internvl("tiny", seed=3)
        trainer_model.model.vision_tower.requires_grad_(False)
        client = ServerEngine(server.url, weight_transport=transport, timeout_s=30, bucket_bytes=64 * 1024)
        client.update_weights(trainer_model)
        sent = {n: p for n, p in trainer_model.named_parameters() if p.requires_grad}
        assert engine.loaded.keys() == sent.keys() and client.health()["weights_version"] == 1
        assert all(torch.equal(engine.loaded[n], p) for n, p in sent.items())
        with pytest.raises(EngineUnavailable, match=r"unknown parameters \['bias', 'weight'\]"):
            ServerEngine(server.url, weight_transport=transport, timeout_s=30, retries=1).update_weights(
                torch.nn.Linear(2, 2)
            )
    finally:
        server.shutdown()


def test_a_server_without_a_model_needs_a_weight_owning_engine():
    model, processor = build_tiny_internvl("tiny", seed=0)
    with pytest.raises(ValueError, match="param_names with an engine that loads weights itself"):
        RolloutServer(HFEngine(model, processor), param_names={"x"}, port=0)


def read_http_reply(conn) -> str:
    """Status line, headers and the whole body (by its Content-Length): one recv may return only part of it."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(served):
    server, _ = served
    server.max_body_bytes = 1000
    claimed = 10**12  # a Content-Length no one sends: the server must answer without waiting for the body
    with socket.create_connection(server.httpd.server_address[:2], timeout=30) as conn:
        conn.sendall(f"POST /weights HTTP/1.1\r\nHost: x\r\nContent-Length: {claimed}\r\n\r\n".encode())
        answer = read_http_reply(conn)
    assert answer.startswith("HTTP/1.0 413") or answer.startswith("HTTP/1.1 413"), answer[:80]
    assert f"{claimed} bytes > the limit of 1000" in answer
    assert server.weights_version == 0

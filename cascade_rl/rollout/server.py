"""A rollout server on dedicated devices: `cascade-rl serve --model PATH` puts any engine behind HTTP.

Endpoints (JSON): GET /health → {"status", "model", "weights_version"}; POST /generate {"requests", "n",
"sampling"} → {"rollouts"}; POST /weights (safetensors bytes, header X-Weights-Version) → {"weights_version"}.
Binds 127.0.0.1 unless told otherwise. With `--engine vllm` the engine is a vLLM LLM on the server's GPUs (not yet
verified on a GPU); `--engine hf` serves transformers generate, which is what the CPU tests run.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from cascade_rl.rollout.wire import (
    request_from_json,
    rollout_to_json,
    sampling_from_json,
    weights_from_bytes,
)

logger = logging.getLogger(__name__)


class RolloutServer:
    """Serves `engine` (a RolloutEngine) and applies weight updates to `model` (the engine's policy)."""

    def __init__(self, engine, model, *, host: str = "127.0.0.1", port: int = 8000, model_path: str = ""):
        self.engine, self.model, self.model_path = engine, model, model_path
        self.weights_version = 0
        self.lock = threading.Lock()  # one generate or weight update at a time
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_path, "weights_version": self.weights_version}

    def generate(self, body: dict) -> dict:
        requests = [request_from_json(r) for r in body["requests"]]
        with self.lock:
            rollouts = self.engine.generate(requests, n=int(body["n"]), sampling=sampling_from_json(body["sampling"]))
        return {"rollouts": [rollout_to_json(r) for r in rollouts]}

    def load_weights(self, data: bytes, version: int) -> dict:
        tensors = weights_from_bytes(data)
        params = dict(self.model.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ValueError(f"weights for unknown parameters {unknown[:3]}; trainer and server models differ")
        with self.lock, torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
            self.engine.update_weights(self.model)
            self.weights_version = version
        return {"weights_version": version}

    def serve_forever(self) -> None:
        logger.info("rollout server for %s on %s", self.model_path, self.url)
        self.httpd.serve_forever()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: RolloutServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, server.health())
            return self._reply(404, {"error": f"no endpoint {self.path}"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if self.path == "/generate":
                    return self._reply(200, server.generate(json.loads(body)))
                if self.path == "/weights":
                    return self._reply(200, server.load_weights(body, int(self.headers.get("X-Weights-Version", 0))))
                return self._reply(404, {"error": f"no endpoint {self.path}"})
            except Exception as err:  # the client gets the reason; the server keeps serving
                logger.error("%s failed:\n%s", self.path, traceback.format_exc())
                return self._reply(500, {"error": f"{type(err).__name__}: {err}"})

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # quiet: the trainer's logs matter more
            logger.debug(format, *args)

    return Handler

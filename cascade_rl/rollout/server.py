"""A rollout server on dedicated devices: `cascade-rl serve --model PATH` puts any engine behind HTTP.

Endpoints (JSON): GET /health → {"status", "model", "weights_version"}; POST /generate {"requests", "n",
"sampling"} → {"rollouts"}; POST /weights (safetensors bytes, header X-Weights-Version) → {"weights_version"}.
Weights over a collective (`cascade_rl.rollout.collective`; NCCL between GPUs, gloo on CPUs):
POST /weights/group {"backend", "host", "port", "timeout_s"} joins the trainer's group as rank 1;
POST /weights/group/update {"version", "specs", "bucket_bytes"} checks the names and starts receiving in the
background; POST /weights/group/wait → {"weights_version"} once the update is applied, or the receive's error.
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

from cascade_rl.rollout.collective import TensorSpec, WeightGroup
from cascade_rl.rollout.wire import (
    request_from_json,
    rollout_to_json,
    sampling_from_json,
    weights_from_bytes,
)

logger = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 16 * 2**30  # room for an 8B policy's trainable weights in bf16 over HTTP


class RolloutServer:
    """Serves `engine` (a RolloutEngine) and applies weight updates to `model` (the engine's policy).

    An engine that owns its weights (`load_weights`, e.g. vLLM) needs no `model`: pass `param_names`, the names a
    trainer may send (e.g. `checkpoint_tensor_names`), so the server holds no second copy of the weights.
    """

    def __init__(
        self,
        engine,
        model=None,
        *,
        param_names: set[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        model_path: str = "",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ):
        if model is None and (param_names is None or not hasattr(engine, "load_weights")):
            raise ValueError("give the served model, or param_names with an engine that loads weights itself")
        self.engine, self.model, self.model_path = engine, model, model_path
        self.max_body_bytes = max_body_bytes
        self.param_names = param_names if param_names is not None else {n for n, _ in model.named_parameters()}
        self.weights_version = 0
        self.group: WeightGroup | None = None
        self.update_thread: threading.Thread | None = None
        self.update_error: str | None = None
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
        self._check_names(tensors)
        with self.lock:
            self._apply(tensors.items(), version)
        return {"weights_version": version}

    def join_group(self, body: dict) -> dict:
        """Join the trainer's weight group as rank 1 (blocks until the trainer connects too)."""
        timeout_s = float(body.get("timeout_s", 300.0))
        self.group = WeightGroup(body["backend"], body["host"], int(body["port"]), 1, timeout_s=timeout_s).connect()
        return {"status": "connected", "backend": self.group.backend}

    def start_group_update(self, body: dict) -> dict:
        """Check the announced tensors, then receive and apply them in the background (see `wait_group_update`)."""
        if self.group is None:
            raise RuntimeError("no weight group: POST /weights/group first")
        specs = [TensorSpec.from_json(s) for s in body["specs"]]
        self._check_names({s.name for s in specs})
        version, bucket_bytes = int(body["version"]), int(body["bucket_bytes"])
        self.update_error = None

        def receive():
            try:
                with self.lock:
                    self._apply(self.group.receive(specs, bucket_bytes), version)
            except Exception as err:  # reported by /weights/group/wait
                logger.error("weight receive failed:\n%s", traceback.format_exc())
                self.update_error = f"{type(err).__name__}: {err}"

        self.update_thread = threading.Thread(target=receive, daemon=True)
        self.update_thread.start()
        return {"status": "receiving", "tensors": len(specs)}

    def wait_group_update(self, body: dict | None = None) -> dict:
        if self.update_thread is None:
            raise RuntimeError("no weight update in progress")
        self.update_thread.join(self.group.timeout.total_seconds() if self.group else None)
        if self.update_thread.is_alive():
            raise TimeoutError("the weight update did not finish within the group's timeout")
        self.update_thread = None
        if self.update_error:
            raise RuntimeError(self.update_error)
        return {"weights_version": self.weights_version}

    def _check_names(self, names) -> None:
        unknown = sorted(set(names) - self.param_names)
        if unknown:
            raise ValueError(f"weights for unknown parameters {unknown[:3]}; trainer and server models differ")

    def _apply(self, named, version: int) -> None:
        """Apply (name, tensor) pairs (lock held): an engine that owns its weights (vLLM) takes them as they come;
        otherwise they are copied into the server's model and the engine refreshed from it."""
        with torch.no_grad():
            if hasattr(self.engine, "load_weights"):
                self.engine.load_weights(named)
            else:
                params = dict(self.model.named_parameters())
                for name, value in named:
                    params[name].copy_(value.to(params[name].device, params[name].dtype))
                self.engine.update_weights(self.model)
        self.weights_version = version

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


GROUP_ENDPOINTS = {  # endpoint → RolloutServer method taking the JSON body
    "/weights/group": "join_group",
    "/weights/group/update": "start_group_update",
    "/weights/group/wait": "wait_group_update",
}


def _handler_for(server: RolloutServer):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                return self._reply(200, server.health())
            return self._reply(404, {"error": f"no endpoint {self.path}"})

        def do_POST(self):
            size = int(self.headers.get("Content-Length", 0))
            if size > server.max_body_bytes:  # refused before reading: the body never reaches memory
                self.close_connection = True
                limit = f"{size} bytes > the limit of {server.max_body_bytes} (max_body_bytes / --max-body-mb)"
                return self._reply(413, {"error": f"request body too large: {limit}"})
            body = self.rfile.read(size)
            try:
                if self.path == "/generate":
                    return self._reply(200, server.generate(json.loads(body)))
                if self.path == "/weights":
                    return self._reply(200, server.load_weights(body, int(self.headers.get("X-Weights-Version", 0))))
                if self.path in GROUP_ENDPOINTS:
                    return self._reply(200, getattr(server, GROUP_ENDPOINTS[self.path])(json.loads(body or b"{}")))
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

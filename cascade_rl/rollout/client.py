"""ServerEngine: the RolloutEngine protocol over HTTP, to a `cascade-rl serve` rollout server.

Every request has a timeout; connection failures, timeouts and 502/503/504 answers are retried with exponential
backoff; when the tries run out, `EngineUnavailable` names the URL, the endpoint and the training step. Weights go
to the server after each optimizer step as safetensors bytes over HTTP (trainable parameters only).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from cascade_rl.rollout.base import Rollout, RolloutRequest, SamplingParams
from cascade_rl.rollout.wire import request_to_json, rollout_from_json, sampling_to_json, weights_to_bytes

RETRYABLE_STATUS = (502, 503, 504)


class EngineUnavailable(RuntimeError):
    """The rollout server could not be reached or did not answer in time."""


class ServerEngine:
    def __init__(self, url: str, *, timeout_s: float = 600.0, retries: int = 3, backoff_s: float = 1.0):
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.step: int | None = None  # set by the trainer, so errors can say when they happened
        self.weights_version = 0

    def health(self) -> dict:
        return self._call("GET", "/health", None, timeout=min(self.timeout_s, 10.0))

    def wait_until_ready(self, timeout_s: float = 300.0) -> dict:
        """Poll /health until the server answers (vLLM can take minutes to start)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.health()
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(min(self.backoff_s, 2.0))

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        body = {"requests": [request_to_json(r) for r in requests], "n": n, "sampling": sampling_to_json(sampling)}
        answer = self._call("POST", "/generate", json.dumps(body).encode(), timeout=self.timeout_s)
        return [rollout_from_json(r) for r in answer["rollouts"]]

    def update_weights(self, model) -> None:
        self.weights_version += 1
        headers = {"X-Weights-Version": str(self.weights_version), "Content-Type": "application/octet-stream"}
        self._call("POST", "/weights", weights_to_bytes(model), timeout=self.timeout_s, headers=headers)

    def close(self) -> None:
        pass

    def _call(self, method: str, endpoint: str, data: bytes | None, *, timeout: float, headers=None) -> dict:
        last = None
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + endpoint, data=data, method=method, headers=headers or {})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                detail = _error_text(err)
                if err.code not in RETRYABLE_STATUS:
                    raise EngineUnavailable(self._where(endpoint) + f": server error {err.code}: {detail}") from err
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        raise EngineUnavailable(
            self._where(endpoint) + f": no answer after {self.retries} tries (timeout {timeout:g} s each; last: "
            f"{last}); is `cascade-rl serve` running there and reachable?"
        )

    def _where(self, endpoint: str) -> str:
        step = f" at training step {self.step}" if self.step is not None else ""
        return f"rollout server {self.url}{endpoint}{step}"


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", err.reason)
    except (ValueError, OSError):
        return str(err.reason)

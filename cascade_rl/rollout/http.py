"""JSON (or bytes) over HTTP to one rollout server: timeouts, retries with exponential backoff, and errors that say
which server, which route and which training step. Used by the vLLM-server client and the HF test-double client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from cascade_rl.rollout.base import EngineUnavailable

RETRYABLE_STATUS = (502, 503, 504)


class ServerCalls:
    """Calls to the server at `url`. Connection failures, timeouts and 502/503/504 answers are tried again after
    backoff_s, 2·backoff_s, ... up to `retries` tries; any other HTTP error is reported at once. `label` names the
    server kind in errors, `hint` says what to check; `step` (set by the trainer) says when it happened."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        retries: int,
        backoff_s: float,
        label: str = "vLLM server",
        hint: str = "is the vLLM server running there and reachable?",
    ):
        if retries < 1:
            raise ValueError(f"retries counts tries and must be at least 1, got {retries}")
        self.url, self.timeout_s, self.retries, self.backoff_s = url.rstrip("/"), timeout_s, retries, backoff_s
        self.label, self.hint = label, hint
        self.step: int | None = None

    def post(self, route: str, body: dict | None = None, *, retry: bool = True) -> dict:
        return self.call("POST", route, body, retry=retry)

    def call(
        self,
        method: str,
        route: str,
        body: dict | None = None,
        *,
        data: bytes | None = None,
        headers: dict | None = None,
        retry: bool = True,
        timeout_s: float | None = None,
    ) -> dict:
        """One call, tried up to `retries` times (once with retry=False); `body` goes as JSON, or `data` as is."""
        if body is not None:
            data = json.dumps(body).encode()
        headers = headers or {"Content-Type": "application/json"}
        tries, timeout, last = (self.retries if retry else 1), (timeout_s or self.timeout_s), None
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url + route, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    text = response.read()
                return self._json(route, text)
            except urllib.error.HTTPError as err:
                detail = _error_text(err)
                if err.code not in RETRYABLE_STATUS:
                    raise EngineUnavailable(self.where(route) + f": server error {err.code}: {detail}") from err
                last = f"HTTP {err.code}: {detail}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        raise EngineUnavailable(
            self.where(route)
            + f": no answer after {tries} tries (timeout {timeout:g} s each; last: {last}); "
            + self.hint
        )

    def _json(self, route: str, text: bytes) -> dict:
        """The answer as JSON; a server that answers something else is named (not retried: it will not improve)."""
        try:
            return json.loads(text) if text else {}
        except ValueError as err:
            raise EngineUnavailable(
                self.where(route) + f": the answer is not JSON ({err}; it starts {text[:80]!r}); " + self.hint
            ) from err

    def read(self, route: str, answer: dict, extract):
        """`extract(answer)`; an answer without the fields it reads is named, as a garbage reply is."""
        try:
            return extract(answer)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise EngineUnavailable(
                self.where(route) + f": unexpected answer ({type(err).__name__}: {err}; it starts "
                f"{json.dumps(answer)[:120]!r}); " + self.hint
            ) from err

    def where(self, route: str) -> str:
        step = f" at training step {self.step}" if self.step is not None else ""
        return f"{self.label} {self.url}{route}{step}"


def wait_for_health(servers: list[ServerCalls], timeout_s: float) -> None:
    """Poll each server's /health until it answers; a server silent for `timeout_s` is named in the error (a vLLM
    server takes a while to start: it loads the model and sizes its KV cache first)."""
    deadline = time.monotonic() + timeout_s
    for server in servers:
        announced = False
        while True:
            try:
                server.call("GET", "/health", retry=False, timeout_s=10.0)
                break
            except EngineUnavailable as err:
                if time.monotonic() > deadline:
                    raise EngineUnavailable(f"{err} (waited {timeout_s:g} s for it to start)") from err
                if not announced:
                    print(f"waiting up to {timeout_s:g} s for {server.url}/health (server.wait_s)", flush=True)
                    announced = True
                time.sleep(1.0)


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
    except (ValueError, OSError):
        return str(err.reason)
    error = body.get("error", err.reason) if isinstance(body, dict) else err.reason
    return error.get("message", str(error)) if isinstance(error, dict) else str(error)

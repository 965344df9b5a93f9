"""Memory plan: the bytes per GPU each stage of a recipe holds, under its sharding, with no model loaded.

P parameters in all, T of them trained (the parts not frozen), N training processes (one per GPU), GiB = 2^30 B.

Trainers (SFT, MPO, GSPO), per rank:
- DDP (no `deepspeed:`): the policy is loaded in fp32 and autocast to bf16, so the fp32 weights are the master
  copy: weights 4 P, gradients 4 T, AdamW m and v 8 T; nothing is divided by N.
- DeepSpeed bf16 (ZeRO, Rajbhandari et al. 2020, arXiv 1910.02054, §5.1): weights 2 P, gradients 2 T, fp32 master
  + m + v 12 T. ZeRO-1 divides the 12 T by N, ZeRO-2 also the gradients, ZeRO-3 also the weights.
  `offload_optimizer` moves the 12 T to the CPU, `offload_param` (ZeRO-3) the weights.
- Reference model: MPO `reference: live` keeps a frozen fp32 copy (4 P) on every rank (`precomputed`, the default,
  scores the pairs once before training and holds none); GSPO with `kl_coef > 0` keeps one too, under ZeRO-3
  partitioned in bf16 (2 P / N).
- Activations (an estimate; only the floor below refuses): 34 h L bytes per token of the longest backward, h the
  language model's hidden size, L its layers: Korthikanti et al. 2022 (arXiv 2205.05198, eq. 2) for bf16
  activations without recomputation, with the 5 a s / h attention term dropped (fused attention keeps no scores).
  Longest backward: SFT per_device_batch × max_length; MPO per_device_batch × 2 max_length (one packed row holds the
  prompt and both completions); GSPO one group, n × max_new_tokens completion tokens plus (max_tiles + 1) × 256
  image tokens of the shared prompt. The plan states how many tokens fit in what the rest leaves.

Rollout engines:
- vLLM colocated (`engine: vllm`): `vllm.gpu_memory_utilization` × the GPU's memory (or the weights plus
  `vllm.kv_cache_gib`), which must hold the weights (2 B/param in bf16, 4 in fp32) and leave room for a KV cache.
  Under GSPO the trainer's weights and optimizer state stay on the GPU while vLLM samples; with `vllm.sleep` vLLM
  frees its share while the trainer runs its backward, so the activations need not fit beside it.
- `engine: server` (rollout, GSPO): vLLM servers on GPUs of their own, not among the trainer's N. Each runs the
  bf16 checkpoint (2 P) split over its `--tensor-parallel-size` k GPUs and takes `cascade-rl serve`'s default 0.9 of
  each GPU; the plan names the smallest power of two k for which 2 P / k leaves the KV cache its reserve. The
  trainer's N processes hold no engine.
- `engine: hf`: the transformers engine holds fp32 weights, 4 P (in GSPO: the trainer's own model).

A plan fits when, on every stage, the parts besides the activations fit the GPU and a trainer keeps room for the
activations of MIN_ACTIVATION_TOKENS tokens; `refusal` names what to change (a deeper ZeRO stage, more GPUs, vLLM's
share or precision).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from cascade_rl.config import ConfigError
from cascade_rl.train.setup import config_zero_stage, read_deepspeed_config

GIB = 2**30
IMAGE_TOKENS_PER_TILE = 256  # InternVL: a 448 px tile becomes 256 tokens after pixel shuffle
ACTIVATION_BYTES_PER_HIDDEN_LAYER = 34  # per token, per unit of hidden size, per layer (see the docstring)
KV_RESERVE = 0.1  # share of the engine's memory that must stay free for the KV cache beyond the weights
MAX_UTILIZATION = 0.95  # the largest vllm.gpu_memory_utilization the plan suggests
MIN_ACTIVATION_TOKENS = 4096  # a trainer must have room for the activations of at least this many tokens
SERVE_UTILIZATION = 0.9  # `cascade-rl serve`'s default --gpu-memory-utilization (rollout/vllm_launch.py)
MAX_TENSOR_PARALLEL = 64
SHARDED_STAGES = ("sft", "mpo", "gspo")


@dataclass(frozen=True)
class ModelSize:
    """Parameter counts of a policy (projector counted in `language` when only the model card's two totals are
    known) and the language model's hidden size and layers."""

    vision: int
    projector: int
    language: int
    hidden: int
    layers: int
    source: str

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.language


# InternVL3.5 parameter counts: the "#Vision Param" and "#Language Param" columns of the model cards'
# model-overview table (huggingface.co/OpenGVLab/InternVL3_5-8B and siblings; the projector is not listed apart);
# hidden size and layers: the config.json of the Qwen3 language model each starts from (Qwen3-0.6B … 235B-A22B).
INTERNVL3_5_SIZES = {
    "1B": (0.3e9, 0.8e9, 1024, 28),
    "2B": (0.3e9, 2.0e9, 2048, 28),
    "4B": (0.3e9, 4.4e9, 2560, 36),
    "8B": (0.3e9, 8.2e9, 4096, 36),
    "14B": (0.3e9, 14.8e9, 5120, 40),
    "38B": (5.5e9, 32.8e9, 5120, 64),
    "30B-A3B": (0.3e9, 30.5e9, 2048, 48),
    "241B-A28B": (5.5e9, 235.1e9, 4096, 94),
}
_SIZE_NAME = re.compile(r"internvl3[._]5[-_](\d+b(?:[-_]a\d+b)?)", re.IGNORECASE)


def model_size(model_path: str, name: str = "") -> ModelSize:
    """From `model_path/config.json` when it is a local directory (the model built on the meta device), else from
    the InternVL3.5 size the path or the recipe `name` spells (e.g. InternVL3_5-8B-Instruct-HF, internvl3_5_8b)."""
    if (Path(model_path) / "config.json").is_file():
        return _size_from_checkpoint(model_path)
    for text in (Path(model_path).name, name):
        match = _SIZE_NAME.search(text)
        if match:
            key = match.group(1).upper().replace("_", "-")
            if key in INTERNVL3_5_SIZES:
                vision, language, hidden, layers = INTERNVL3_5_SIZES[key]
                return ModelSize(int(vision), 0, int(language), hidden, layers, f"InternVL3.5-{key} model card")
    sizes = ", ".join(INTERNVL3_5_SIZES)
    raise ConfigError(
        f"model_path {model_path}: not a local checkpoint directory and no InternVL3.5 size ({sizes}) in its name; "
        "point model_path at the checkpoint directory to plan from its config.json"
    )


def _size_from_checkpoint(path: str) -> ModelSize:
    from cascade_rl.models.io import meta_policy
    from cascade_rl.models.parts import model_parts

    model = meta_policy(path)
    counts = {part: sum(p.numel() for p in params) for part, params in model_parts(model).items()}
    text = model.config.get_text_config()
    source = f"{path}/config.json"
    return ModelSize(
        counts["vision"], counts["projector"], counts["llm"], text.hidden_size, text.num_hidden_layers, source
    )


@dataclass(frozen=True)
class Sharding:
    """How a trainer shards: ZeRO stage (0: DDP) and offloads, read from its config's `deepspeed:` file."""

    zero: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    source: str = "DDP"

    @property
    def name(self) -> str:
        offload = [o for o, on in (("optimizer", self.offload_optimizer), ("params", self.offload_param)) if on]
        text = f"ZeRO-{self.zero}" if self.zero else "DDP"
        return text + (f" (offload {', '.join(offload)})" if offload else "")


def stage_sharding(stage: str, config) -> Sharding:
    """The sharding a trainer's built config declares: its `deepspeed:` JSON (zero_optimization.stage and the
    offload_* devices), else DDP. The one place a stage's sharding is read."""
    path = getattr(config, "deepspeed", None)
    if path is None:
        return Sharding(source=f"no {stage}.deepspeed: DDP")
    zero = read_deepspeed_config(path, f"{stage}.deepspeed").get("zero_optimization", {})
    stage_n = config_zero_stage({"zero_optimization": zero})

    def offloaded(key: str) -> bool:
        return str(zero.get(key, {}).get("device", "none")) in ("cpu", "nvme")

    return Sharding(stage_n, offloaded("offload_optimizer"), offloaded("offload_param"), f"{stage}.deepspeed: {path}")


@dataclass
class StagePlan:
    """One stage's bytes per GPU: `parts` (weights, gradients, optimizer, reference, engine: exact but for
    allocator overhead), `activations` (estimate) for `tokens` tokens, whether the activations share the GPU with
    the engine, and notes."""

    stage: str
    gpus: int
    sharding: str
    parts: dict[str, float]
    capacity: float
    activations: float = 0.0
    tokens: int = 0
    bytes_per_token: float = 0.0
    engine_sleeps: bool = False
    notes: list[str] = field(default_factory=list)
    fix: str = ""

    @property
    def fixed(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        """The parts fit, and a trainer has room for MIN_ACTIVATION_TOKENS tokens of activations."""
        floor = self.bytes_per_token * MIN_ACTIVATION_TOKENS
        return self.fixed <= self.capacity and self.activation_room >= floor and not self.fix

    @property
    def activation_room(self) -> float:
        """Memory left for activations: beside everything, or beside the trainer alone when vLLM sleeps."""
        engine = self.parts.get("engine", 0.0) if self.engine_sleeps else 0.0
        return self.capacity - self.fixed + engine


def trainer_states(size: ModelSize, trained: int, sharding: Sharding, world: int) -> dict[str, float]:
    """weights / gradients / optimizer bytes per rank (formulas in the module docstring)."""
    if sharding.zero == 0:
        return {"weights": 4.0 * size.total, "gradients": 4.0 * trained, "optimizer": 8.0 * trained}
    weights = 2.0 * size.total / (world if sharding.zero >= 3 else 1)
    gradients = 2.0 * trained / (world if sharding.zero >= 2 else 1)
    optimizer = 12.0 * trained / world
    return {
        "weights": 0.0 if sharding.offload_param else weights,
        "gradients": gradients,
        "optimizer": 0.0 if sharding.offload_optimizer else optimizer,
    }


def trained_params(size: ModelSize, config) -> int:
    """Parameters the trainer updates: the parts not frozen (LoRA counted as its whole language model: an upper
    bound)."""
    frozen = {
        "vision": getattr(config, "freeze_vision", False),
        "projector": getattr(config, "freeze_projector", False),
        "llm": getattr(config, "freeze_llm", False),
    }
    parts = {"vision": size.vision, "projector": size.projector, "llm": size.language}
    return sum(count for part, count in parts.items() if not frozen[part])


def activation_tokens(stage: str, config) -> int:
    """Tokens of the longest backward (see the module docstring)."""
    if stage == "gspo":
        prompt_images = (config.max_tiles + 1) * IMAGE_TOKENS_PER_TILE  # tiles + thumbnail
        return config.sampling.n * config.sampling.max_new_tokens + prompt_images
    packed = 2 if stage == "mpo" else 1
    return config.optim.per_device_batch * packed * config.max_length


def engine_weight_bytes(vllm, model_path: str, released: bool) -> tuple[int, str]:
    """Bytes per parameter vLLM serves in, and why: `vllm.dtype`, else ("auto") the checkpoint's config.json; a
    checkpoint not written yet is the released one (bf16) or a trainer's (fp32 under DDP)."""
    if vllm.dtype != "auto":
        return (4 if vllm.dtype == "float32" else 2), f"vllm.dtype {vllm.dtype}"
    config_file = Path(model_path) / "config.json"
    if config_file.is_file():
        import json

        saved = json.loads(config_file.read_text())
        dtype = saved.get("dtype") or saved.get("torch_dtype") or "float32"
        return (2 if dtype in ("bfloat16", "float16") else 4), f"vllm.dtype auto: {dtype} in {config_file}"
    if released:
        return 2, "vllm.dtype auto: the released bf16 checkpoint"
    return 4, "vllm.dtype auto: a trainer checkpoint, fp32 (set vllm.dtype: bfloat16 to serve it in half)"


def engine_memory(stage: str, vllm, weights: float, capacity: float) -> tuple[float, str]:
    """(bytes vLLM takes on a GPU, the change needed when its share cannot hold the weights and a KV cache)."""
    if vllm.kv_cache_gib > 0:
        return weights + vllm.kv_cache_gib * GIB, ""
    share = vllm.gpu_memory_utilization * capacity
    if weights <= (1 - KV_RESERVE) * share:
        return share, ""
    needed = math.ceil(weights / (1 - KV_RESERVE) / capacity * 20) / 20
    if needed > MAX_UTILIZATION:
        gib = math.ceil(weights / (1 - KV_RESERVE) / MAX_UTILIZATION / GIB)
        return share, f"vLLM's weights ({weights / GIB:.1f} GiB) do not fit one GPU: use --gpu-memory {gib}"
    return share, f"set {stage}.vllm.gpu_memory_utilization: {needed:.2f} (its weights take {weights / GIB:.1f} GiB)"


def server_need(stage: str, size: ModelSize, capacity: float) -> tuple[str, str]:
    """(a note on the rollout servers' GPUs, the change needed when no tensor-parallel size fits)."""
    weights = 2.0 * size.total
    room = (1 - KV_RESERVE) * SERVE_UTILIZATION * capacity
    sizes = [2**i for i in range(int(math.log2(MAX_TENSOR_PARALLEL)) + 1)]
    k = next((k for k in sizes if weights / k <= room), None)
    if k is None:
        gib = weights / GIB
        return "", f"{stage}'s rollout servers: {gib:.1f} GiB of bf16 weights do not fit {MAX_TENSOR_PARALLEL} GPUs"
    note = (
        f"rollout servers on GPUs of their own (not among --gpus): {weights / GIB:.1f} GiB of bf16 weights, "
        f"{weights / k / GIB:.1f} per GPU at --tensor-parallel-size {k}, the smallest that fits: start each with "
        f"`cascade-rl serve --engine vllm --model MODEL --dtype bfloat16 -- --tensor-parallel-size {k}`"
    )
    return note, ""


def plan_rollout(config, size: ModelSize, capacity: float, released: bool) -> StagePlan:
    """The rollout stage: one engine in one process on one GPU, or rollout servers on GPUs of their own."""
    if config.engine == "server":
        note, fix = server_need("rollout", size, capacity)
        return StagePlan("rollout", 0, "rollout servers", {}, capacity, notes=[note] if note else [], fix=fix)
    if config.engine == "vllm":
        per_param, why = engine_weight_bytes(config.vllm, config.model_path, released)
        taken, fix = engine_memory("rollout", config.vllm, per_param * size.total, capacity)
        notes = [f"vLLM holds {per_param * size.total / GIB:.1f} GiB of weights ({why}) and its KV cache"]
        return StagePlan("rollout", 1, "one engine", {"engine": taken}, capacity, notes=notes, fix=fix)
    notes = ["transformers engine: fp32 weights; its KV cache is not estimated"]
    return StagePlan("rollout", 1, "one engine", {"weights": 4.0 * size.total}, capacity, notes=notes)


def plan_trainer(
    stage: str, config, size: ModelSize, capacity: float, gpus: int, released: bool, sharding: Sharding
) -> StagePlan:
    """SFT, MPO or GSPO on `gpus` processes under `sharding` (GSPO's rollout servers on GPUs of their own)."""
    notes, fix, engine, sleeps = [sharding.source], "", 0.0, False
    world = gpus
    if stage == "gspo" and config.engine == "server":
        note, fix = server_need(stage, size, capacity)
        notes += [note] if note else []
    parts = trainer_states(size, trained_params(size, config), sharding, world)
    live_reference = getattr(config, "reference", None) == "live" or getattr(config, "kl_coef", 0.0) > 0
    if live_reference:  # under ZeRO-3 (GSPO's KL reference) partitioned like the bf16 weights
        parts["reference"] = 2.0 * size.total / world if sharding.zero >= 3 else 4.0 * size.total
    if stage == "gspo" and config.engine == "vllm":
        per_param, why = engine_weight_bytes(config.vllm, config.model_path, released)
        engine, fix = engine_memory(stage, config.vllm, per_param * size.total, capacity)
        parts["engine"], sleeps = engine, config.vllm.sleep
        notes.append(f"colocated vLLM: {per_param * size.total / GIB:.1f} GiB of weights ({why})")
    per_token = ACTIVATION_BYTES_PER_HIDDEN_LAYER * size.hidden * size.layers
    tokens = activation_tokens(stage, config)
    return StagePlan(
        stage, world, sharding.name, parts, capacity, per_token * tokens, tokens, per_token, sleeps, notes, fix
    )


def trainer_fix(stage: str, config, size: ModelSize, capacity: float, gpus: int, released: bool) -> str:
    """What to change when a trainer's states do not fit: a deeper ZeRO stage on these GPUs, else more GPUs."""
    current = stage_sharding(stage, config)
    deepest = 2 if stage == "sft" else 3  # SFT refuses ZeRO-3 (train/setup.py::deepspeed_fields)

    def fits(zero: int, n: int) -> bool:
        sharding = Sharding(zero, current.offload_optimizer, current.offload_param)
        plan = plan_trainer(stage, config, size, capacity, n, released, sharding)
        return plan.fits or (plan.fix and plan.fixed <= capacity)  # an engine's fix is named on its own

    for zero in range(max(current.zero + 1, 2), deepest + 1):
        if fits(zero, gpus):
            return f"set {stage}.deepspeed: recipes/deepspeed/zero{zero}.json"
    zero = max(current.zero, deepest)
    step = min(gpus, 8)
    more = next((n for n in range((gpus // step + 1) * step, 4097, step) if fits(zero, n)), None)  # whole nodes
    deeper = f"set {stage}.deepspeed: recipes/deepspeed/zero{zero}.json and " if zero != current.zero else ""
    if more is not None:
        return f"{deeper}use --gpus {more}"
    return f"{deeper}offload (offload_optimizer / offload_param in the DeepSpeed config) or use larger GPUs"


@dataclass
class MemoryPlan:
    """Every planned stage of a recipe on `gpus` GPUs of `gpu_memory_gib` each."""

    size: ModelSize
    gpus: int
    gpu_memory_gib: float
    stages: list[StagePlan]
    skipped: list[str]

    @property
    def fits(self) -> bool:
        return all(stage.fits for stage in self.stages)

    def refusal(self) -> str:
        """One line per stage that does not fit, with what to change; empty when the plan fits."""
        return "\n".join(
            f"{s.stage} does not fit {self.gpu_memory_gib:g} GiB per GPU ({s.fixed / GIB:.1f} GiB held"
            + (f", {max(s.activation_room, 0) / GIB:.1f} left for activations" if s.tokens else "")
            + f"): {s.fix}"
            for s in self.stages
            if not s.fits
        )

    def lines(self) -> list[str]:
        size = self.size
        head = (
            f"memory plan, {self.gpus} GPU(s) × {self.gpu_memory_gib:g} GiB; {size.total / 1e9:.2f}B parameters "
            f"(vision {size.vision / 1e9:.2f}B, projector {size.projector / 1e9:.2f}B, language "
            f"{size.language / 1e9:.2f}B; from {size.source}); GiB per GPU:"
        )
        out = [head]
        for s in self.stages:
            if not s.parts:  # an engine on GPUs of its own
                out.append(f"  {s.stage}: {s.sharding}: {'fits' if s.fits else 'DOES NOT FIT'}")
                out += [f"    {note}" for note in s.notes]
                continue
            parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in s.parts.items())
            verdict = "fits" if s.fits else "DOES NOT FIT"
            out.append(f"  {s.stage}: {s.gpus} GPU(s), {s.sharding}: {parts} = {s.fixed / GIB:.1f}: {verdict}")
            out += [f"    {note}" for note in s.notes]
            if s.tokens:
                out.append("    " + activation_line(s))
        out += [f"  {name}: not planned" for name in self.skipped]
        return out


def activation_line(s: StagePlan) -> str:
    room = max(s.activation_room, 0.0)
    line = (
        f"activations (estimate): {s.activations / GIB:.1f} for the longest backward ({s.tokens} tokens); "
        f"{room / GIB:.1f} left holds about {int(room // s.bytes_per_token)} tokens"
    )
    if s.activations > room:
        knob = "sampling.max_new_tokens or sampling.n" if s.stage == "gspo" else "max_length"
        line += f"; long sequences may run out of memory: lower {s.stage}.{knob}, or add GPUs / ZeRO-3"
    return line


def plan_memory(model_path: str, name: str, stages: list[tuple[str, object]], gpus: int, gpu_memory_gib: float):
    """The memory plan of a recipe's built stage configs (`(stage name, config)` in cascade order)."""
    if gpus < 1 or gpu_memory_gib <= 0:
        raise ConfigError(f"--gpus must be at least 1 and --gpu-memory above 0; got {gpus} and {gpu_memory_gib}")
    size, capacity = model_size(model_path, name), gpu_memory_gib * GIB
    planned, skipped = [], []
    for stage, config in stages:
        released = getattr(config, "model_path", None) == model_path
        if stage == "rollout":
            planned.append(plan_rollout(config, size, capacity, released))
        elif stage in SHARDED_STAGES:
            plan = plan_trainer(stage, config, size, capacity, gpus, released, stage_sharding(stage, config))
            if not plan.fits and not (plan.fix and plan.fixed <= capacity):
                plan.fix = "; ".join(
                    f for f in (plan.fix, trainer_fix(stage, config, size, capacity, gpus, released)) if f
                )
            planned.append(plan)
        elif stage not in ("pairs", "filter"):  # those two run on the CPU
            skipped.append(stage)
    return MemoryPlan(size, gpus, gpu_memory_gib, planned, skipped)

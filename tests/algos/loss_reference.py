"""Independent float64 reference of every loss, in plain Python (math + loops, no torch, no cascade_rl).

Written straight from the formulas of SPEC §1 / §3 so the golden values in tests/golden/*.json never come from
the code under test. Lists stand for tensors: a [B] tensor is a list, a [B, T] tensor a list of rows.
"""

from __future__ import annotations

import math


def log_sigmoid(x: float) -> float:
    # Two branches so neither exp overflows: log σ(x) = -log(1 + e^-x) = x - log(1 + e^x).
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def dpo(h_c: list[float], h_r: list[float], beta: float) -> list[float]:
    return [-log_sigmoid(beta * (c - r)) for c, r in zip(h_c, h_r)]


def bco(h_c: list[float], h_r: list[float], beta: float, delta: float) -> list[float]:
    return [-log_sigmoid(beta * c - delta) - log_sigmoid(-(beta * r - delta)) for c, r in zip(h_c, h_r)]


def lm(token_logps: list[list[float]], mask: list[list[int]]) -> float:
    total, count = 0.0, 0
    for row, keep in zip(token_logps, mask):
        for value, k in zip(row, keep):
            if k:
                total += value
                count += 1
    return -total / max(count, 1)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def running_means(values: list[float], world_size: int = 1) -> list[float]:
    """TRL RunningMoments: start mean 0, count 1e-24; each update adds world_size to the count."""
    current, count, out = 0.0, 1e-24, []
    for value in values:
        current += (value - current) * world_size / (count + world_size)
        count += world_size
        out.append(current)
    return out


def mpo_calls(batches: list[dict], beta: float, weights: tuple[float, float, float]) -> list[dict]:
    """Successive mpo_loss calls sharing one δ state; each batch holds h_c, h_r, token_logps, mask."""
    out, current, count = [], 0.0, 1e-24
    for batch in batches:
        rewards = [beta * h for h in batch["h_c"]] + [beta * h for h in batch["h_r"]]
        current += (mean(rewards) - current) * 1 / (count + 1)
        count += 1
        d = mean(dpo(batch["h_c"], batch["h_r"], beta))
        b = mean(bco(batch["h_c"], batch["h_r"], beta, current))
        g = lm(batch["token_logps"], batch["mask"])
        loss = weights[0] * d + weights[1] * b + weights[2] * g
        out.append({"loss": loss, "dpo_loss": d, "bco_loss": b, "lm_loss": g, "delta": current})
    return out


def _surrogate(ratio: float, adv: float, lo: float, hi: float) -> float:
    clipped = min(max(ratio, 1 - lo), 1 + hi)
    return max(-adv * ratio, -adv * clipped)


def gspo(logps, old_logps, advantages, mask, lo, hi) -> float:
    """(1/#non-empty) Σ_i max(-A_i s_i, -A_i clip(s_i)), s_i = exp(mean_t (logp - old))."""
    losses = []
    for row, old_row, adv, keep in zip(logps, old_logps, advantages, mask):
        diffs = [a - b for a, b, k in zip(row, old_row, keep) if k]
        if diffs:
            ratio = math.exp(min(sum(diffs) / len(diffs), 10.0))
            losses.append(_surrogate(ratio, adv, lo, hi))
    return sum(losses) / max(len(losses), 1)


def token_losses(logps, old_logps, advantages, mask, lo, hi) -> list[list[float | None]]:
    """Per-token PPO-clip losses with token ratios; None where masked. advantages: [B] or [B][T]."""
    out = []
    for i, (row, old_row, keep) in enumerate(zip(logps, old_logps, mask)):
        adv = advantages[i]
        out_row = []
        for t, (a, b, k) in enumerate(zip(row, old_row, keep)):
            a_t = adv[t] if isinstance(adv, list) else adv
            out_row.append(_surrogate(math.exp(a - b), a_t, lo, hi) if k else None)
        out.append(out_row)
    return out


def aggregate(losses: list[list[float | None]], mode: str, norm_length: float | None = None) -> float:
    kept_rows = [[x for x in row if x is not None] for row in losses]
    if mode == "token-mean":
        flat = [x for row in kept_rows for x in row]
        return sum(flat) / max(len(flat), 1)
    if mode == "token-sum":
        return sum(x for row in kept_rows for x in row)
    if mode == "seq-mean-token-sum":
        return mean([sum(row) for row in kept_rows]) / (norm_length or 1.0)
    if mode == "seq-mean-token-mean":
        seq = [sum(row) / len(row) for row in kept_rows if row]
        return sum(seq) / max(len(seq), 1)
    raise ValueError(mode)


def group_advantages(rewards: list[float], group_size: int, scale: str, eps: float) -> list[float]:
    def std(xs):  # unbiased, as torch.std
        m = mean(xs)
        return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))

    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        for r in group:
            centered = r - mean(group)
            if scale == "group":
                centered /= std(group) + eps
            elif scale == "batch":
                centered /= std(rewards) + eps
            out.append(centered)
    return out


def rloo(rewards: list[float], group_size: int) -> list[float]:
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        out += [r - (sum(group) - r) / (group_size - 1) for r in group]
    return out


def k3_kl(logps, ref_logps, mask) -> float:
    """(1/B) Σ_b mean over kept t of exp(d) - d - 1, d = ref - logp; a row with no kept token counts as 0."""
    per_seq = []
    for row, ref_row, keep in zip(logps, ref_logps, mask):
        terms = [math.exp(r - a) - (r - a) - 1 for a, r, k in zip(row, ref_row, keep) if k]
        per_seq.append(sum(terms) / max(len(terms), 1))
    return mean(per_seq)


def sequence_is_weights(trainer_logps, engine_logps, mask, cap: float) -> list[float]:
    """min(exp(mean over kept t of trainer - engine), cap) per row; exp(0) = 1 for a row with no kept token."""
    out = []
    for row, engine_row, keep in zip(trainer_logps, engine_logps, mask):
        gaps = [a - e for a, e, k in zip(row, engine_row, keep) if k]
        out.append(min(math.exp(sum(gaps) / max(len(gaps), 1)), cap))
    return out


def summed_next_token_nll(logits, input_ids, loss_mask) -> tuple[float, int]:
    """Σ over kept targets t >= 1 of logsumexp(z_{t-1}) - z_{t-1}[id_t], and how many have argmax z_{t-1} = id_t."""
    total, correct = 0.0, 0
    for rows, ids, keep in zip(logits, input_ids, loss_mask):
        for t in range(1, len(ids)):
            if keep[t]:
                z = rows[t - 1]
                top = max(z)
                total += top + math.log(sum(math.exp(v - top) for v in z)) - z[ids[t]]
                correct += z.index(top) == ids[t]
    return total, correct

"""Math reward throughput: cascade_rl's RewardRunner(["math"]) against TRL's accuracy_reward.

Both score the same 2,000 synthetic completions (125 prompts x 16 rollouts, MATH-style answers, half right,
wrong ones close to right; 1% hostile: exponent towers, 100k-character sums, 5,000 nested \\frac{, unbalanced
braces), in batches of 256 as a GRPO/GSPO step would. TRL is called the way its GRPOTrainer calls a reward:
keyword arguments prompts / completions (conversational) / completion_ids / dataset columns / trainer_state /
log_extra / log_metric, on the main thread (so math-verify's SIGALRM timeouts are active).

Printed: throughput on the clean part (warm worker pool; the pool's cold start is printed apart), wall time on the
hostile part, and agreement of the two on the clean part. The last line is JSON with ``speedup`` = TRL time / our
time on the clean part. Run: ``.venv/bin/python benchmarks/rewards.py`` (CPU, offline, about three minutes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time

BATCH = 256
PROMPTS, ROLLOUTS = 125, 16
TIMEOUT_S = 5.0


def answer_forms(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """One problem's (gold, right spellings of it, look-alike wrong answers), MATH style, random numbers."""
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    kind = rng.randrange(11)
    if kind == 0:
        p, q = rng.choice([(1, 4), (3, 4), (1, 8), (3, 8), (5, 8), (2, 5), (3, 5), (7, 20)])
        return (
            f"\\frac{{{p}}}{{{q}}}",
            [f"\\frac{{{p}}}{{{q}}}", f"{p / q:g}", f"\\dfrac{{{p}}}{{{q}}}"],
            [f"\\frac{{{q}}}{{{p}}}", f"\\frac{{{p + 1}}}{{{q}}}", f"{p / q + 0.1:g}"],
        )
    if kind == 1:
        n = rng.randint(10, 999)
        return str(n), [str(n), f"{n}.0"], [str(n + 1), str(-n), str(n * 10)]
    if kind == 2:
        b = rng.choice([2, 3, 5, 6, 7])
        return (
            f"{a}\\sqrt{{{b}}}",
            [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"{a} \\sqrt {b}"],
            [f"{b}\\sqrt{{{a}}}", f"{a}\\sqrt{{{b + 1}}}", f"\\sqrt{{{a * b}}}"],
        )
    if kind == 3:
        return (
            f"\\frac{{{a}\\pi}}{{{b + 7}}}",
            [f"\\frac{{{a}\\pi}}{{{b + 7}}}", f"\\frac{{{a}}}{{{b + 7}}}\\pi"],
            [f"\\frac{{{b + 7}\\pi}}{{{a}}}", f"\\frac{{{a}\\pi}}{{{b + 8}}}"],
        )
    if kind == 4:
        return f"(-\\infty, {a}]", [f"(-\\infty, {a}]", f"(-\\infty,{a}]"], [f"(-\\infty, {a})", f"[{a}, \\infty)"]
    if kind == 5:
        return f"({a}, -{b})", [f"({a}, -{b})", f"({a},-{b})"], [f"(-{b}, {a})", f"({a}, {b})"]
    if kind == 6:
        return f"x^2 + {2 * a}x + {a * a}", [f"(x+{a})^2", f"x^2+{2 * a}x+{a * a}"], [f"(x-{a})^2", f"x^2 + {a * a}"]
    if kind == 7:
        d = rng.choice([15, 30, 45, 60, 75, 120, 135])
        return f"{d}^\\circ", [f"{d}^\\circ", f"{d}", f"{d}^{{\\circ}}"], [f"{180 - d}^\\circ", f"{d + 10}^\\circ"]
    if kind == 8:
        return (
            f"-\\frac{{{2 * a + 1}}}{{2}}",
            [f"-{a}.5", f"-{a}\\frac{{1}}{{2}}", f"-\\frac{{{2 * a + 1}}}{{2}}"],
            [f"\\frac{{{2 * a + 1}}}{{2}}", f"-\\frac{{2}}{{{2 * a + 1}}}", f"-{a}"],
        )
    if kind == 9:
        return (
            f"\\{{{a}, {a + b}\\}}",
            [f"\\{{{a + b}, {a}\\}}", f"\\{{{a},{a + b}\\}}"],
            [f"\\{{{a}, {a + b + 1}\\}}", f"\\{{{a}\\}}"],
        )
    vec = f"\\begin{{pmatrix}} {a} \\\\ -{b} \\end{{pmatrix}}"
    return (
        vec,
        [vec],
        [f"\\begin{{pmatrix}} -{b} \\\\ {a} \\end{{pmatrix}}", f"\\begin{{pmatrix}} {a} \\\\ {b} \\end{{pmatrix}}"],
    )


FILLER = [
    "Let us first restate the problem in our own words.",
    "We substitute $x = {a}$ into the expression and simplify.",
    "Multiplying both sides by ${b}$ gives $ {b}y = {c} $.",
    "By the Pythagorean theorem, $a^2 + b^2 = c^2$, so $c = \\sqrt{{{c}}}$.",
    "Note that $\\frac{{{a}}}{{{b}}}$ cannot be simplified further when $\\gcd({a}, {b}) = 1$.",
    "Adding the two equations, we find $2x = {c}$, hence $x = \\frac{{{c}}}{{2}}$.",
    "We check the boundary case separately: at $t = {a}$ the inequality is tight.",
    "Hence the sum of the first ${b}$ terms is $\\sum_{{k=1}}^{{{b}}} k = {c}$.",
]


def make_completion(rng: random.Random, answer: str) -> str:
    steps = []
    for _ in range(rng.randint(4, 30)):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        steps.append(rng.choice(FILLER).format(a=a, b=b, c=a * b))
    ending = rng.choice(
        [f"Therefore, the final answer is $\\boxed{{{answer}}}$.", f"So the answer is $\\boxed{{{answer}}}$."]
    )
    return "\n".join(steps) + "\n" + ending


def hostile_completions() -> list[str]:
    towers = ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{10}}", "7^{7^{7^{7}}}", "99^{99^{99}}"]
    out = [f"The value is $\\boxed{{{t}}}$." for t in towers]
    out += ["The total is $\\boxed{" + "+".join(["1"] * 50_000) + "}$"] * 5  # 100k characters
    out += ["$\\boxed{" + "\\frac{" * 5000 + "1" + "}{2}" * 5000 + "}$"] * 5  # 5,000 nested fractions
    out += ["So \\boxed{" + "{" * 3000 + "x" + " and then" * 20] * 5  # braces that never close
    return out


def make_dataset(seed: int = 0) -> tuple[list[str], list[str], list[bool]]:
    rng = random.Random(seed)
    completions, golds, hostile = [], [], []
    for _ in range(PROMPTS):
        gold, right, wrong = answer_forms(rng)
        for _ in range(ROLLOUTS):
            answer = rng.choice(right) if rng.random() < 0.5 else rng.choice(wrong)
            completions.append(make_completion(rng, answer))
            golds.append(f"${gold}$")  # TRL reads a bare gold only inside a math environment
            hostile.append(False)
    # 1% hostile, spread over the batches
    for position, text in zip(rng.sample(range(len(completions)), 20), hostile_completions()):
        completions[position], hostile[position] = text, True
    return completions, golds, hostile


def batches(n: int) -> list[range]:
    return [range(i, min(i + BATCH, n)) for i in range(0, n, BATCH)]


def trl_batch(completions: list[str], golds: list[str]) -> list[float | None]:
    """One call of TRL's accuracy_reward with the keyword arguments GRPOTrainer._calculate_rewards passes."""
    from trl.rewards import accuracy_reward

    extra: dict[str, list] = {}
    return accuracy_reward(
        prompts=[[{"role": "user", "content": "Solve the problem."}] for _ in completions],
        completions=[[{"role": "assistant", "content": c}] for c in completions],
        completion_ids=[[0] * 8 for _ in completions],
        solution=golds,
        trainer_state=None,
        log_extra=lambda key, values: extra.setdefault(key, []).extend(values),
        log_metric=lambda key, value: None,
    )


def compare(runner, completions: list[str], golds: list[str]) -> dict:
    """Score batch by batch with both, alternating which goes first, so that background load hits both alike."""
    ours: list[float | None] = []
    trl: list[float | None] = []
    ours_s = trl_s = 0.0
    timeouts = errors = 0
    for number, rows in enumerate(batches(len(completions))):
        batch, batch_golds = [completions[i] for i in rows], [golds[i] for i in rows]
        for side in ("ours", "trl") if number % 2 == 0 else ("trl", "ours"):
            start = time.perf_counter()
            if side == "ours":
                result = runner.score(batch, answer=batch_golds)
                ours_s += time.perf_counter() - start
                ours += result.per_reward["math"]
                timeouts, errors = timeouts + result.timeouts["math"], errors + result.errors["math"]
            else:
                trl += trl_batch(batch, batch_golds)
                trl_s += time.perf_counter() - start
    return {"ours": ours, "trl": trl, "ours_s": ours_s, "trl_s": trl_s, "timeouts": timeouts, "errors": errors}


def main() -> None:
    # TRL logs every timed-out input in full (100k characters each); keep the report readable.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.basicConfig(level=logging.ERROR)
    from cascade_rl.rewards import RewardRunner

    completions, golds, hostile = make_dataset()
    clean = [i for i in range(len(completions)) if not hostile[i]]
    bad = [i for i in range(len(completions)) if hostile[i]]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(completions)} completions ({len(bad)} hostile), {cores} cores (load {load:.1f}), batches of {BATCH}")

    start = time.perf_counter()
    with RewardRunner(["math"], timeout_s=TIMEOUT_S) as runner:
        runner.score(completions[:1], answer=golds[:1])  # returns once the workers are up
        cold = time.perf_counter() - start
        workers = runner._pool.num_workers if runner._pool else 0
        c = compare(runner, [completions[i] for i in clean], [golds[i] for i in clean])
        h = compare(runner, [completions[i] for i in bad], [golds[i] for i in bad])

    n = len(clean)
    agree = sum(a == b for a, b in zip(c["ours"], c["trl"]))
    stuck = h["timeouts"]  # the hostile samples that really hung (the other hostile ones are refused at once)
    bound = TIMEOUT_S * math.ceil(stuck / max(1, workers))
    print(f"pool cold start (forkserver + {workers} workers, math-verify preloaded): {cold:.2f} s")
    print(
        f"clean part ({n}): ours {c['ours_s']:.2f} s = {n / c['ours_s']:.0f}/s, timeouts {c['timeouts']}, "
        f"errors {c['errors']}"
    )
    print(f"clean part ({n}): TRL  {c['trl_s']:.2f} s = {n / c['trl_s']:.0f}/s")
    print(
        f"clean agreement: {agree}/{n} ({agree / n:.1%}); scored right: ours {c['ours'].count(1.0)}, "
        f"TRL {c['trl'].count(1.0)}"
    )
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(c["ours"], c["trl"])) if a != b]
    for i, a, b in differ[:3]:
        last_line = completions[clean[i]].splitlines()[-1]
        print(f"  differs: gold {golds[clean[i]]}, last line {last_line!r}: ours {a}, TRL {b}")
    print(
        f"hostile part ({len(bad)}): ours {h['ours_s']:.2f} s (timeouts {h['timeouts']}, errors {h['errors']}; "
        f"bound: timeout x ceil({stuck} stuck / {workers} workers) = {bound:.0f} s); TRL {h['trl_s']:.2f} s"
    )
    print(
        json.dumps(
            {
                "completions": len(completions),
                "workers": workers,
                "ours_clean_s": round(c["ours_s"], 3),
                "trl_clean_s": round(c["trl_s"], 3),
                "speedup": round(c["trl_s"] / c["ours_s"], 2),
                "agreement": round(agree / n, 4),
                "ours_hostile_s": round(h["ours_s"], 2),
                "trl_hostile_s": round(h["trl_s"], 2),
                "hostile_bound_s": bound,
                "cold_start_s": round(cold, 2),
                "load_at_start": round(load, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

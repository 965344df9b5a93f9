"""MMPR import/export: InternVL's meta json + pair jsonl files <-> our pair rows (SPEC §2 "MMPR jsonl format").

Meta json: {name: {"root": image folder, "annotation": pairs .jsonl, "repeat_time": float, "max_dynamic_patch":
int, "data_augment": bool, "length": int, ...}}. Annotation lines: {"image": str | [str] (relative to root;
absent for text-only), "question", "chosen", "rejected", optional "answer_gt", "chosen_meta", "rejected_meta",
"system_prompt"}.

Our pair rows are the same dicts with image paths joined to their dataset's root, plus "ds_name" (the meta
entry they came from, to look up per-dataset settings such as max_dynamic_patch); `write_mmpr` undoes both.
Relative `root` / `annotation` paths resolve against `base_dir` (default: the meta file's folder), falling
back to the current directory, which is what InternVL's scripts assume. An entry key outside InternVL's
(`ENTRY_KEYS`) is refused, so a misspelt `repeat_time` cannot pass silently.

`read_mmpr` gives each dataset's lines with their source ("ann.jsonl line 3") for the MPO stage
(train/pair_data.py::load_mmpr_pairs), which encodes each row with its dataset's `max_dynamic_patch`.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cascade_rl.data.errors import DataError
from cascade_rl.data.io import atomic_write_json, atomic_write_jsonl, iter_jsonl_lines, parse_json_line

# what InternVL's build_datasets reads (root, annotation, repeat_time, max_dynamic_patch, data_augment) and `length`
ENTRY_KEYS = ("root", "annotation", "repeat_time", "max_dynamic_patch", "data_augment", "length")


@dataclass
class MMPRDataset:
    """One meta entry; `root` and `annotation` are resolved paths."""

    name: str
    root: str
    annotation: str
    repeat_time: float = 1.0
    max_dynamic_patch: int | None = None
    data_augment: bool = False
    length: int | None = None


@dataclass
class MMPRSummary:
    n_lines: int = 0  # annotation lines read, before repeat_time
    n_rows: int = 0  # rows returned, after repeat_time
    skipped: Counter = field(default_factory=Counter)
    per_dataset: dict[str, int] = field(default_factory=dict)


def _resolve(path: str, base_dir: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    candidate = base_dir / path
    return str(candidate) if candidate.exists() or not os.path.exists(path) else os.path.abspath(path)


def read_mmpr_meta(meta_path: str | os.PathLike, *, base_dir: str | os.PathLike | None = None) -> list[MMPRDataset]:
    """Parse and check a meta json; every entry needs a string `root` (the image folder; "" for text-only data) and
    an existing `annotation`, and names no key outside `ENTRY_KEYS`."""
    meta_path = Path(meta_path)
    base = Path(base_dir) if base_dir is not None else meta_path.parent
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DataError(f"MMPR meta file {meta_path} not found; fix the path", reason="bad_meta") from e
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e}); fix the meta file", reason="bad_meta") from e
    if not isinstance(meta, dict):
        raise DataError(
            f"{meta_path}: expected {{name: {{root, annotation, ...}}}}; fix the meta file", reason="bad_meta"
        )
    return [_read_entry(name, entry, f"{meta_path} entry '{name}'", base) for name, entry in meta.items()]


def _read_entry(name: str, entry: Any, where: str, base: Path) -> MMPRDataset:
    """One checked meta entry; `where` ("meta.json entry 'geo'") starts every error."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object {{root, annotation, ...}}; fix it", reason="bad_meta")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(ENTRY_KEYS)}; fix or remove them",
            reason="bad_meta",
        )
    if not isinstance(entry.get("root"), str):
        raise DataError(f"{where}: needs a string 'root' (the image folder); add it", reason="bad_meta")
    if not isinstance(entry.get("annotation"), str):
        raise DataError(f"{where}: needs a string 'annotation' (the pairs .jsonl); add it", reason="bad_meta")
    return MMPRDataset(
        name=name,
        root=_resolve(entry["root"], base),
        annotation=_annotation(entry["annotation"], base, where),
        repeat_time=_repeat_time(entry.get("repeat_time", 1), where),
        max_dynamic_patch=_max_dynamic_patch(entry.get("max_dynamic_patch"), where),
        data_augment=bool(entry.get("data_augment", False)),
        length=entry.get("length"),
    )


def _annotation(path: str, base: Path, where: str) -> str:
    """`path` resolved (see `_resolve`), refused with both places tried when no such file exists."""
    resolved = _resolve(path, base)
    if os.path.isfile(resolved):
        return resolved
    raise DataError(
        f"{where}: annotation '{path}' not found (tried {base / path} and {os.path.abspath(path)}); fix the path "
        "(a relative one resolves against the meta file's folder, else the current directory)",
        reason="bad_meta",
    )


def _repeat_time(value: Any, where: str) -> float:
    """InternVL asserts a whole number above 1; a fraction subsamples."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{where}: repeat_time={value!r} must be a number; fix it", reason="bad_meta")
    repeat_time = float(value)
    if repeat_time <= 0 or (repeat_time > 1 and not repeat_time.is_integer()):
        raise DataError(
            f"{where}: repeat_time={repeat_time} must be in (0, 1] or a whole number > 1 (InternVL asserts this); "
            "fix it",
            reason="bad_meta",
        )
    return repeat_time


def _max_dynamic_patch(value: Any, where: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise DataError(
        f"{where}: max_dynamic_patch={value!r} must be a whole number ≥ 1 (tiles); fix it", reason="bad_meta"
    )


def apply_repeat_time(rows: list[Any], repeat_time: float, rng: random.Random | None = None) -> list[Any]:
    """InternVL's rule: < 1 keeps int(len * repeat_time) rows, > 1 repeats the list repeat_time times.

    The kept fraction is a random subset drawn from `rng` (file order preserved), as InternVL3.5 draws it
    (`random.sample` after seeding); without an `rng`, the head of the file (InternVL2.x / 3.0's rule).
    """
    if repeat_time < 1:
        k = int(len(rows) * repeat_time)
        if rng is None:
            return rows[:k]
        keep = sorted(rng.sample(range(len(rows)), k))
        return [rows[i] for i in keep]
    return rows * int(repeat_time)


def _check_pair(data: Any, source: str) -> None:
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object; fix the line", reason="bad_row")
    for key in ("question", "chosen", "rejected"):
        if not isinstance(data.get(key), str):
            raise DataError(
                f"{source}: no '{key}' string; an MMPR row needs question, chosen and rejected",
                reason=f"missing_{key}",
            )
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        if not isinstance(image, list) or not all(isinstance(p, str) for p in image):
            raise DataError(f"{source}: 'image' must be a path or a list of paths; fix it", reason="bad_image_column")


def _join_root(image: str | list[str], root: str) -> str | list[str]:
    if isinstance(image, list):
        return [os.path.join(root, p) for p in image]
    return os.path.join(root, image)


@dataclass(frozen=True)
class MMPRLine:
    """One checked annotation line as read (image paths relative to its dataset's root) and where it came from."""

    source: str  # "<annotation> line N", for error messages
    row: dict[str, Any]


def _load_dataset(ds: MMPRDataset, on_error: str, summary: MMPRSummary) -> list[MMPRLine]:
    lines = []
    for lineno, line in iter_jsonl_lines(ds.annotation):
        summary.n_lines += 1
        source = f"{ds.annotation} line {lineno}"
        try:
            data = parse_json_line(ds.annotation, lineno, line)
            _check_pair(data, source)
        except DataError as e:
            if on_error == "raise":
                raise DataError(f"{e}, or set on_error=skip", reason=e.reason) from e
            summary.skipped[e.reason] += 1
            continue
        lines.append(MMPRLine(source, data))
    return lines


def read_mmpr(
    meta_path: str | os.PathLike,
    *,
    names: list[str] | None = None,
    seed: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    base_dir: str | os.PathLike | None = None,
) -> tuple[list[tuple[MMPRDataset, list[MMPRLine]]], MMPRSummary]:
    """Each dataset of the meta (all, or `names`, in meta order) with its lines after repeat_time: a fraction < 1
    is a random subset drawn from one `random.Random(seed)` shared by the datasets in turn (the head of each file
    when `seed` is None); a whole number > 1 repeats the lines."""
    datasets = read_mmpr_meta(meta_path, base_dir=base_dir)
    if names is not None:
        unknown = sorted(set(names) - {d.name for d in datasets})
        if unknown:
            raise DataError(f"{meta_path}: no entries named {unknown}; known: {[d.name for d in datasets]}")
        datasets = [d for d in datasets if d.name in names]
    rng = random.Random(seed) if seed is not None else None
    summary, out = MMPRSummary(), []
    for ds in datasets:
        lines = apply_repeat_time(_load_dataset(ds, on_error, summary), ds.repeat_time, rng)
        summary.per_dataset[ds.name] = len(lines)
        summary.n_rows += len(lines)
        out.append((ds, lines))
    return out, summary


def load_mmpr(
    meta_path: str | os.PathLike,
    *,
    names: list[str] | None = None,
    seed: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    base_dir: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], list[MMPRDataset], MMPRSummary]:
    """`read_mmpr`'s lines as pair rows (image paths joined to their dataset's root, "ds_name" added);
    (rows, datasets, summary)."""
    read, summary = read_mmpr(meta_path, names=names, seed=seed, on_error=on_error, base_dir=base_dir)
    rows = [_as_pair_row(line.row, ds) for ds, lines in read for line in lines]
    return rows, [ds for ds, _ in read], summary


def _as_pair_row(data: dict[str, Any], ds: MMPRDataset) -> dict[str, Any]:
    row = {**data, "ds_name": ds.name}
    if data.get("image") not in (None, "", []):
        row["image"] = _join_root(data["image"], ds.root)
    return row


def _relative_image(image: str, root: Path, where: str) -> str:
    if not os.path.isabs(image):
        return image  # already relative to the image root
    try:
        return Path(image).relative_to(root).as_posix()
    except ValueError as e:
        raise DataError(f"{where}: image '{image}' is not under root={root}; pass the common root") from e


def write_mmpr(
    rows: list[dict[str, Any]],
    out_dir: str | os.PathLike,
    *,
    name: str,
    root: str | os.PathLike,
    max_dynamic_patch: int | None = None,
    repeat_time: float = 1,
    meta_filename: str = "meta.json",
) -> Path:
    """Write `rows` as `<out_dir>/<name>.jsonl` and add/replace entry `name` in `<out_dir>/<meta_filename>`.

    Absolute image paths are made relative to `root` (an image outside it is an error); relative ones are
    taken as already relative to it. "ds_name" is dropped. Both files are written atomically; the returned
    path is the meta file's.
    """
    out_dir = Path(out_dir)
    root_path = Path(os.path.abspath(root))
    lines = []
    for k, row in enumerate(rows, start=1):
        row = {key: value for key, value in row.items() if key != "ds_name"}
        if row.get("image") not in (None, "", []):
            image = row["image"]
            where = f"pair row {k}"
            row["image"] = (
                [_relative_image(p, root_path, where) for p in image]
                if isinstance(image, list)
                else _relative_image(image, root_path, where)
            )
        lines.append(row)
    atomic_write_jsonl(out_dir / f"{name}.jsonl", lines)
    meta_path = out_dir / meta_filename
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    meta[name] = {
        "root": str(root),
        "annotation": f"{name}.jsonl",
        "data_augment": False,
        "max_dynamic_patch": max_dynamic_patch,
        "repeat_time": repeat_time,
        "length": len(lines),
    }
    if max_dynamic_patch is None:
        del meta[name]["max_dynamic_patch"]
    return atomic_write_json(meta_path, meta)

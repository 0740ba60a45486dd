"""Prepare a benchmark index, then evaluate one trained cell on it and write the result contract.

`prepare` reads a benchmark's official files once (through its registry entry), decodes every
image, and writes an index (examples + skipped records) whose paths are relative to the study's
resources folder, resolved by `read_index` at use. `evaluate_cell` runs batched greedy generation
(or, for choice benchmarks such as POPE and TallyQA, first-token probabilities over the
choices, stored as a JSON list) over the index, appending per-example predictions to a jsonl as it goes, so an interrupted run
resumes where it stopped, then scores and writes `{benchmark}.json`:
`{cell, benchmark, subset, columns (percent), metrics, n_samples, n_skipped, skipped, predictions}`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from vlmswap.atomic import write_json, write_text
from vlmswap.evaluate.intervals import bootstrap_intervals
from vlmswap.evaluate.records import Example, IndexFileError, PredictionsFileError, Skipped
from vlmswap.evaluate.registry import get_benchmark
from vlmswap.language import eval_prompt
from vlmswap.provenance import differences, move_aside, result_record, scorer_version


def prepare(name: str, root: Path, subset: str, out: Path, log: Callable[[str], None] = print) -> dict:
    """Index a benchmark's official files under `root` into `out`. Every image is decoded once here:
    one that does not decode becomes a skipped record (id, path, why), counted with the others.
    Paths are stored relative (the root to the index's folder, images to the root) whenever the
    root lies in the study's resources folder, so a copied or moved study reads its own files."""
    benchmark = get_benchmark(name)
    root, out = Path(root), Path(out)
    examples, skipped = benchmark.load(root, subset)
    examples, undecodable = _decodable(examples, log)
    skipped = skipped + undecodable
    for s in skipped[:20]:
        log(f"  skipped {s.id}: {s.reason} ({s.path})")
    if len(skipped) > 20:
        log(f"  ... and {len(skipped) - 20} more skipped")
    stored_root = _portable_root(root, out)
    base = root.absolute()
    index = {
        "benchmark": name, "subset": subset, "root": stored_root,
        "examples": [{**asdict(e), "image": _below(Path(e.image), base)} for e in examples],
        "skipped": [asdict(s) for s in skipped],
        "n_undecodable": len(undecodable),
    }
    write_json(out, index)
    log(f"{name} ({subset}): {len(examples)} examples, {len(skipped)} skipped "
        f"({len(undecodable)} images that do not decode) -> {out}")
    return {"n_examples": len(examples), "n_skipped": len(skipped), "n_undecodable": len(undecodable)}


def _decodable(examples: list[Example], log: Callable[[str], None]) -> tuple[list[Example], list[Skipped]]:
    """Split examples by whether their image decodes (each distinct file decoded once)."""
    from vlmswap.image import check_image

    verdicts: dict[Path, str | None] = {}
    kept, broken = [], []
    for i, e in enumerate(examples):
        image = Path(e.image)
        if image not in verdicts:
            verdicts[image] = check_image(image)
            if len(verdicts) % 5000 == 0:
                log(f"  decoded {len(verdicts)} images ({i + 1}/{len(examples)} examples)")
        reason = verdicts[image]
        if reason is None:
            kept.append(e)
        else:
            broken.append(Skipped(e.id, str(image), reason))
    return kept, broken


def _portable_root(root: Path, index: Path) -> str:
    """The benchmark root as the index stores it: relative to the index's folder when both lie in
    the study's resources folder (`resources/<study>/prepared/<benchmark>.json` beside
    `resources/<study>/world/...` or `.../data/...`), else absolute (files kept outside the study,
    which a copy of the study shares)."""
    root_abs, folder = Path(os.path.abspath(root)), Path(os.path.abspath(index.parent))
    if root_abs.is_relative_to(folder.parent):
        return Path(os.path.relpath(root_abs, folder)).as_posix()
    return str(root_abs)


def _below(path: Path, base: Path) -> str:
    path = Path(os.path.abspath(path))
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def read_index(path: Path) -> tuple[str, str, list[Example], list[Skipped]]:
    """Read a prepared index; image paths come back resolved against the index's own location, so
    the files read are those beside the index, wherever the study now lives."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        root = path.parent / data["root"]  # an absolute stored root stays as it is
        examples = [Example(**{**e, "image": Path(os.path.normpath(root / e["image"]))}) for e in data["examples"]]
        skipped = [Skipped(**s) for s in data["skipped"]]
    except FileNotFoundError:
        raise FileNotFoundError(f"benchmark index {path} does not exist (run the prepare-benchmark step)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise IndexFileError(f"{path}: not a benchmark index ({type(e).__name__}: {e}); delete it and rerun "
                         "prepare-benchmark") from None
    return data["benchmark"], data["subset"], examples, skipped


def _read_predictions(path: Path) -> tuple[dict | None, dict[str, str]]:
    """The provenance header and the predictions of a jsonl file (a torn last line ends the read).

    A repeated id is an error, not last-wins: two answers for one example mean two runs wrote
    into one file, and neither can be trusted to be the one the score should use."""
    header: dict | None = None
    done: dict[str, str] = {}
    if not path.exists():
        return header, done
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
            if number == 1 and isinstance(row, dict) and "provenance" in row:
                header = row["provenance"]
                continue
            key, prediction = str(row["id"]), row["prediction"]
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the interruption: everything after it is redone
        if key in done:
            raise PredictionsFileError(
                f"{path}:{number}: example id {key!r} appears twice; the file mixes two runs. "
                f"Delete {path.name} to regenerate the predictions")
        done[key] = prediction
    return header, done


def _write_predictions(path: Path, record: dict, rows: dict[str, str]) -> None:
    write_text(path, json.dumps({"provenance": record}) + "\n"
               + "".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in rows.items()))


def _shard_file(pred_path: Path, rank: int, world: int) -> Path:
    return pred_path if world == 1 else pred_path.with_name(f"{pred_path.stem}.rank{rank}-of-{world}.jsonl")


def _usable_predictions(path: Path, record: dict, log: Callable[[str], None]) -> dict[str, str]:
    """The predictions of `path` if they were made by exactly this model, index, settings and code;
    otherwise the file is moved aside and nothing is reused."""
    header, done = _read_predictions(path)
    if not path.exists():
        return {}
    why = differences(header, record)
    if why:
        move_aside(path, why, log)
        return {}
    return done


def evaluate_cell(cell_id: str, vlm, geometry, index_path: Path, out_json: Path, record: dict,
                  batch_size: int = 16, max_new_tokens: int = 128, log: Callable[[str], None] = print,
                  rank: int = 0, world: int = 1) -> dict:
    """Evaluate one cell on one prepared benchmark. `record` is the predictions' provenance
    (`provenance.predictions_record`): predictions on disk are resumed only if they carry the same.
    With `world` > 1 (one process per GPU under torchrun, the process group already initialised)
    every rank generates a strided shard of the examples into its own predictions file; rank 0
    merges them, scores and writes the result."""
    name, subset, examples, skipped = read_index(index_path)
    benchmark = get_benchmark(name)
    pred_path = out_json.with_name(out_json.stem + ".predictions.jsonl")
    mine = _shard_file(pred_path, rank, world)
    done: dict[str, str] = {}
    if rank == 0:
        done.update(_usable_predictions(pred_path, record, log))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has set a foreign merged file aside before anyone reads it
        if rank != 0:
            done.update(_read_predictions(pred_path)[1] if pred_path.exists() else {})
        own = _usable_predictions(mine, record, log)
        for r in range(world):
            if r != rank:
                header, theirs = _read_predictions(_shard_file(pred_path, r, world))
                if not differences(header, record):
                    done.update(theirs)
        done.update(own)
    else:
        own = done
    # Keep whole batches only, so that the resumed run batches (and pads) every example exactly as
    # an uninterrupted run would: greedy outputs then match byte for byte. Rewriting the kept
    # prefix also drops a torn last line.
    mine_ids = [e.id for i, e in enumerate(examples) if i % world == rank and e.id in own]
    kept = mine_ids[:len(mine_ids) - len(mine_ids) % batch_size]
    for dropped in mine_ids[len(kept):]:
        done.pop(dropped, None)
    _write_predictions(mine, record, {k: own[k] for k in kept})
    known = {e.id for e in examples}
    strangers = sorted(set(done) - known)
    if strangers:
        raise PredictionsFileError(f"{pred_path}: ids {strangers[:5]} are not in the index {index_path}; "
                                   f"delete {pred_path.name} to regenerate the predictions")
    todo = [e for i, e in enumerate(examples) if i % world == rank and e.id not in done]
    if done:
        log(f"{name}: resuming, {len(done)} predictions on disk, {len(todo)} to go on rank {rank}")
    device = next(vlm.head.parameters()).device
    t0, last = time.time(), time.time()
    # a progress bar on a terminal; in a log file (Snakemake's tee, SLURM) a plain line every 10 s
    bar = None
    if rank == 0 and todo and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=name, unit="example", leave=False)
    with open(mine, "a") as sink:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            pixels = []
            for e in chunk:
                with Image.open(e.image) as im:
                    pixels.append(vlm.vision.pixels(im, geometry))
            prompts = [eval_prompt(e.prompt) for e in chunk]
            batch = torch.stack(pixels).to(device)
            if benchmark.mode == "choice":
                # first-token probabilities over the benchmark's choices, one forward pass
                probs = vlm.choice_probabilities(batch, prompts, benchmark.choices)
                outputs = [json.dumps([round(float(p), 6) for p in row]) for row in probs]
            else:
                outputs = vlm.generate(batch, prompts, max_new_tokens=max_new_tokens)
            for e, text in zip(chunk, outputs):
                done[e.id] = text
                sink.write(json.dumps({"id": e.id, "prediction": text}) + "\n")
            sink.flush()
            finished = start + len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            elif time.time() - last > 10 or finished >= len(todo):
                per_example = (time.time() - t0) / max(1, finished)
                log(f"  {name}: {finished}/{len(todo)} ({per_example:.3f}s per example, "
                    f"ETA {per_example * (len(todo) - finished):.0f}s)")
                last = time.time()
    if bar is not None:
        bar.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {}
        for r in range(world):
            done.update(_read_predictions(_shard_file(pred_path, r, world))[1])
        _write_predictions(pred_path, record, {e.id: done[e.id] for e in examples})
        for r in range(world):
            _shard_file(pred_path, r, world).unlink(missing_ok=True)
    score = benchmark.score(examples, done)
    scored_path = out_json.with_name(out_json.stem + ".scored.jsonl")
    write_text(scored_path, "".join(json.dumps({"id": k, **v}, default=str) + "\n" for k, v in score.per_example.items()))
    result = {
        "cell": cell_id, "benchmark": name, "subset": subset,
        "columns": {k: round(v, 4) for k, v in score.columns.items()},
        "intervals": bootstrap_intervals(score.columns, score.per_example),
        "metrics": score.metrics, "n_samples": score.n_samples,
        "n_skipped": len(skipped), "skipped": [asdict(s) for s in skipped],
        "predictions": pred_path.name, "scored": scored_path.name,
        "provenance": result_record(record, scorer_version()),
    }
    write_json(out_json, result)
    log(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in score.columns.items()) + f" over {score.n_samples} "
        f"({time.time() - t0:.1f}s)")
    return result

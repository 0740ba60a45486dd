"""Regenerate tests/fixtures/prismatic/batches.json: Prismatic's own batch order, rank by rank.

Runs the reference's `SplitModalitySampler` (prismatic/util/batching_utils.py) on synthetic
(modality, word count) lists for a few (seed, world size, global batch) settings and two epochs,
and its `FinetuneDataset.get_modality_lengths` on a few LLaVA-format records, and writes what they
return. tests/data/test_instruct_order.py checks that our `split_modality_batches` +
`micro_batches` and `InstructDataset.lengths` give the same.

    python scripts/reference/prismatic_batches.py [--prismatic PATH]   # default: ../prismatic-vlms
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prismatic_env import REPO, add_prismatic  # noqa: E402

# (name, records, share multimodal, seed, world size, global batch, per-device batch)
SETTINGS = [
    ("paper-8gpu", 3000, 0.85, 7, 8, 128, 16),
    ("one-rank", 3000, 0.85, 7, 1, 128, 16),
    ("two-ranks", 2500, 0.7, 3, 2, 16, 4),
    ("four-ranks", 2000, 0.9, 11, 4, 64, 8),
    ("few-language-only", 1100, 0.92, 5, 4, 128, 16),  # 88 language-only: one short batch, padded from itself
]
EPOCHS = (0, 1)


def synthetic(n: int, share: float, seed: int) -> tuple[list[bool], list[int]]:
    rng = random.Random(seed)
    multimodal = [rng.random() < share for _ in range(n)]
    # word counts with many ties (the stable sort matters) and a long tail
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(1, 40), rng.randint(40, 900)]) for _ in range(n)]
    return multimodal, lengths


def records() -> list[dict]:
    """LLaVA-format records whose word counts depend on how `<image>` and whitespace are written."""
    rng = random.Random(0)
    words = ["what", "color", "is", "the", "circle?", "red", "two", "<image>", "\n", "  ", "yes."]
    out = []
    for i in range(40):
        turns = []
        for t in range(2 * rng.randint(1, 3)):
            text = "".join(rng.choice(words) + rng.choice([" ", "", "\n", "  "]) for _ in range(rng.randint(0, 12)))
            turns.append({"from": ("human", "gpt")[t % 2], "value": text})
        rec = {"id": str(i), "conversations": turns}
        if i % 3:
            rec["image"] = f"img/{i}.png"
        out.append(rec)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prismatic", help="checkout of TRI-ML/prismatic-vlms")
    ap.add_argument("--out", type=Path, default=REPO / "tests/fixtures/prismatic/batches.json")
    args = ap.parse_args()
    source = add_prismatic(args.prismatic)
    from prismatic.preprocessing.datasets.datasets import FinetuneDataset
    from prismatic.util.batching_utils import SplitModalitySampler

    cases = []
    for k, (name, n, share, seed, world, gbs, pdb) in enumerate(SETTINGS):
        multimodal, lengths = synthetic(n, share, 1000 + k)
        modality_lengths = list(zip(multimodal, lengths))
        epochs = {}
        for epoch in EPOCHS:
            ranks = []
            for rank in range(world):
                sampler = SplitModalitySampler(list(range(n)), modality_lengths, gbs, num_replicas=world, rank=rank,
                                               seed=seed)
                sampler.set_epoch(epoch)
                ranks.append(list(sampler))
            epochs[str(epoch)] = ranks
        cases.append({"name": name, "seed": seed, "world_size": world, "global_batch": gbs, "per_device_batch": pdb,
                      "multimodal": [int(m) for m in multimodal], "lengths": lengths, "rank_indices": epochs})
        print(f"{name}: {n} records ({sum(multimodal)} multimodal), seed {seed}, world {world}, batch {gbs}: "
              f"{len(epochs['0'][0])} indices per rank per epoch")

    recs = records()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.json"
        path.write_text(json.dumps(recs))
        dataset = FinetuneDataset(path, Path(tmp), None, None, None)
        modality_lengths = dataset.get_modality_lengths()
    out = {"source": source, "script": "scripts/reference/prismatic_batches.py", "epochs": list(EPOCHS),
           "cases": cases, "records": recs, "record_modality_lengths": [[int(m), n] for m, n in modality_lengths]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB) from {source}")


if __name__ == "__main__":
    main()

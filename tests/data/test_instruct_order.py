"""The batch order and the rank split are Prismatic's, index for index.

tests/fixtures/prismatic/batches.json holds what the reference's own `SplitModalitySampler` and
`FinetuneDataset.get_modality_lengths` returned (prismatic-vlms@874c5bb, run by
scripts/reference/prismatic_batches.py) for synthetic datasets, several seeds, world sizes and
global batches, and two epochs.
"""

import json
from pathlib import Path

import pytest

from vlmswap.data.instruct import InstructDataset, micro_batches, rank_blocks, split_modality_batches

FIXTURE = json.loads((Path(__file__).parents[1] / "fixtures/prismatic/batches.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("epoch", FIXTURE["epochs"])
def test_each_rank_reads_the_references_indices(name, epoch):
    case = CASES[name]
    world, pdb = case["world_size"], case["per_device_batch"]
    batches = split_modality_batches(case["lengths"], [bool(m) for m in case["multimodal"]], case["global_batch"],
                                     case["seed"] + epoch, world)
    for rank, expected in enumerate(case["rank_indices"][str(epoch)]):
        ours = [i for batch in batches for micro in micro_batches(batch, world, rank, pdb) for i in micro]
        assert ours == expected, f"{name}, epoch {epoch}, rank {rank}"


def test_the_fixture_covers_padding_several_ranks_and_both_modalities():
    few = CASES["few-language-only"]
    assert 0 < len(few["multimodal"]) - sum(few["multimodal"]) < few["global_batch"]
    assert {c["world_size"] for c in CASES.values()} >= {1, 2, 4, 8}
    for case in CASES.values():  # the reference pads short batches: some index is read twice per epoch
        seen = [i for rank in case["rank_indices"]["0"] for i in rank]
        assert set(seen) == set(range(len(case["lengths"]))) and len(seen) % case["global_batch"] == 0


def test_lengths_are_the_references_word_counts(tmp_path):
    path = tmp_path / "records.json"
    path.write_text(json.dumps(FIXTURE["records"]))
    dataset = InstructDataset(path, tmp_path, None, None, None, 2048, 36)
    assert [[int(m), n] for m, n in zip(dataset.multimodal(), dataset.lengths())] == FIXTURE["record_modality_lengths"]


def test_rank_blocks_balance_lengths_as_reindex_batch():
    # batch 1 of the example in batching_utils.py; its comment shows [[4, 3], [5, 0]], but the code
    # (and so the fixture above) sends 0 to the then shorter rank 1, which fills it
    lengths = {4: 91, 3: 21, 0: 20, 5: 18}
    assert rank_blocks([4, 3, 0, 5], lengths, 2) == [[4, 5], [3, 0]]
    with pytest.raises(ValueError, match="not divisible"):
        rank_blocks([1, 2, 3], lengths, 2)


def test_a_modality_smaller_than_half_a_batch_is_cycled():
    # the reference fails an assertion here (padding from the one short batch is not enough)
    multimodal = [True] * 37 + [False] * 3
    batches = split_modality_batches([5] * 40, multimodal, 16, seed=0, world_size=2)
    (language,) = [b for b in batches if not multimodal[b[0]]]
    assert len(language) == 16 and set(language) == {37, 38, 39}

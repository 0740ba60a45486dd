"""The mini world's GQA, VizWiz, TextVQA, POPE, TallyQA and OCID-Ref sets: official file layouts and
field names (as vlm-evaluation reads them), answers that match the scene ground truth, and training
turns in the same prompt formats."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.test_mini_world import (
    OCR_LINE, TALLY_SUFFIX, UNANSWERABLE, VIZWIZ_SUFFIX, VQA_SUFFIX, expected_reply, load, oracle_answer, referents,
    scenes_by_id,
)
from vlmswap.data.mini_world import Scene, Shape, Word, generate, render, sample_text_scene

# More training slots than the format tests need, so that the mixture's shares can be checked.
WORLD = dict(n_train=300, n_eval=30, n_classify=30, image_size=64)
N = WORLD["n_eval"]
EVAL_SETS = ("vqa-v2", "refcoco", "gqa", "vizwiz", "textvqa", "pope", "tallyqa", "ocid-ref")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate(out, seed=5, log=lambda _: None, **WORLD)


def image_size(path: Path) -> tuple[int, int]:
    assert path.is_file(), path
    with Image.open(path) as image:
        return image.size


def layout(scene: dict) -> tuple:
    return tuple(sorted((o["shape"], o["color"], o["x"], o["y"], o["s"]) for o in scene["shapes"]))


def test_gqa_testdev_balanced_questions(world):
    out, _ = world
    questions = load(out / "gqa/testdev_balanced_questions.json")
    scenes = {f"n{i}": s for i, s in scenes_by_id(out)["gqa"].items()}
    assert isinstance(questions, dict) and len(questions) == N
    for qid, q in questions.items():
        assert qid.isdigit()  # vlm-evaluation int()s the key
        assert {"semantic", "entailed", "equivalent", "question", "imageId", "isBalanced", "groups", "answer",
                "semanticStr", "annotations", "types", "fullAnswer"} <= set(q)
        assert q["isBalanced"] is True and q["equivalent"] == [qid] and all(e.isdigit() for e in q["entailed"])
        assert set(q["types"]) == {"structural", "semantic", "detailed"} and set(q["groups"]) == {"global", "local"}
        steps = [f"{s['operation']}: {s['argument']}" + (f" [{', '.join(map(str, s['dependencies']))}]"
                                                         if s["dependencies"] else "") for s in q["semantic"]]
        assert q["semanticStr"] == "->".join(steps)
        assert image_size(out / "gqa/images" / f"{q['imageId']}.jpg") == (64, 64)
        scene = scenes[q["imageId"]]
        assert q["answer"] == oracle_answer(q["question"], scene["shapes"], width=scene["size"]), q["question"]
        assert q["answer"] == q["answer"].lower() and " " not in q["answer"]
        assert (q["answer"] in ("yes", "no")) == (q["types"]["structural"] in ("verify", "logical", "compare"))
    # The official eval.py divides by the answers of questions with a global group: there must be some.
    assert any(q["groups"]["global"] for q in questions.values())
    assert len({q["types"]["structural"] for q in questions.values()}) >= 4


def test_vizwiz_val_annotations_with_unanswerable_questions(world):
    out, _ = world
    records = load(out / "vizwiz/Annotations/val.json")
    scenes = scenes_by_id(out)["vizwiz"]
    assert isinstance(records, list) and len(records) == N
    assert len({r["image"] for r in records}) == N  # one question per image, as the real val set
    for r in records:
        assert set(r) == {"image", "question", "answers", "answer_type", "answerable"}
        assert re.fullmatch(r"VizWiz_val_\d{8}\.jpg", r["image"])
        assert image_size(out / "vizwiz/val" / r["image"]) == (64, 64)
        assert len(r["answers"]) == 10 and all(set(a) == {"answer", "answer_confidence"} for a in r["answers"])
        assert all(a["answer_confidence"] in ("yes", "maybe", "no") for a in r["answers"])
        answers = [a["answer"] for a in r["answers"]]
        scene = scenes[5_000_000 + int(r["image"][11:19])]
        truth = oracle_answer(r["question"], scene["shapes"], scene.get("words", []), scene["size"])
        assert Counter(answers).most_common(1)[0][0] == truth and answers.count(truth) >= 8
        assert r["answerable"] == int(truth != UNANSWERABLE)
        assert (r["answer_type"] == "unanswerable") == (truth == UNANSWERABLE)
        assert r["answer_type"] in ("unanswerable", "yes/no", "number", "other")
    unanswerable = sum(1 - r["answerable"] for r in records)
    assert unanswerable == round(0.15 * N)


def test_textvqa_answers_and_llava_ocr_questions_line_up(world):
    out, _ = world
    annotations = load(out / "textvqa/TextVQA_0.5.1_val.json")
    assert {k: annotations[k] for k in ("dataset_type", "dataset_name", "dataset_version")} == {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1"}
    data = annotations["data"]
    lines = [json.loads(line) for line in (out / "textvqa/textvqa_val_v051_ocr.jsonl").read_text().splitlines()]
    scenes = {f"{i:016x}": s for i, s in scenes_by_id(out)["textvqa"].items()}
    assert len(data) == len(lines) == N and len({d["question_id"] for d in data}) == N
    for d, line in zip(data, lines):  # matched by position, as vlm-evaluation does
        assert {"question", "image_id", "answers", "question_id", "image_width", "image_height", "set_name"} <= set(d)
        assert set(line) == {"question_id", "image", "text", "category"}
        assert line["question_id"] == d["question_id"] and line["image"] == f"{d['image_id']}.jpg"
        assert re.fullmatch(r"[0-9a-f]{16}", d["image_id"])
        assert image_size(out / "textvqa/train_images" / line["image"]) == (d["image_width"], d["image_height"])
        scene = scenes[d["image_id"]]
        question, tokens = line["text"].split(OCR_LINE)
        assert question == d["question"]
        reading_order = sorted(scene["words"], key=lambda w: (w["y"], w["x"]))
        assert tokens.split(", ") == [w["text"] for w in reading_order]
        assert len(d["answers"]) == 10 and all(isinstance(a, str) for a in d["answers"])
        truth = oracle_answer(question, scene["shapes"], scene["words"], scene["size"])
        assert truth in tokens.split(", ") and d["answers"].count(truth) >= 8


def test_words_are_drawn_inside_their_boxes_and_on_their_shapes(world):
    out, _ = world
    for record in scenes_by_id(out)["textvqa"].values():
        shapes = tuple(Shape(**o) for o in record["shapes"])
        words = tuple(Word(**w) for w in record["words"])
        scene = Scene(record["image_id"], record["size"], record["background"], record["noise_seed"], shapes, words)
        plain = np.asarray(render(Scene(scene.image_id, scene.size, scene.background, scene.noise_seed, shapes)))
        changed = (np.asarray(render(scene)) != plain).any(axis=2)
        inside = np.zeros_like(changed)
        for w in words:
            assert 0 <= w.x and w.x + w.w <= scene.size and 0 <= w.y and w.y + w.h <= scene.size
            region = changed[w.y:w.y + w.h, w.x:w.x + w.w]
            assert region.sum() >= 10 * len(w.text), w  # the glyphs are there
            inside[w.y:w.y + w.h, w.x:w.x + w.w] = True
            if w.on >= 0:  # on its shape: the word box lies in the shape's box
                o = shapes[w.on]
                assert o.x <= w.x and w.x + w.w <= o.x + o.s and o.y <= w.y and w.y + w.h <= o.y + o.s
            else:  # on the background: clear of every shape
                assert all(w.x + w.w <= o.x or o.x + o.s <= w.x or w.y + w.h <= o.y or o.y + o.s <= w.y
                           for o in shapes)
        assert not (changed & ~inside).any()


def test_text_is_magnified_for_larger_images():
    small = sample_text_scene(np.random.default_rng(0), 0, 64)
    large = sample_text_scene(np.random.default_rng(0), 0, 96)
    assert {w.h for w in small.words} == {11} and {w.h for w in large.words} == {22}


def test_pope_splits_are_balanced_and_share_their_yes_probes(world):
    out, _ = world
    scenes = {f"COCO_val2014_{i:012d}.jpg": s for i, s in scenes_by_id(out)["pope"].items()}
    splits = {}
    for split in ("adversarial", "popular", "random"):
        rows = [json.loads(line) for line in (out / f"pope/coco_pope_{split}.json").read_text().splitlines()]
        splits[split] = rows
        assert len(rows) == N and [r["question_id"] for r in rows] == list(range(1, N + 1))
        assert Counter(r["label"] for r in rows) == {"yes": N // 2, "no": N // 2}
        for r in rows:
            assert set(r) == {"question_id", "image", "text", "label"}
            m = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", r["text"])
            assert m and re.fullmatch(r"COCO_val2014_\d{12}\.jpg", r["image"])
            assert image_size(out / "pope/val2014" / r["image"]) == (64, 64)
            shapes = scenes[r["image"]]["shapes"]
            assert oracle_answer(r["text"], shapes).lower() == r["label"]
            if split == "adversarial" and r["label"] == "no":  # a confusable absent object
                assert any(o["color"] == m[1] or o["shape"] == m[2] for o in shapes)
    yes = {split: [(r["image"], r["text"]) for r in rows if r["label"] == "yes"] for split, rows in splits.items()}
    assert yes["adversarial"] == yes["popular"] == yes["random"]
    assert {r["image"] for r in splits["random"]} == set(scenes)
    no_popular = Counter(r["text"] for r in splits["popular"] if r["label"] == "no")
    assert no_popular.most_common(1)[0][1] > max(Counter(r["text"] for r in splits["random"]
                                                        if r["label"] == "no").values()) or len(no_popular) <= 3


def test_tallyqa_counts_match_the_scenes(world):
    out, _ = world
    records = load(out / "tallyqa/test.json")
    scenes = scenes_by_id(out)["tallyqa"]
    assert isinstance(records, list) and len(records) == N and len({r["question_id"] for r in records}) == N
    for r in records:
        assert set(r) == {"image", "answer", "data_source", "question", "image_id", "question_id", "issimple"}
        assert isinstance(r["answer"], int) and 0 <= r["answer"] <= 15 and isinstance(r["issimple"], bool)
        assert re.fullmatch(r"VG_100K(_2)?/\d+\.jpg", r["image"])
        assert image_size(out / "tallyqa" / r["image"]) == (64, 64)
        scene = scenes[r["image_id"]]
        assert r["answer"] == int(oracle_answer(r["question"], scene["shapes"], width=scene["size"])), r["question"]
        assert r["issimple"] == r["question"].endswith("are there?")
    assert {r["issimple"] for r in records} == {True, False}
    assert len({r["answer"] for r in records}) >= 3
    assert max(len(s["shapes"]) for s in scenes.values()) >= 4


def test_ocid_ref_boxes_match_the_scenes_and_clutter_grows_with_take_id(world):
    out, _ = world
    expressions = load(out / "ocid-ref/val_expressions.json")
    scenes = {s["image_id"] - 9_000_000: s for s in scenes_by_id(out)["ocid-ref"].values()}
    assert list(expressions) == [str(i) for i in range(N)]
    objects_by_split = {"Minimum": [], "Medium": [], "Maximum": []}
    for e in expressions.values():
        assert {"take_id", "scene_path", "sub_dataset", "sentence", "bbox", "class"} <= set(e)
        assert isinstance(e["take_id"], int) and 0 <= e["take_id"] <= 20
        assert re.fullmatch(r"(ARID20|ARID10|YCB10)/(table|floor)/(top|bottom)/(\w+/)?seq\d\d/rgb/"
                            r"result_2018-08-\d\d-\d\d-\d\d-\d\d\.png", e["scene_path"])
        assert e["scene_path"].startswith(e["sub_dataset"] + "/")
        path = out / "ocid-ref/OCID-dataset" / e["scene_path"]
        assert image_size(path) == (640, 480)
        scene = scenes[e["scene_id"]]
        assert (scene["size"], scene["height"]) == (640, 480)
        (obj,) = referents(e["sentence"], scene["shapes"])
        x1, y1, x2, y2 = json.loads(e["bbox"])  # a JSON string in the released file
        assert [x1, y1, x2, y2] == [obj["x"], obj["y"], obj["x"] + obj["s"], obj["y"] + obj["s"]]
        assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and e["class"] == obj["shape"]
        assert len(scene["shapes"]) == 2 + round(6 * e["take_id"] / 20)
        split = "Minimum" if e["take_id"] <= 9 else "Medium" if e["take_id"] <= 16 else "Maximum"
        objects_by_split[split].append(len(scene["shapes"]))
    assert all(objects_by_split.values())
    means = [np.mean(v) for v in objects_by_split.values()]
    assert means[0] < means[1] < means[2]
    with Image.open(out / "ocid-ref/OCID-dataset" / expressions["0"]["scene_path"]) as image:
        assert image.format == "PNG"


def test_every_eval_set_is_held_out_of_training_and_of_the_others(world):
    out, _ = world
    scenes = load(out / "scenes.json")
    assert set(EVAL_SETS) | {"llava", "classify"} == set(scenes)
    seen = {layout(s) for s in scenes["llava"] + scenes["classify"]}
    train_ids = {s["image_id"] for s in scenes["llava"]}
    for name in EVAL_SETS:
        keys = {layout(s) for s in scenes[name]}
        assert not keys & seen, name
        assert not {s["image_id"] for s in scenes[name]} & train_ids, name
        seen |= keys


def test_training_turns_teach_every_benchmark_format(world):
    out, manifest = world
    records = load(out / "llava/llava_v1_5_mix665k.json")
    assert len(records) == WORLD["n_train"] + manifest["counts"]["llava_language_only"]
    scenes = scenes_by_id(out)["llava"]
    styles = Counter()
    for record in records:
        if "image" not in record:
            continue
        scene = scenes[int(Path(record["image"]).stem)]
        conv = record["conversations"]
        prompts = [t["value"].removeprefix("<image>\n") for t in conv[0::2]]
        assert sum(p.endswith(TALLY_SUFFIX) for p in prompts) <= 1  # keeps records short
        for prompt, reply in zip(prompts, (t["value"] for t in conv[1::2])):
            if prompt.startswith("Please provide the bounding box"):
                styles["grounding"] += 1
                continue
            assert reply == expected_reply(prompt, scene), prompt
            if prompt.endswith(TALLY_SUFFIX):
                styles["tally"] += 1
                assert re.fullmatch(r"[A-P]", reply)
            elif prompt.endswith(VIZWIZ_SUFFIX):
                styles["vizwiz-unanswerable" if reply == UNANSWERABLE else "vizwiz"] += 1
            elif OCR_LINE in prompt:
                styles["textvqa-ocr"] += 1
            elif prompt.startswith("What word is written"):
                styles["textvqa-pure"] += 1
            elif prompt.endswith(f"in the image?{VQA_SUFFIX}"):
                styles["pope"] += 1
                assert reply in ("Yes", "No")
            else:
                styles["vqa/gqa"] += 1
    for style in ("grounding", "tally", "vizwiz", "vizwiz-unanswerable", "textvqa-ocr", "textvqa-pure", "pope"):
        assert styles[style] > 0, style
    assert 0.22 <= styles["grounding"] / sum(styles.values()) <= 0.34
    assert manifest["counts"]["llava_slots"]["text"] > 0 and manifest["counts"]["llava_slots"]["tally"] > 0


def test_manifest_records_the_new_files_counts_and_baselines(world):
    out, manifest = world
    for rel in ("gqa/testdev_balanced_questions.json", "vizwiz/Annotations/val.json",
                "textvqa/TextVQA_0.5.1_val.json", "textvqa/textvqa_val_v051_ocr.jsonl",
                "pope/coco_pope_adversarial.json", "pope/coco_pope_popular.json", "pope/coco_pope_random.json",
                "tallyqa/test.json", "ocid-ref/val_expressions.json"):
        assert rel in manifest["sha256"] and rel in manifest["files"].values(), rel
    for rel in ("gqa/images", "vizwiz/val", "textvqa/train_images", "pope/val2014", "tallyqa", "ocid-ref/OCID-dataset"):
        assert (out / rel).is_dir() and rel in manifest["files"].values(), rel
    counts = manifest["counts"]
    assert counts["gqa_questions"] == counts["vizwiz_questions"] == counts["textvqa_questions"] == N
    assert counts["tallyqa_questions"] == counts["ocidref_expressions"] == counts["pope_random"] == N
    b = manifest["baselines"]
    assert b["pope"]["columns"] == {"pope": 50.0}  # balanced yes/no pairs in every split
    records = load(out / "tallyqa/test.json")
    majority = Counter(r["answer"] for r in records).most_common(1)[0]
    assert b["tallyqa"]["columns"]["tallyqa"] == round(100 * majority[1] / len(records), 2)
    for name, columns in (("gqa", ["gqa"]), ("vizwiz", ["vizwiz"]), ("textvqa", ["textvqa-ocr", "textvqa-pure"])):
        assert list(b[name]["columns"]) == columns and all(0.0 < v <= 100.0 for v in b[name]["columns"].values())
    assert b["ocid-ref"]["baseline"] == "fixed central box [0.25, 0.25, 0.75, 0.75]"


def test_manifest_baselines_are_the_evaluation_baselines(world):
    """world.json's baselines are what vlmswap.evaluate.baselines scores on the written files: the
    numbers the study's baseline rows show for the full sets."""
    from vlmswap.evaluate.baselines import baseline_predictions
    from vlmswap.evaluate.registry import get_benchmark

    out, manifest = world
    for name, root in (("vqa-v2", "vqa-v2"), ("refcoco+", "refcoco"), ("ocid-ref", "ocid-ref"), ("gqa", "gqa")):
        benchmark = get_benchmark(name)
        examples, _ = benchmark.load(out / root, "full")
        description, predictions = baseline_predictions(name, examples)
        score = benchmark.score(examples, predictions)
        assert manifest["baselines"][name] == {
            "baseline": description, "columns": {k: round(v, 2) for k, v in score.columns.items()},
            "n_samples": len(examples)}
    corpus = set((out / "text_corpus.txt").read_text().splitlines())
    assert {"Yes", "No", "unanswerable", "Answer with the option's letter from the given choices directly."} <= corpus
    for line in (out / "textvqa/textvqa_val_v051_ocr.jsonl").read_text().splitlines():
        assert all(part in corpus for part in json.loads(line)["text"].split("\n"))

"""The mini world is a faithful, deterministic stand-in for LLaVA-665K, VQA-v2 val and RefCOCO val.

The other benchmarks it writes are specified in test_mini_world_benchmarks.py; the oracle below answers
every question template of the world from the ground truth in scenes.json."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmswap.data.mini_world import CLASSES, COLORS, SHAPES, SYSTEM_PROMPT, class_mask, generate
from vlmswap.language import human_turn

SMALL = dict(n_train=40, n_eval=24, n_classify=30, image_size=64)
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."
# The other eval prompts of vlm-evaluation (prismatic_spec.md 3.1), used verbatim by training turns.
VIZWIZ_SUFFIX = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + VQA_SUFFIX
TALLY_SUFFIX = "".join(f"\n{chr(65 + i)}. {i}" for i in range(16)) + (
    "\nAnswer with the option's letter from the given choices directly.")
OCR_LINE = "\nReference OCR token: "
UNANSWERABLE = "unanswerable"
GROUNDING = re.compile(
    r'^Please provide the bounding box coordinate of the region this sentence describes: "(.+)"$')
BOX = re.compile(r"^\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]$")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("world")
    lines: list[str] = []
    manifest = generate(out, seed=3, log=lines.append, **SMALL)
    return out, manifest, lines


def load(path: Path):
    return json.loads(path.read_text())


def scenes_by_id(out: Path) -> dict[str, dict[int, dict]]:
    return {name: {s["image_id"]: s for s in scenes} for name, scenes in load(out / "scenes.json").items()}


def parse_box(text: str) -> list[float]:
    box = ast.literal_eval(text)  # exactly how vlm-evaluation parses RefCOCO outputs
    assert isinstance(box, list) and len(box) == 4 and all(isinstance(v, float) for v in box), text
    assert all(0.0 <= v <= 1.0 for v in box) and box[0] < box[2] and box[1] < box[3], text
    return box


def box_of(obj: dict, size: int) -> str:
    return "[" + ", ".join(f"{v / size:.2f}" for v in
                           (obj["x"], obj["y"], obj["x"] + obj["s"], obj["y"] + obj["s"])) + "]"


def center(obj: dict) -> float:
    return obj["x"] + obj["s"] / 2


def side(obj: dict, ref: dict, width: int) -> str | None:
    """The documented "left of" rule: centres at least 5% of the width apart."""
    if center(obj) <= center(ref) - 0.05 * width:
        return "left"
    if center(obj) >= center(ref) + 0.05 * width:
        return "right"
    return None


def oracle_answer(question: str, shapes: list[dict], words: list[dict] = (), width: int | None = None) -> str:
    """Answers a mini-world question from the ground truth alone, independently of the generator.
    A question about an object that is not there is "unanswerable" (only VizWiz asks those)."""

    def only(found: list[dict]) -> dict | None:
        assert len(found) <= 1, (question, found)
        return found[0] if found else None

    def pair(color: str, shape: str) -> dict | None:
        return only([o for o in shapes if (o["color"], o["shape"]) == (color, shape)])

    def on_side(ref: dict, where: str) -> list[dict]:
        others = [o for o in shapes if o is not ref]
        assert all(side(o, ref, width) for o in others), "the reference must be clearly placed"
        return [o for o in others if side(o, ref, width) == where]

    def yes_no(truth: bool) -> str:
        return "yes" if truth else "no"

    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        obj = only([o for o in shapes if o["shape"] == m[1]])
        return obj["color"] if obj else UNANSWERABLE
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        obj = only([o for o in shapes if o["color"] == m[1]])
        return obj["shape"] if obj else UNANSWERABLE
    if question == "How many objects are there?":
        return str(len(shapes))
    if m := re.fullmatch(r"How many (shape|circle|square|triangle)s are (left|right) of the (\w+) (\w+)\?", question):
        found = on_side(pair(m[3], m[4]), m[2])
        return str(sum(m[1] == "shape" or o["shape"] == m[1] for o in found))
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return str(sum(o["color"] == m[1] for o in shapes))
    if m := re.fullmatch(r"How many (\w+) (\w+)s are there\?", question):
        return str(sum((o["color"], o["shape"]) == (m[1], m[2]) for o in shapes))
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in shapes))
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question):  # POPE: capitalized
        return "Yes" if any((o["color"], o["shape"]) == (m[1], m[2]) for o in shapes) else "No"
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", question):
        return yes_no(any((o["color"], o["shape"]) == (m[1], m[2]) for o in shapes))
    # GQA-style
    if m := re.fullmatch(r"What is the color of the (\w+)\?", question):
        return only([o for o in shapes if o["shape"] == m[1]])["color"]
    if m := re.fullmatch(r"What is the shape of the (\w+) object\?", question):
        return only([o for o in shapes if o["color"] == m[1]])["shape"]
    if m := re.fullmatch(r"What (color|shape) is the object to the (left|right) of the (\w+) (\w+)\?", question):
        (obj,) = on_side(pair(m[3], m[4]), m[2])
        return obj[m[1]]
    if m := re.fullmatch(r"Is the (\w+) (\w+) or (\w+)\?", question):
        obj = only([o for o in shapes if o["shape"] == m[1]])
        assert obj["color"] in (m[2], m[3])
        return obj["color"]
    if m := re.fullmatch(r"Is the (\w+) (\w+) to the (left|right) of the (\w+) (\w+)\?", question):
        return yes_no(side(pair(m[1], m[2]), pair(m[4], m[5]), width) == m[3])
    if m := re.fullmatch(r"Is the (\w+) (\w+)\?", question):
        return yes_no(only([o for o in shapes if o["shape"] == m[1]])["color"] == m[2])
    if m := re.fullmatch(r"Are there both a (\w+) (\w+) and a (\w+) (\w+)\?", question):
        return yes_no(all(any((o["color"], o["shape"]) == c for o in shapes) for c in ((m[1], m[2]), (m[3], m[4]))))
    if m := re.fullmatch(r"Do the (\w+) and the (\w+) have the same color\?", question):
        a, b = (only([o for o in shapes if o["shape"] == k]) for k in (m[1], m[2]))
        return yes_no(a["color"] == b["color"])
    # TextVQA-style (and VizWiz questions about a word)
    if question == "What word is written in the image?":
        (word,) = words
        return word["text"]
    if question == "What word is written on the background?":
        (word,) = [w for w in words if w["on"] == -1]
        return word["text"]
    if m := re.fullmatch(r"What word is written on the (\w+) (\w+)\?", question):
        index = shapes.index(pair(m[1], m[2]))
        return next((w["text"] for w in words if w["on"] == index), UNANSWERABLE)
    raise AssertionError(f"unknown question template: {question!r}")


def expected_reply(prompt: str, scene: dict) -> str:
    """What the assistant must answer to a non-grounding training prompt, read from the ground truth."""
    shapes, words, width = scene["shapes"], scene.get("words", []), scene["size"]
    if prompt.endswith(TALLY_SUFFIX):
        return chr(ord("A") + int(oracle_answer(prompt.removesuffix(TALLY_SUFFIX), shapes, words, width)))
    if prompt.endswith(VIZWIZ_SUFFIX):
        return oracle_answer(prompt.removesuffix(VIZWIZ_SUFFIX), shapes, words, width)
    assert prompt.endswith(VQA_SUFFIX), prompt
    question = prompt.removesuffix(VQA_SUFFIX)
    if OCR_LINE in question:
        question, tokens = question.split(OCR_LINE)
        reading_order = sorted(words, key=lambda w: (w["y"], w["x"]))
        assert tokens.split(", ") == [w["text"] for w in reading_order]
    answer = oracle_answer(question, shapes, words, width)
    assert answer != UNANSWERABLE, prompt
    return answer


def referents(sentence: str, shapes: list[dict]) -> list[dict]:
    """The objects a referring expression can mean, read from the ground truth."""
    words = sentence.split()
    found = [o for o in shapes
             if all(w not in COLORS or o["color"] == w for w in words)
             and all(w not in SHAPES or o["shape"] == w for w in words)]
    if sentence.endswith("on the left"):
        found = [min(found, key=lambda o: o["x"] + o["s"] / 2)]
    if sentence.endswith("on the right"):
        found = [max(found, key=lambda o: o["x"] + o["s"] / 2)]
    return found


def test_same_seed_gives_identical_files_and_another_seed_differs(world, tmp_path):
    out, _, _ = world
    again = tmp_path / "again"
    generate(again, seed=3, log=lambda _: None, **SMALL)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate(other, seed=4, log=lambda _: None, **SMALL)
    assert (other / "llava/llava_v1_5_mix665k.json").read_bytes() != (
        out / "llava/llava_v1_5_mix665k.json").read_bytes()


def test_writes_atomically_and_logs_each_stage(world):
    out, _, lines = world
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for stage in ("llava:", "classify:", "vqa-v2:", "refcoco:", "baselines:", "world:"):
        assert any(line.startswith(stage) for line in lines), stage


def test_instruction_set_has_the_llava_665k_format(world):
    out, _, _ = world
    records = load(out / "llava/llava_v1_5_mix665k.json")
    with_image = [r for r in records if "image" in r]
    language = [r for r in records if "image" not in r]
    assert len(with_image) == SMALL["n_train"] and 1 <= len(language) <= 0.1 * len(records)
    scenes = scenes_by_id(out)["llava"]
    turns = Counter()
    for record in records:
        assert set(record) <= {"id", "image", "conversations"} and isinstance(record["id"], str)
        conv = record["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        if "image" not in record:
            assert not any("<image>" in t["value"] for t in conv)
            continue
        assert re.fullmatch(r"coco/train2017/\d{12}\.jpg", record["image"])
        with Image.open(out / "llava" / record["image"]) as image:
            assert image.size == (64, 64) and image.format == "JPEG"
        assert 2 <= len(conv) // 2 <= 4
        assert conv[0]["value"].startswith("<image>\n")
        assert not any("<image>" in t["value"] for t in conv[1:])
        scene = scenes[int(Path(record["image"]).stem)]
        shapes = scene["shapes"]
        for human, gpt in zip(conv[0::2], conv[1::2]):
            question, answer = human["value"].removeprefix("<image>\n"), gpt["value"]
            if m := GROUNDING.match(question):
                turns["grounding"] += 1
                assert BOX.match(answer), answer
                parse_box(answer)
                (obj,) = referents(m[1], shapes)
                assert answer == box_of(obj, 64)
            else:
                turns["vqa"] += 1
                assert answer == expected_reply(question, scene), question
    assert 0.15 < turns["grounding"] / sum(turns.values()) < 0.45


def test_vqa_v2_files_have_the_official_format_and_correct_answers(world):
    out, _, _ = world
    questions = load(out / "vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json")
    annotations = load(out / "vqa-v2/v2_mscoco_val2014_annotations.json")
    assert {"info", "task_type", "data_type", "license", "data_subtype", "questions"} <= set(questions)
    assert questions["task_type"] == "Open-Ended" and questions["data_subtype"] == "val2014"
    assert {"info", "license", "data_subtype", "annotations"} <= set(annotations)
    qs, anns = questions["questions"], annotations["annotations"]
    assert len(qs) == 2 * SMALL["n_eval"]
    assert [q["question_id"] for q in qs] == [a["question_id"] for a in anns]
    assert len({q["question_id"] for q in qs}) == len(qs)
    scenes = scenes_by_id(out)["vqa-v2"]
    for q, a in zip(qs, anns):
        assert q["image_id"] == a["image_id"] and q["question_id"] // 1000 == q["image_id"]
        assert a["answer_type"] in {"yes/no", "number", "other"} and a["question_type"]
        answers = [x["answer"] for x in a["answers"]]
        assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
        assert all(x["answer_confidence"] == "yes" for x in a["answers"])
        truth = oracle_answer(q["question"], scenes[q["image_id"]]["shapes"])
        assert a["multiple_choice_answer"] == truth and answers.count(truth) >= 8
        with Image.open(out / f"vqa-v2/val2014/COCO_val2014_{q['image_id']:012d}.jpg") as image:
            assert image.size == (64, 64)
    assert {a["answer_type"] for a in anns} == {"yes/no", "number", "other"}
    assert any(len(set(x["answer"] for x in a["answers"])) > 1 for a in anns), "no annotator noise"


def test_refcoco_loads_with_pycocotools_and_refs_point_at_their_objects(world):
    from pycocotools.coco import COCO

    out, _, _ = world
    coco = COCO(str(out / "refcoco/refcoco/instances.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(SHAPES)
    raw = (out / "refcoco/refcoco/refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2, as the REFER files
    refs = pickle.loads(raw)
    scenes = scenes_by_id(out)["refcoco"]
    sentences = [s for r in refs for s in r["sentences"]]
    assert len(sentences) == SMALL["n_eval"]
    assert len({s["sent_id"] for s in sentences}) == len(sentences)
    for ref in refs:
        assert ref["split"] == "val" and 1 <= len(ref["sentences"]) <= 2
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        assert ref["file_name"] == f"COCO_train2014_{ref['image_id']:012d}_{ref['ann_id']}.jpg"
        ann = coco.anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        image = coco.imgs[ref["image_id"]]
        assert image["file_name"] == f"COCO_train2014_{ref['image_id']:012d}.jpg"
        with Image.open(out / "refcoco/train2014" / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (64, 64)
        for sentence in ref["sentences"]:
            assert sentence["sent"] == sentence["raw"].lower() and sentence["tokens"] == sentence["sent"].split()
            (obj,) = referents(sentence["sent"], scenes[ref["image_id"]]["shapes"])
            assert ann["bbox"] == [float(obj["x"]), float(obj["y"]), float(obj["s"]), float(obj["s"])]
            assert coco.cats[ann["category_id"]]["name"] == obj["shape"]
    # Every object of a referenced image is annotated, not only the referred ones.
    for image_id, scene in scenes.items():
        assert len(coco.getAnnIds(imgIds=[image_id])) == len(scene["shapes"])


def test_eval_scenes_are_held_out_of_training(world):
    out, _, _ = world
    scenes = load(out / "scenes.json")

    def key(scene):
        return tuple(sorted((o["shape"], o["color"], o["x"], o["y"], o["s"]) for o in scene["shapes"]))

    seen = {key(s) for s in scenes["llava"] + scenes["classify"]}
    train_ids = {s["image_id"] for s in scenes["llava"]}
    for name in ("vqa-v2", "refcoco"):
        assert not {key(s) for s in scenes[name]} & seen
        assert not {s["image_id"] for s in scenes[name]} & train_ids
    assert not {s["image_id"] for s in scenes["vqa-v2"]} & {s["image_id"] for s in scenes["refcoco"]}


def test_classification_labels_name_the_largest_shape(world):
    out, _, _ = world
    assert load(out / "classify/classes.json") == CLASSES and len(CLASSES) == 12
    scenes = {s["image_id"]: s for s in load(out / "scenes.json")["classify"]}
    rows = [json.loads(line) for split in ("train", "val")
            for line in (out / f"classify/{split}.jsonl").read_text().splitlines()]
    assert len(rows) == SMALL["n_classify"]
    for row in rows:
        assert 0 <= row["label"] < len(CLASSES) and row["label_name"] == CLASSES[row["label"]]
        with Image.open(out / "classify" / row["image"]) as image:
            assert image.size == (64, 64) and image.format == "PNG"
        shapes = scenes[int(Path(row["image"]).stem)]["shapes"]
        sides = sorted((o["s"] for o in shapes), reverse=True)
        assert len(sides) == 1 or sides[0] > sides[1]
        largest = max(shapes, key=lambda o: o["s"])
        assert row["label_name"] == f"{largest['color']}_{largest['shape']}"
        # every shape is an instance with its box and polygon (detection / segmentation targets)
        assert row["size"] == 64 and len(row["objects"]) == len(shapes)
        for obj, shape in zip(row["objects"], shapes):
            assert CLASSES[obj["label"]] == f"{shape['color']}_{shape['shape']}"
            assert obj["bbox"] == [shape["x"], shape["y"], shape["x"] + shape["s"], shape["y"] + shape["s"]]
            xs, ys = obj["polygon"][0::2], obj["polygon"][1::2]
            assert min(xs) >= obj["bbox"][0] - 0.01 and max(xs) <= obj["bbox"][2] + 0.01
            assert min(ys) >= obj["bbox"][1] - 0.01 and max(ys) <= obj["bbox"][3] + 0.01


def test_segmentation_masks_are_exactly_the_painted_pixels(world):
    out, _, _ = world
    for line in (out / "classify/train.jsonl").read_text().splitlines():
        row = json.loads(line)
        mask = np.array(class_mask(row["objects"], row["size"]))
        with Image.open(out / "classify" / row["image"]) as image:
            pixels = np.array(image.convert("RGB"))
        for obj in row["objects"]:
            color = COLORS[CLASSES[obj["label"]].split("_")[0]]
            x0, y0, x1, y1 = obj["bbox"]  # shapes do not overlap: look inside this one's box
            painted = (pixels[y0:y1, x0:x1] == color).all(-1)
            assert ((mask[y0:y1, x0:x1] == obj["label"] + 1) == painted).all(), row["image"]
            assert painted.any()


def test_manifest_hashes_baselines_and_text_corpus(world):
    out, manifest, _ = world
    assert load(out / "world.json") == manifest
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel
    assert "llava/llava_v1_5_mix665k.json" in manifest["sha256"]
    baselines = manifest["baselines"]
    for name in ("vqa-v2", "refcoco", "refcoco+", "refcocog"):
        assert baselines[name]["baseline"] and baselines[name]["n_samples"] > 0
        assert 0.0 <= baselines[name]["columns"][name] <= 100.0
    corpus = Counter((out / "text_corpus.txt").read_text().splitlines())
    assert SYSTEM_PROMPT in corpus and "Answer the question using a single word or phrase." in corpus
    records = load(out / "llava/llava_v1_5_mix665k.json")
    seen = Counter()
    for record in records:
        for k, turn in enumerate(record["conversations"]):
            # human turns as the LLM reads them (Vicuna's prompt), assistant turns as written
            text = human_turn(turn["value"], first=k == 0) if k % 2 == 0 else turn["value"]
            for line in text.strip().split("\n"):
                assert line.strip() in corpus, line
                seen[line.strip()] += 1
    # once per occurrence, so that BPE merges follow how often the world says a thing
    assert all(corpus[line] >= n for line, n in seen.items())
    assert sum(n for line, n in corpus.items() if line.startswith(SYSTEM_PROMPT)) >= len(records)
    for q in load(out / "vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json")["questions"]:
        assert q["question"] in corpus


def test_a_tokenizer_trained_on_the_corpus_reads_the_prompt_format_in_words(world):
    """The system prompt and the turn markers come once per record and per turn; a BPE trained on
    the corpus therefore keeps their words whole, as Vicuna's tokenizer does (about one token a
    word), instead of spelling them out letter by letter. A set of distinct lines did not."""
    from vlmswap.language import train_tokenizer

    out, _, _ = world
    tok = train_tokenizer((out / "text_corpus.txt").read_text().splitlines(), 512)
    system = tok(SYSTEM_PROMPT, add_special_tokens=False).input_ids
    assert len(system) <= len(SYSTEM_PROMPT.split()) + 2, tok.convert_ids_to_tokens(system)
    assert len(tok("USER: ASSISTANT:", add_special_tokens=False).input_ids) <= 4
    # "\n" (between a VQA question and its instruction) is a token of its own, not <unk>
    ids = tok("How many?\nAnswer the question", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids and "\n" in tok.convert_ids_to_tokens(ids)


def test_rendered_shapes_fill_exactly_their_boxes():
    import numpy as np

    from vlmswap.data.mini_world import Scene, Shape, render

    for kind in SHAPES:
        obj = Shape(kind, "blue", x=10, y=20, s=24)
        pixels = np.asarray(render(Scene(0, 64, 220, 7, (obj,)))).astype(int)
        blue = (pixels[..., 2] - pixels[..., 0] > 100).nonzero()
        assert (blue[1].min(), blue[0].min(), blue[1].max() + 1, blue[0].max() + 1) == obj.xyxy, kind


def test_focused_mix_trains_only_vqa_and_grounding(tmp_path):
    generate(tmp_path, seed=2, n_train=40, n_eval=6, n_classify=12, image_size=32, log=lambda m: None,
             mix="vqa+grounding")
    records = json.loads((tmp_path / "llava" / "llava_v1_5_mix665k.json").read_text())
    humans = [t["value"] for r in records if "image" in r for t in r["conversations"][::2]]
    grounding = [h for h in humans if "bounding box coordinate" in h]
    assert grounding and len(grounding) < len(humans)
    assert all(h in grounding or h.endswith("\nAnswer the question using a single word or phrase.") for h in humans)
    assert not any("Reference OCR token" in h or "Unanswerable" in h or "\nA. 0" in h for h in humans)
    with pytest.raises(ValueError, match="unknown training mix"):
        generate(tmp_path / "x", mix="everything", log=lambda m: None)


def test_refcoco_plus_and_g_share_the_refer_folder(tmp_path):
    from vlmswap.evaluate.registry import get_benchmark

    generate(tmp_path, seed=4, n_train=10, n_eval=8, n_classify=12, image_size=32, log=lambda m: None)
    loaded = {b: get_benchmark(b).load(tmp_path / "refcoco", "full") for b in ("refcoco", "refcoco+", "refcocog")}
    assert all(len(ex) == 8 and not sk for ex, sk in loaded.values())
    assert [e.target for e in loaded["refcocog"][0]] == [e.target for e in loaded["refcoco"][0]]
    assert all(e.prompt.endswith('in the picture"') for e in loaded["refcocog"][0])


def test_a_layout_grid_snaps_every_plain_box_and_leaves_the_free_world_as_it_was(tmp_path):
    """`mini.grid`: boxes of the plain scenes (training, classification, VQA-v2, RefCOCO) on whole grid
    cells, so a RefCOCO box is a few discrete coordinates; grid 0 draws exactly the free layouts."""
    import numpy as np

    from vlmswap.data.mini_world.scene import sample_scene, stream_rng

    free = [sample_scene(stream_rng(0, 1, i), i, 64) for i in range(50)]
    assert free == [sample_scene(stream_rng(0, 1, i), i, 64, grid=0) for i in range(50)]
    assert any(o.x % 16 or o.s % 16 for scene in free for o in scene.shapes)

    world = generate(tmp_path, seed=2, n_train=40, n_eval=12, n_classify=12, image_size=64, grid=4,
                     mix="vqa+grounding", log=lambda m: None)  # every training slot a plain scene
    assert world["grid"] == 4
    scenes = json.loads((tmp_path / "scenes.json").read_text())
    plain = [s for name in ("vqa-v2", "refcoco", "classify") for s in scenes[name]]
    plain += scenes["llava"]
    assert plain and all(o[k] % 16 == 0 and o["s"] >= 16 for s in plain for o in s["shapes"] for k in ("x", "y", "s"))
    refs = json.loads((tmp_path / "refcoco" / "refcoco" / "instances.json").read_text())["annotations"]
    assert refs and all(np.allclose(np.array(a["bbox"]) % 16, 0) for a in refs)

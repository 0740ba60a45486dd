"""One writer per benchmark format: each draws its held-out scenes, writes the benchmark's files
under `out/` exactly as the released dataset lays them out, and returns its scenes and records.

Every writer holds its scenes out of the layouts in `seen` and adds its own to it, so the eval
sets are disjoint from the training and classification scenes and from each other; `remember`
collects, once per occurrence, the text the tokenizer is trained on (the evaluation prompts
included).
"""

from __future__ import annotations

import io
import json
import pickle
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from vlmswap.atomic import write_bytes
from vlmswap.data.mini_world.gqa import GQA_KINDS, ask_gqa, gqa_kinds, gqa_record
from vlmswap.data.mini_world.questions import (
    POPE_TEMPLATE, QUESTION_FAMILIES, VQA_FAMILIES, annotator_answers, ask, ask_tally, ask_vizwiz,
    available_families, referring_expressions, text_answers, vizwiz_answers,
)
from vlmswap.data.mini_world.render import area, box_string, ocid_box_string, polygon, render
from vlmswap.data.mini_world.scene import (
    CLASSES, COLORS, GQA_ID0, OCID_CLUTTER, OCID_ID0, OCID_SIZE_RANGE, OCID_WH, POPE_ID0, REFCOCO_ID0, SHAPES,
    TALLY_ID0, TEXTVQA_ID0, VIZWIZ_ID0, VQA_ID0, Scene, Shape, fresh_scenes, held_out_scenes, ocid_objects,
    sample_scene, sample_tally_scene, stream_rng,
)
from vlmswap.data.mini_world.text import ocr_tokens, sample_text_scene, text_questions
from vlmswap.evaluate.prompts import (
    TALLY_LETTERS, grounding_prompt, ocr_question, tally_prompt, vizwiz_prompt, vqa_prompt,
)

Remember = Callable[..., None]

CLASSIFY_VAL_SHARE = 0.1
VQA_PER_SCENE = 2
GQA_PER_SCENE = 3
TEXTVQA_PER_SCENE = 2
TALLY_PER_SCENE = 2
OCID_PER_SCENE = 3
POPE_PAIRS_PER_SCENE = 2  # POPE asks balanced yes/no pairs about each image
UNANSWERABLE_SHARE = 0.15  # of the VizWiz val questions
OCID_SUBSETS = (("ARID20", ""), ("ARID10", "box"), ("ARID10", "fruits"), ("YCB10", "cuboid"), ("YCB10", "curved"))
CATEGORY_IDS = {shape: i + 1 for i, shape in enumerate(SHAPES)}
COCO_INFO = {"description": "vlmswap mini world (procedural shapes)", "version": "2.0", "year": 2017,
             "contributor": "vlmswap", "date_created": "2017-04-26 17:00:44"}
COCO_LICENSE = {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "Creative Commons Attribution 4.0"}


def ask_distinct(ask_one: Callable, scene, wanted: str, available: list[str], asked: set, rng: np.random.Generator):
    """A question of kind `wanted` (a random available kind when the scene does not allow it), redrawn
    with a random available kind up to 10 times while it repeats one already asked of the scene."""
    for _retry in range(10):
        q = ask_one(scene, wanted if wanted in available else available[int(rng.integers(len(available)))], rng)
        if q.question not in asked:
            break
        wanted = available[int(rng.integers(len(available)))]
    return q


def write_compact_json(path: Path, obj) -> None:
    """Compact JSON (the data files are large); key order is the construction order, deterministic."""
    write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def write_image(path: Path, image: Image.Image) -> None:
    buffer = io.BytesIO()
    if path.suffix == ".png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format="JPEG", quality=95)
    write_bytes(path, buffer.getvalue())


def write_classify(out: Path, seed: int, n: int, size: int,
                   grid: int = 0) -> tuple[list[Scene], dict[str, list[str]]]:
    """The 12-class (shape x color) set: `classify/{train,val}.jsonl`, `classes.json`,
    `images/{i:06d}.png`; a row's label is its largest shape, its `objects` every shape."""
    order = stream_rng(seed, 5, 0).permutation(np.arange(n) % len(CLASSES))
    scenes, lines = [], {"train": [], "val": []}
    n_val = round(CLASSIFY_VAL_SHARE * n)
    for i in range(n):
        rng = stream_rng(seed, 6, i)
        label = int(order[i])
        for _attempt in range(20):
            scene = sample_scene(rng, i, size, n_shapes=1 if rng.random() < 0.5 else int(rng.integers(2, 4)), grid=grid)
            # The labelled shape must be strictly the largest, so the label is unambiguous.
            sides = sorted((o.s for o in scene.shapes), reverse=True)
            if len(sides) == 1 or sides[0] > sides[1]:
                break
        primary = max(range(len(scene.shapes)), key=lambda j: scene.shapes[j].s)
        old = scene.shapes[primary]
        new = Shape(SHAPES[label // len(COLORS)], list(COLORS)[label % len(COLORS)], old.x, old.y, old.s)
        scene = Scene(scene.image_id, size, scene.background, scene.noise_seed,
                      scene.shapes[:primary] + (new,) + scene.shapes[primary + 1:])
        scenes.append(scene)
        name = f"images/{i:06d}.png"
        write_image(out / "classify" / name, render(scene))
        # every shape as a labelled instance: the detection (box) and segmentation (polygon) targets
        objects = [{"label": CLASSES.index(f"{o.color}_{o.shape}"), "bbox": list(o.xyxy), "polygon": polygon(o)}
                   for o in scene.shapes]
        lines["val" if i >= n - n_val else "train"].append(
            json.dumps({"image": name, "label": label, "label_name": CLASSES[label], "size": size,
                        "objects": objects}))
    for split, split_lines in lines.items():
        write_bytes(out / "classify" / f"{split}.jsonl", ("\n".join(split_lines) + "\n").encode())
    write_compact_json(out / "classify" / "classes.json", CLASSES)
    return scenes, lines


def write_vqav2(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember,
                grid: int = 0) -> tuple[list[Scene], list]:
    """VQA-v2 val: the questions and annotations files + `val2014/COCO_val2014_{id:012d}.jpg`, n images
    x 2 questions, the question families kept balanced, 10 answers with a little annotator noise."""
    scenes = held_out_scenes(seed, 7, VQA_ID0, n, size, seen, grid)
    questions, annotations = [], []
    family_cycle = 0
    for scene in scenes:
        rng = stream_rng(seed, 8, scene.image_id)
        families, asked = available_families(scene), set()
        for k in range(VQA_PER_SCENE):
            wanted = VQA_FAMILIES[family_cycle % len(VQA_FAMILIES)]  # keeps the families balanced
            family_cycle += 1
            q = ask_distinct(ask, scene, wanted, families, asked, rng)
            asked.add(q.question)
            _, question_type, answer_type = QUESTION_FAMILIES[q.family]
            question_id = scene.image_id * 1000 + k
            answers = annotator_answers(q, rng)
            questions.append({"image_id": scene.image_id, "question": q.question, "question_id": question_id})
            annotations.append({
                "question_id": question_id, "image_id": scene.image_id, "question_type": question_type,
                "answer_type": answer_type, "multiple_choice_answer": Counter(answers).most_common(1)[0][0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                            for j, a in enumerate(answers)],
            })
            remember(vqa_prompt(q.question), *answers)
        write_image(out / "vqa-v2" / "val2014" / f"COCO_val2014_{scene.image_id:012d}.jpg", render(scene))
    write_compact_json(out / "vqa-v2" / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": COCO_INFO, "task_type": "Open-Ended", "data_type": "mscoco", "license": COCO_LICENSE,
        "data_subtype": "val2014", "questions": questions})
    write_compact_json(out / "vqa-v2" / "v2_mscoco_val2014_annotations.json", {
        "info": COCO_INFO, "license": COCO_LICENSE, "data_subtype": "val2014", "annotations": annotations,
        "data_type": "mscoco"})
    seen |= {s.key() for s in scenes}
    return scenes, annotations


def write_refcoco(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember,
                  grid: int = 0) -> tuple[list[Scene], list]:
    """RefCOCO val in the REFER layout (`refcoco/instances.json`, `refs(unc).p`, pycocotools + pickle
    protocol 2) + `train2014/COCO_train2014_{id:012d}.jpg`: refs until n sentences, split "val".
    RefCOCO+ (unc) and RefCOCOg (umd) share the images and objects, each with its own folder, as in
    REFER: RefCOCO+ keeps the appearance-only wording; RefCOCOg's expressions are longer."""
    images, anns, refs, scenes = [], [], [], []
    sent_id, i = 0, 0
    while sent_id < n:
        scene = sample_scene(stream_rng(seed, 9, i), REFCOCO_ID0 + i, size, grid=grid)
        i += 1
        expressions = referring_expressions(scene)
        if scene.key() in seen or not expressions:
            continue
        scenes.append(scene)
        rng = stream_rng(seed, 10, scene.image_id)
        file_name = f"COCO_train2014_{scene.image_id:012d}.jpg"
        images.append({"id": scene.image_id, "file_name": file_name, "width": size, "height": size})
        for j, o in enumerate(scene.shapes):
            anns.append({"id": scene.image_id * 10 + j, "image_id": scene.image_id,
                         "bbox": [float(o.x), float(o.y), float(o.s), float(o.s)],
                         "category_id": CATEGORY_IDS[o.shape], "area": area(o), "iscrowd": 0,
                         "segmentation": [polygon(o)]})
        referred = list(expressions)
        referred = [referred[int(j)] for j in rng.permutation(len(referred))][: int(rng.integers(1, 3))]
        for j in referred:
            if sent_id >= n:
                break
            pool = expressions[j]
            n_sent = min(len(pool), int(rng.integers(1, 3)), n - sent_id)
            sentences = []
            for k in rng.choice(len(pool), size=n_sent, replace=False):
                raw = pool[int(k)]
                sentences.append({"tokens": raw.lower().split(), "raw": raw, "sent_id": sent_id, "sent": raw.lower()})
                sent_id += 1
                remember(grounding_prompt(raw.lower()), box_string(scene.shapes[j], size))
            o, ann_id = scene.shapes[j], scene.image_id * 10 + j
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": scene.image_id, "split": "val",
                         "category_id": CATEGORY_IDS[o.shape],
                         "file_name": f"COCO_train2014_{scene.image_id:012d}_{ann_id}.jpg",
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
        write_image(out / "refcoco" / "train2014" / file_name, render(scene))
    scene_objects = {sc.image_id * 10 + j: o for sc in scenes for j, o in enumerate(sc.shapes)}
    instances = {"info": COCO_INFO, "images": images, "licenses": [dict(COCO_LICENSE, id=1)], "annotations": anns,
                 "categories": [{"id": CATEGORY_IDS[s], "name": s, "supercategory": "shape"} for s in SHAPES]}
    write_compact_json(out / "refcoco" / "refcoco" / "instances.json", instances)
    write_bytes(out / "refcoco" / "refcoco" / "refs(unc).p", pickle.dumps(refs, protocol=2))
    for dataset, split_by, wording in (("refcoco+", "unc", "{}"), ("refcocog", "umd", "{} in the picture")):
        variant = []
        for ref in refs:
            sentences = []
            for sent in ref["sentences"]:
                raw = wording.format(sent["raw"])
                sentences.append({**sent, "raw": raw, "sent": raw.lower(), "tokens": raw.lower().split()})
                remember(grounding_prompt(raw.lower()), box_string(scene_objects[ref["ann_id"]], size))
            variant.append({**ref, "sentences": sentences})
        write_compact_json(out / "refcoco" / dataset / "instances.json", instances)
        write_bytes(out / "refcoco" / dataset / f"refs({split_by}).p", pickle.dumps(variant, protocol=2))
    seen |= {s.key() for s in scenes}
    return scenes, refs


def write_gqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember,
              grid: int = 0) -> tuple[list[Scene], dict]:
    """GQA testdev-balanced: `testdev_balanced_questions.json` + `images/{imageId}.jpg`."""
    questions, scenes, cycle = {}, [], 0
    fresh = fresh_scenes(lambda i: sample_scene(stream_rng(seed, 21, i), GQA_ID0 + i, size, grid=grid), seen)
    while len(questions) < n:
        scene = next(fresh)
        rng = stream_rng(seed, 22, scene.image_id)
        kinds, asked, image_id = gqa_kinds(scene), set(), f"n{scene.image_id}"
        for k in range(GQA_PER_SCENE):
            wanted = GQA_KINDS[cycle % len(GQA_KINDS)]  # keeps the kinds balanced
            cycle += 1
            q = ask_distinct(ask_gqa, scene, wanted, kinds, asked, rng)
            if q.question in asked or len(questions) >= n:
                continue
            asked.add(q.question)
            qid = str(scene.image_id * 10 + k)
            questions[qid] = gqa_record(q, qid, image_id)
            remember(vqa_prompt(q.question), q.answer, q.full_answer)
        scenes.append(scene)
        write_image(out / "gqa" / "images" / f"{image_id}.jpg", render(scene))
    write_compact_json(out / "gqa" / "testdev_balanced_questions.json", questions)
    return scenes, questions


def write_vizwiz(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember,
                 grid: int = 0) -> tuple[list[Scene], list]:
    """VizWiz val: `Annotations/val.json` + `val/VizWiz_val_{n:08d}.jpg`, one question per image."""
    unanswerable = {int(i) for i in stream_rng(seed, 23, 0).permutation(n)[: round(UNANSWERABLE_SHARE * n)]}
    records, scenes = [], []
    fresh = fresh_scenes(lambda i: sample_scene(stream_rng(seed, 24, i), VIZWIZ_ID0 + i, size, grid=grid), seen)
    while len(records) < n:
        scene = next(fresh)
        rng = stream_rng(seed, 25, scene.image_id)
        q = ask_vizwiz(scene, rng, len(records) in unanswerable)
        if q is None:
            continue
        answers = vizwiz_answers(q, rng)
        answer_type = {"unanswerable": "unanswerable", "text": "other"}.get(q.family) or QUESTION_FAMILIES[q.family][2]
        name = f"VizWiz_val_{scene.image_id - VIZWIZ_ID0:08d}.jpg"
        records.append({"image": name, "question": q.question, "answers": answers, "answer_type": answer_type,
                        "answerable": int(q.family != "unanswerable")})
        remember(vizwiz_prompt(q.question), *(a["answer"] for a in answers))
        scenes.append(scene)
        write_image(out / "vizwiz" / "val" / name, render(scene))
    write_compact_json(out / "vizwiz" / "Annotations" / "val.json", records)
    return scenes, records


def write_textvqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember) -> tuple[list[Scene], list]:
    """TextVQA val: `TextVQA_0.5.1_val.json`, LLaVA's `textvqa_val_v051_ocr.jsonl` (same order) and
    `train_images/{image_id}.jpg`."""
    data, lines, scenes = [], [], []
    fresh = fresh_scenes(lambda i: sample_text_scene(stream_rng(seed, 26, i), TEXTVQA_ID0 + i, size), seen)
    while len(data) < n:
        scene = next(fresh)
        rng = stream_rng(seed, 27, scene.image_id)
        image_id, options = f"{scene.image_id:016x}", text_questions(scene)
        tokens = ocr_tokens(scene)
        for k in rng.permutation(len(options))[:TEXTVQA_PER_SCENE]:
            if len(data) >= n:
                break
            question, answer = options[int(k)]
            qid = scene.image_id * 10 + int(k)
            answers = text_answers(answer, rng)
            data.append({"question": question, "image_id": image_id, "image_classes": [], "flickr_original_url": "",
                         "flickr_300k_url": "", "image_width": size, "image_height": size, "answers": answers,
                         "question_tokens": question.lower().rstrip("?").split(), "question_id": qid,
                         "set_name": "val"})
            text = ocr_question(question, tokens)
            lines.append(json.dumps({"question_id": qid, "image": f"{image_id}.jpg", "text": text,
                                     "category": "default"}))
            remember(vqa_prompt(text), *answers)
        scenes.append(scene)
        write_image(out / "textvqa" / "train_images" / f"{image_id}.jpg", render(scene))
    write_compact_json(out / "textvqa" / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    write_bytes(out / "textvqa" / "textvqa_val_v051_ocr.jsonl", ("\n".join(lines) + "\n").encode())
    return scenes, data


def write_pope(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember,
               grid: int = 0) -> tuple[list[Scene], dict]:
    """POPE: `coco_pope_{adversarial,popular,random}.json` (JSON lines) over the same images
    `val2014/COCO_val2014_{id:012d}.jpg`, n//2 yes/no pairs per split. As in POPE, the "yes" probes are
    shared by the splits; the "no" probes are drawn uniformly (random), from the most frequent absent
    objects (popular), or from absent objects sharing a color or shape with a present one, ranked by
    co-occurrence with the present objects (adversarial)."""
    n_pairs, scenes, positives = n // 2, [], []
    fresh = fresh_scenes(lambda i: sample_scene(stream_rng(seed, 28, i), POPE_ID0 + i, size, grid=grid), seen)
    while sum(len(p) for p in positives) < n_pairs:
        scene = next(fresh)
        rng = stream_rng(seed, 29, scene.image_id)
        present = sorted({(o.color, o.shape) for o in scene.shapes})
        k = min(POPE_PAIRS_PER_SCENE, len(present), n_pairs - sum(len(p) for p in positives))
        positives.append([present[int(i)] for i in rng.choice(len(present), size=k, replace=False)])
        scenes.append(scene)
        write_image(out / "pope" / "val2014" / f"COCO_val2014_{scene.image_id:012d}.jpg", render(scene))
    every = [(c, k) for c in COLORS for k in SHAPES]
    frequency, cooccur = Counter(), Counter()
    for scene in scenes:
        present = sorted({(o.color, o.shape) for o in scene.shapes})
        frequency.update(present)
        cooccur.update((a, b) for a in present for b in present if a != b)
    splits = {}
    for stream, split in enumerate(("adversarial", "popular", "random")):
        lines = []
        for scene, chosen in zip(scenes, positives):
            present = {(o.color, o.shape) for o in scene.shapes}
            absent = [c for c in every if c not in present]
            popular = sorted(absent, key=lambda c: (-frequency[c], c))
            if split == "random":
                rng = stream_rng(seed, 30 + stream, scene.image_id)
                negatives = [absent[int(i)] for i in rng.choice(len(absent), size=len(chosen), replace=False)]
            elif split == "popular":
                negatives = popular[: len(chosen)]
            else:
                near = [c for c in absent if any(c[0] == p[0] or c[1] == p[1] for p in present)]
                near.sort(key=lambda c: (-sum(cooccur[c, p] for p in present), c))
                negatives = (near + [c for c in popular if c not in near])[: len(chosen)]
            for yes, no in zip(chosen, negatives):
                for (color, kind), label in ((yes, "yes"), (no, "no")):
                    text = POPE_TEMPLATE.format(object=f"{color} {kind}")
                    lines.append(json.dumps({"question_id": len(lines) + 1,
                                             "image": f"COCO_val2014_{scene.image_id:012d}.jpg",
                                             "text": text, "label": label}))
                    remember(vqa_prompt(text))
        write_bytes(out / "pope" / f"coco_pope_{split}.json", ("\n".join(lines) + "\n").encode())
        splits[split] = [json.loads(line) for line in lines]
    return scenes, splits


def write_tallyqa(out: Path, seed: int, n: int, size: int, seen: set, remember: Remember) -> tuple[list[Scene], list]:
    """TallyQA test: `test.json` + images at its relative paths (`VG_100K[_2]/{id}.jpg`); simple and
    complex questions alternate where the scene allows a complex one."""
    records, scenes = [], []
    fresh = fresh_scenes(lambda i: sample_tally_scene(stream_rng(seed, 33, i), TALLY_ID0 + i, size), seen)
    while len(records) < n:
        scene = next(fresh)
        rng = stream_rng(seed, 34, scene.image_id)
        image = f"{'VG_100K_2' if scene.image_id % 2 else 'VG_100K'}/{scene.image_id}.jpg"
        asked = set()
        for k in range(TALLY_PER_SCENE):
            n_simple = sum(r["issimple"] for r in records)
            for _retry in range(10):
                q = ask_tally(scene, rng, simple=2 * n_simple < len(records)) or ask_tally(scene, rng, simple=True)
                if q.question not in asked:
                    break
            if q.question in asked or len(records) >= n:
                continue
            asked.add(q.question)
            simple = q.family == "tally-simple"
            records.append({"image": image, "answer": int(q.answer),
                            "data_source": "imported_genome" if simple else "amt", "question": q.question,
                            "image_id": scene.image_id, "question_id": scene.image_id * 10 + k, "issimple": simple})
            remember(tally_prompt(q.question), TALLY_LETTERS[int(q.answer)])
        scenes.append(scene)
        write_image(out / "tallyqa" / image, render(scene))
    write_compact_json(out / "tallyqa" / "test.json", records)
    return scenes, records


def write_ocidref(out: Path, seed: int, n: int, seen: set, remember: Remember) -> tuple[list[Scene], dict]:
    """OCID-Ref val: `val_expressions.json` + 640x480 PNGs at `OCID-dataset/{scene_path}`. Candidate
    scenes cycle through the clutter splits; the take_id sets how many objects stand on the table."""
    width, height = OCID_WH
    takes: dict[int, int] = {}

    def make(i: int) -> Scene:
        rng = stream_rng(seed, 35, i)
        lo, hi = list(OCID_CLUTTER.values())[i % len(OCID_CLUTTER)]
        takes[OCID_ID0 + i] = take = int(rng.integers(lo, hi + 1))
        return sample_scene(rng, OCID_ID0 + i, width, n_shapes=ocid_objects(take), size_range=OCID_SIZE_RANGE,
                            height=height)

    expressions, scenes = {}, []
    fresh = fresh_scenes(make, seen)
    while len(expressions) < n:
        scene = next(fresh)
        found = referring_expressions(scene)
        if not found:
            continue
        rng = stream_rng(seed, 36, scene.image_id)
        index, take = scene.image_id - OCID_ID0, takes[scene.image_id]
        sub_dataset, category = OCID_SUBSETS[int(rng.integers(len(OCID_SUBSETS)))]
        place, view = ("table", "floor")[int(rng.integers(2))], ("top", "bottom")[int(rng.integers(2))]
        sequence = "/".join(p for p in (sub_dataset, place, view, category, f"seq{int(rng.integers(1, 21)):02d}") if p)
        seconds = 10 * 3600 + 37 * index  # a unique capture time per scene, as OCID file names
        day, hms = 20 + seconds // 86400, seconds % 86400
        stamp = f"2018-08-{day:02d}-{hms // 3600:02d}-{hms // 60 % 60:02d}-{hms % 60:02d}"
        scene_path = f"{sequence}/rgb/result_{stamp}.png"
        referred = [list(found)[int(j)] for j in rng.permutation(len(found))][:OCID_PER_SCENE]
        for j in referred:
            if len(expressions) >= n:
                break
            o, sentence = scene.shapes[j], found[j][int(rng.integers(len(found[j])))]
            ex_id = len(expressions)
            expressions[str(ex_id)] = {
                "take_id": take, "scene_path": scene_path, "sub_dataset": sub_dataset, "class": o.shape,
                "sentence": sentence, "bbox": json.dumps(list(o.xyxy)), "scene_id": index, "anno_id": ex_id,
                "instance_id": j, "sequence_path": sequence}
            remember(grounding_prompt(sentence), ocid_box_string(o))
        scenes.append(scene)
        write_image(out / "ocid-ref" / "OCID-dataset" / scene_path, render(scene))
    write_compact_json(out / "ocid-ref" / "val_expressions.json", expressions)
    return scenes, expressions

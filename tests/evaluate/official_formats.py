"""Writers of tiny benchmark folders in the official file formats (VQA-v2, REFER/COCO, GQA, VizWiz,
TextVQA, POPE, TallyQA, OCID-Ref), for the tests."""

import json
import pickle
from pathlib import Path


def vqa_record(qid: int, image_id: int, answers: list[str], question: str = "What is it?",
               answer_type: str = "other", question_type: str = "what is") -> tuple[dict, dict]:
    q = {"image_id": image_id, "question": question, "question_id": qid}
    a = {"question_id": qid, "image_id": image_id, "question_type": question_type, "answer_type": answer_type,
         "multiple_choice_answer": max(set(answers), key=answers.count),
         "answers": [{"answer": s, "answer_confidence": "yes", "answer_id": j + 1} for j, s in enumerate(answers)]}
    return q, a


def write_vqa(root: Path, records: list[tuple[dict, dict]], missing_images: tuple[int, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = {"info": {"description": "test"}, "license": {"name": "test"}, "data_subtype": "val2014"}
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(
        {**header, "task_type": "Open-Ended", "data_type": "mscoco", "questions": [q for q, _ in records]}))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(
        {**header, "data_type": "mscoco", "annotations": [a for _, a in records]}))
    (root / "val2014").mkdir(exist_ok=True)
    for q, _ in records:
        if isinstance(q, dict) and q.get("image_id") not in missing_images:
            (root / "val2014" / f"COCO_val2014_{q['image_id']:012d}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    return root


def write_refer(root: Path, dataset: str, split_by: str, images: list[dict], anns: list[dict], refs: list,
                missing_images: tuple[int, ...] = ()) -> Path:
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instances.json").write_text(json.dumps({
        "info": {}, "licenses": [], "images": images, "annotations": anns,
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}]}))
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "train2014").mkdir(exist_ok=True)
    for img in images:
        if img["id"] not in missing_images:
            (root / "train2014" / f"COCO_train2014_{img['id']:012d}.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    return root


def coco_image(image_id: int, width: int, height: int) -> dict:
    return {"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "width": width, "height": height}


def coco_ann(ann_id: int, image_id: int, bbox: list[float]) -> dict:
    x, y, w, h = bbox
    return {"id": ann_id, "image_id": image_id, "bbox": bbox, "category_id": 1, "area": w * h, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def ref(ref_id: int, ann_id: int, image_id: int, sents: list[tuple[int, str]], split: str = "val") -> dict:
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": [{"tokens": s.split(), "raw": s, "sent_id": sid, "sent": s} for sid, s in sents],
            "sent_ids": [sid for sid, _ in sents]}


JPEG = b"\xff\xd8\xff\xd9"  # a file's presence is all the loaders check


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)


# -- GQA: testdev_balanced_questions.json (dict keyed by question id) + images/{imageId}.jpg ------


def gqa_question(image_id: str, question: str, answer: str, balanced: bool = True,
                 structural: str = "query", semantic: str = "attr") -> dict:
    return {"semantic": [], "entailed": [], "equivalent": [], "question": question, "imageId": image_id,
            "isBalanced": balanced, "groups": {"global": None, "local": "10c-color"}, "answer": answer,
            "semanticStr": "select: thing", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": "chooseAttr", "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}."}


def write_gqa(root: Path, questions: dict, missing_images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    for q in questions.values():
        if isinstance(q, dict) and isinstance(q.get("imageId"), str) and q["imageId"] not in missing_images:
            _touch(root / "images" / f"{q['imageId']}.jpg")
    return root


# -- VizWiz: val.json (a list; the id is the index) + val/{image} --------------------------------


def vizwiz_record(image: str, question: str, answers: list[str], answerable: int = 1) -> dict:
    return {"image": image, "question": question, "answerable": answerable,
            "answer_type": "other" if answerable else "unanswerable",
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}


def write_vizwiz(root: Path, records: list, missing_images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "val.json").write_text(json.dumps(records))
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("image"), str) and r["image"] not in missing_images:
            _touch(root / "val" / r["image"])
    return root


# -- TextVQA: LLaVA's OCR jsonl + TextVQA_0.5.1_val.json, matched by position ---------------------


def textvqa_record(qid: int, image_id: str, question: str, ocr: list[str], answers: list[str]) -> tuple[dict, dict]:
    line = {"question_id": qid, "image": f"{image_id}.jpg", "category": "default",
            "text": f"{question}\nReference OCR token: {', '.join(ocr)}"}
    ann = {"question": question, "image_id": image_id, "image_classes": ["Thing"], "flickr_original_url": "",
           "flickr_300k_url": "", "image_width": 1024, "image_height": 768, "answers": answers,
           "question_tokens": question.split(), "question_id": qid, "set_name": "val"}
    return line, ann


def write_textvqa(root: Path, records: list[tuple[dict, dict]], missing_images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "textvqa_val_v051_ocr.jsonl").write_text("".join(json.dumps(line) + "\n" for line, _ in records))
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
         "data": [ann for _, ann in records]}))
    for _, ann in records:
        if isinstance(ann, dict) and ann.get("image_id") not in missing_images:
            _touch(root / "train_images" / f"{ann['image_id']}.jpg")
    return root


# -- POPE: coco_pope_{split}.json (JSON lines) + val2014/ -----------------------------------------


def pope_record(qid: int, image_id: int, text: str, label: str) -> dict:
    return {"question_id": qid, "image": f"COCO_val2014_{image_id:012d}.jpg", "text": text, "label": label}


def write_pope(root: Path, splits: dict[str, list], missing_images: tuple[int, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        (root / f"coco_pope_{split}.json").write_text(
            "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
        for r in records:
            if isinstance(r, dict) and isinstance(r.get("image"), str):
                image_id = r["image"][-16:-4]
                if not (image_id.isdigit() and int(image_id) in missing_images):
                    _touch(root / "val2014" / r["image"])
    return root


# -- TallyQA: test.json (a list) + Visual Genome folders under root ------------------------------


def tally_record(qid: int, image: str, question: str, answer: int, issimple: bool) -> dict:
    return {"image": image, "answer": answer, "data_source": "amt", "question": question,
            "image_id": qid * 10, "question_id": qid, "issimple": issimple}


def write_tallyqa(root: Path, records: list, missing_images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.json").write_text(json.dumps(records))
    for r in records:
        if isinstance(r, dict) and isinstance(r.get("image"), str) and r["image"] not in missing_images:
            _touch(root / r["image"])
    return root


# -- OCID-Ref: val_expressions.json (dict keyed by example id) + OCID-dataset/{scene_path} ---------


def ocid_entry(sentence: str, scene_path: str, bbox_xyxy: list[int], take_id: int) -> dict:
    return {"take_id": take_id, "scene_path": scene_path, "sub_dataset": "ARID20", "sentence": sentence,
            "scene_id": scene_path.split("/")[-1], "bbox": json.dumps(bbox_xyxy), "class": "thing",
            "anno_target": "thing_1", "instance_id": 1}


def write_ocidref(root: Path, entries: dict, missing_images: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "val_expressions.json").write_text(json.dumps(entries))
    for e in entries.values():
        if isinstance(e, dict) and isinstance(e.get("scene_path"), str) and e["scene_path"] not in missing_images:
            _touch(root / "OCID-dataset" / e["scene_path"])
    return root

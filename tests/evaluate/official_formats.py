"""Writers of tiny benchmark folders in the official file formats (VQA-v2, REFER/COCO), for the tests."""

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

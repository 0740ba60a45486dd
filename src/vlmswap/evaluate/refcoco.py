"""RefCOCO / RefCOCO+ / RefCOCOg val: referring-expression grounding read through the REFER layout.

Facts from /work/shared/reference/prismatic_spec.md 3.1-3.2 (RefCOCO) and
`TRI-ML/vlm-evaluation :: vlm_eval/tasks/harnesses/refcoco.py`: splitBy "unc" for RefCOCO and
RefCOCO+, "umd" for RefCOCOg; only refs with split == "val"; one example per sentence; the target
is the referred COCO object's box as normalized xyxy (rounded to 2 decimals); the score is
Acc@IoU >= 0.5 over strictly parsed `[x1, y1, x2, y2]` outputs (see boxes.py). Each dataset is its
own benchmark here, so a slim subset is the first N of that dataset's shuffled sentences.

Known issue kept as the harness has it (vlm-evaluation issue #16): the target is normalized by
the original image size, while the model sees a letterboxed square.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmswap.evaluate.boxes import normalize_coco_box, score_boxes
from vlmswap.evaluate.metrics import draw_subset
from vlmswap.evaluate.prompts import grounding_prompt
from vlmswap.evaluate.records import AnnotationFileError, BenchmarkScore, Example, Skipped, is_int, split_records

# name -> (REFER splitBy, the harness's dataset label)
DATASETS: dict[str, tuple[str, str]] = {
    "refcoco": ("unc", "RefCOCO"),
    "refcoco+": ("unc", "RefCOCO+"),
    "refcocog": ("umd", "RefCOCOg"),
}
IMAGE_DIR = "train2014"
SPLIT = "val"


def image_path(root: Path, image_id: int) -> Path:
    return root / IMAGE_DIR / f"COCO_train2014_{image_id:012d}.jpg"


class _PlainUnpickler(pickle.Unpickler):
    """REFER refs pickles hold only lists, dicts, strings and numbers: refuse anything that would
    import a class (a pickle that does so is not a refs file, and unpickling it could run code)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refuses to load {module}.{name}: a refs file holds only plain data")


def read_refs(path: Path) -> list:
    expected = 'a pickled list of REFER refs ({"ref_id", "ann_id", "image_id", "split", "sentences", ...})'
    if not path.is_file():
        raise AnnotationFileError(f"refs file not found: {path} (expected {expected})")
    try:
        with open(path, "rb") as f:
            refs = _PlainUnpickler(f).load()
    except Exception as e:  # any unpickling failure means the file is not what we expect
        raise AnnotationFileError(f"cannot read refs file {path}: {type(e).__name__}: {e} (expected {expected})") from e
    if not isinstance(refs, list):
        raise AnnotationFileError(f"{path}: expected {expected}, got a {type(refs).__name__}")
    return refs


def read_instances(path: Path):
    """COCO instances through pycocotools (its progress prints are kept out of our logs)."""
    from pycocotools.coco import COCO

    expected = ('COCO instances JSON ({"images": [{"id", "width", "height", ...}], '
                '"annotations": [{"id", "image_id", "bbox", ...}], "categories": [...]})')
    if not path.is_file():
        raise AnnotationFileError(f"instances file not found: {path} (expected {expected})")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AssertionError, KeyError, TypeError) as e:
        raise AnnotationFileError(
            f"cannot read instances file {path}: {type(e).__name__}: {e} (expected {expected})") from e
    if not isinstance(coco.dataset.get("images"), list) or not isinstance(coco.dataset.get("annotations"), list):
        raise AnnotationFileError(f"{path}: expected {expected}; 'images' or 'annotations' is missing")
    return coco


class RefCOCO:
    mode = "generate"

    def __init__(self, name: str, iou_threshold: float = 0.5):
        if name not in DATASETS:
            raise ValueError(f"unknown REFER dataset {name!r}; known: {', '.join(DATASETS)}")
        self.name = name
        self.columns = (name,)
        self.split_by, self.label = DATASETS[name]
        self.annotation_files = (f"{name}/refs({self.split_by}).p", f"{name}/instances.json")
        self.iou_threshold = iou_threshold  # Acc@IoU >= 0.5 for RefCOCO* (prismatic_spec.md 3.2)

    def load(self, root: Path, subset: str = "full") -> tuple[list[Example], list[Skipped]]:
        root = Path(root).absolute()
        refs_path = root / self.name / f"refs({self.split_by}).p"
        instances_path = root / self.name / "instances.json"
        refs = read_refs(refs_path)
        coco = read_instances(instances_path)

        records: list[Example | Skipped] = []
        seen: set[str] = set()
        for i, ref in enumerate(refs):
            if isinstance(ref, dict) and ref.get("split") != SPLIT:
                continue
            for record in self._examples(root, i, ref, coco, refs_path, instances_path):
                if isinstance(record, Example):
                    if record.id in seen:
                        record = Skipped(record.id, str(refs_path), "duplicate sent_id")
                    seen.add(record.id)
                records.append(record)
        return split_records(draw_subset(records, subset))

    def _examples(self, root: Path, i: int, ref: Any, coco, refs_path: Path,
                  instances_path: Path) -> list[Example | Skipped]:
        where = f"refs[{i}]"
        if not isinstance(ref, dict):
            return [Skipped(where, str(refs_path), "ref is not a dict")]
        for key in ("ref_id", "ann_id", "image_id"):
            if not is_int(ref.get(key)):
                return [Skipped(where, str(refs_path), f"{key} is not an integer: {ref.get(key)!r}")]
        sentences = ref.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            return [Skipped(where, str(refs_path), "ref has no 'sentences' list")]

        # Every sentence of the ref shares its box and image; a fault there skips all of them.
        image_id, ann_id = ref["image_id"], ref["ann_id"]
        problem: tuple[Path, str] | None = None
        box: list[float] | None = None
        ann, img = coco.anns.get(ann_id), coco.imgs.get(image_id)
        if ann is None:
            problem = (instances_path, f"no annotation with id {ann_id} (the ref's ann_id)")
        elif ann.get("image_id") != image_id:
            problem = (instances_path, f"annotation {ann_id} belongs to image {ann.get('image_id')!r}, "
                                       f"the ref to image {image_id}")
        elif img is None:
            problem = (instances_path, f"no image with id {image_id}")
        else:
            try:
                box = normalize_coco_box(ann.get("bbox"), img.get("width"), img.get("height"))
            except (ValueError, TypeError) as e:
                problem = (instances_path, f"annotation {ann_id}: {e}")
        image = image_path(root, image_id)
        if problem is None and not image.is_file():
            problem = (image, "image file not found")

        out: list[Example | Skipped] = []
        for j, sent in enumerate(sentences):
            if not isinstance(sent, dict) or not is_int(sent.get("sent_id")):
                out.append(Skipped(f"{where}.sentences[{j}]", str(refs_path), "sentence has no integer sent_id"))
                continue
            sid = str(sent["sent_id"])
            if problem is not None:
                out.append(Skipped(sid, str(problem[0]), problem[1]))
            elif not isinstance(sent.get("sent"), str) or not sent["sent"].strip():
                out.append(Skipped(sid, str(refs_path), "sentence text ('sent') is missing or empty"))
            else:
                out.append(Example(
                    id=sid, image=image, prompt=grounding_prompt(sent["sent"]), target=box,
                    meta={"refer_dataset": self.label, "split": SPLIT, "ref_id": ref["ref_id"],
                          "ann_id": ann_id, "image_id": image_id, "sent_id": sent["sent_id"],
                          "sentence": sent["sent"], "image_size": [img["width"], img["height"]]},
                ))
        return out

    def score(self, examples: list[Example], predictions: Mapping[str, str]) -> BenchmarkScore:
        """Acc@IoU >= threshold in percent; `metrics["invalid_rate"]` is the share of unparsable outputs."""
        return score_boxes(self.name, self.name, examples, predictions, self.iou_threshold)

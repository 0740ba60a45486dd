"""The mini world: procedural shape scenes written in the file formats of the real datasets.

The package, in the order of the data flow: `scene` (ground truth and sampling), `render`
(pixels, polygons, masks), `text` (text scenes), `questions` and `gqa` (questions in each
benchmark's style), `writers` (one per benchmark format), `training` (the instruction mix),
`baselines` (scored by `vlmswap.evaluate`) and `generate` (the whole world, step by step).

A scene is a light, slightly noisy background with 1-3 non-overlapping shapes (circle / square /
triangle in red / green / blue / yellow). Text scenes add 1-2 words of `TEXT_WORDS` in PIL's
built-in bitmap font, on a square / circle or on the background; counting scenes hold 1-5 smaller
shapes from a small palette; OCID-Ref scenes are 640x480 tables with 2-8 shapes. From those scenes
`generate` writes, under `out/` (n = `n_eval`; a scene's ground truth is in `scenes.json` under the
benchmark's name, its `image_id` recoverable from the file name as noted):

    llava/llava_v1_5_mix665k.json     LLaVA-v1.5 665K format: [{id, image?, conversations}], ~5%
    llava/coco/train2017/{id:012d}.jpg  language-only records; see training.py
    vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json, v2_mscoco_val2014_annotations.json
    vqa-v2/val2014/COCO_val2014_{image_id:012d}.jpg   n images x 2 questions, 10 answers with a
                                      little deterministic annotator noise (soft accuracy is exercised)
    refcoco/refcoco/instances.json, refs(unc).p       REFER format (pycocotools + pickle protocol 2),
    refcoco/train2014/COCO_train2014_{image_id:012d}.jpg   n sentences, split "val"
    classify/{train,val}.jsonl, classes.json, images/{i:06d}.png   12-class (shape x color) set:
                                      {image, label (the largest shape), label_name, size, objects:
                                      [{label, bbox xyxy px, polygon}]} (every shape: the detection
                                      and segmentation targets of backbone pretraining)
    gqa/testdev_balanced_questions.json   {"<qid>": {semantic: [{operation, dependencies, argument}],
                                      entailed: [], equivalent: [qid], question, imageId: "n<image_id>",
                                      isBalanced: true, groups: {global, local}, answer, semanticStr,
                                      annotations, types: {structural, semantic, detailed}, fullAnswer}};
    gqa/images/{imageId}.jpg          n questions, 3 per image (query / verify / choose / logical /
                                      compare kinds, relations "to the left of"), one-word answers
    vizwiz/Annotations/val.json       [{image, question, answers: 10 x {answer, answer_confidence},
                                      answer_type, answerable: 0/1}], one question per image; 15%
                                      ask about an absent shape / color or for the word on an object
                                      that carries none: answers "unanswerable", answer_type
                                      "unanswerable", answerable 0
    vizwiz/val/VizWiz_val_{image_id - 5000000:08d}.jpg
    textvqa/TextVQA_0.5.1_val.json    {dataset_type, dataset_name, dataset_version, data: [{question,
                                      image_id: "{image_id:016x}", image_classes, flickr_original_url,
                                      flickr_300k_url, image_width, image_height, answers: 10 strings,
                                      question_tokens, question_id, set_name}]}, n questions, 1-2 per image
    textvqa/textvqa_val_v051_ocr.jsonl  one JSON per line, same order: {question_id, image:
                                      "{image_id}.jpg", text: question + "\nReference OCR token: w1, w2"
                                      (the rendered words, reading order), category}
    textvqa/train_images/{image_id}.jpg
    pope/coco_pope_{adversarial,popular,random}.json   JSON lines {question_id (1.. per split), image:
                                      "COCO_val2014_{image_id:012d}.jpg", text: "Is there a {color}
                                      {shape} in the image?", label: "yes"/"no"}, n//2 yes/no pairs per
                                      split over the same images, the yes probes shared (see writers.write_pope)
    pope/val2014/{image}
    tallyqa/test.json                 [{image: "VG_100K[_2]/{image_id}.jpg", answer: int 0..5,
                                      data_source, question, image_id, question_id, issimple}], n
                                      questions, 2 per image, simple ("How many {color} {shape}s are
                                      there?") and complex ("How many shapes are left of the {color}
                                      {shape}?") alternating
    tallyqa/{image}
    ocid-ref/val_expressions.json     {"<id>": {take_id 0..20, scene_path, sub_dataset, class,
                                      sentence, bbox: "[x1, y1, x2, y2]" (pixels, a JSON string as in
                                      the released file: vlm-evaluation json.loads it), scene_id,
                                      anno_id, instance_id, sequence_path}}, n expressions, <= 3 per
                                      scene; scenes cycle through the clutter splits (take 0-9 / 10-16
                                      / 17-20) and hold 2 + round(6 * take_id / 20) objects
    ocid-ref/OCID-dataset/{scene_path}  640x480 PNG, e.g. ARID20/table/top/seq03/rgb/result_2018-08-20-10-00-37.png
    scenes.json                       every scene's ground truth by benchmark (boxes in pixels; text
                                      scenes add `words`, OCID scenes `height`)
    text_corpus.txt                   every line of text the world holds, once per occurrence (the
                                      instruction set's human turns as Vicuna's prompt renders them):
                                      what the mini LLM's tokenizer is trained on
    world.json                        counts, question families, prompts, sha256 of each file, and
                                      the baselines, scored by vlmswap.evaluate on the files above

Training turns (training.py) use exactly the evaluation prompts of `vlmswap.evaluate.prompts`.
15% of the training slots are text scenes and 15% counting scenes; grounding is ~28% of the turns.
Eval scenes are held out: their ids differ and no eval scene repeats the layout of a training (or
classification) scene or of another eval scene. The VQA-v2 / RefCOCO / classification
files do not depend on the other benchmarks: they are byte-identical to those of earlier versions.
"""

from vlmswap.data.mini_world.generate import generate
from vlmswap.data.mini_world.render import class_mask, render
from vlmswap.data.mini_world.scene import CLASSES, COLORS, SHAPES, Scene, Shape, Word
from vlmswap.data.mini_world.text import sample_text_scene
from vlmswap.evaluate.prompts import SYSTEM_PROMPT

__all__ = ["CLASSES", "COLORS", "SHAPES", "SYSTEM_PROMPT", "Scene", "Shape", "Word", "class_mask", "generate",
           "render", "sample_text_scene"]

"""`generate`: the whole mini world, step by step, and its manifest `world.json`."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from vlmswap.atomic import write_bytes, write_json
from vlmswap.data.mini_world.baselines import world_baselines
from vlmswap.data.mini_world.questions import POPE_TEMPLATE, QUESTION_FAMILIES
from vlmswap.data.mini_world.scene import CLASSES, COLORS, OCID_CLUTTER, SHAPES, scene_record
from vlmswap.data.mini_world.text import TEXT_WORDS
from vlmswap.data.mini_world.training import TRAINING_MIXES, slot_kinds, training_scenes, write_llava
from vlmswap.data.mini_world.writers import (
    write_classify, write_compact_json, write_gqa, write_ocidref, write_pope, write_refcoco, write_tallyqa,
    write_textvqa, write_vizwiz, write_vqav2,
)
from vlmswap.evaluate.ocidref import clutter_split
from vlmswap.evaluate.prompts import (
    MC_INSTRUCTION, OCR_MARKER, SYSTEM_PROMPT, TALLY_LETTERS, UNANSWERABLE_INSTRUCTION, VQA_INSTRUCTION,
    grounding_prompt, tally_prompt, vizwiz_prompt, vqa_prompt,
)
from vlmswap.evaluate.vizwiz import UNANSWERABLE

# Every eval prompt line of vlm-evaluation (prismatic_spec.md 3.1), so the tokenizer knows them all;
# the True/False lines belong to benchmarks this study does not run.
EVAL_PROMPT_LINES = (
    VQA_INSTRUCTION,
    UNANSWERABLE_INSTRUCTION,
    *(f"{letter}. {count}" for count, letter in enumerate(TALLY_LETTERS)),
    MC_INSTRUCTION,
    'Based on the image, is this statement "True" or "False"?',
    'Respond with "True" or "False" directly.',
    "USER:",
    "ASSISTANT:",
)
# The prompts as world.json records them: what each builder adds around the question / sentence.
PROMPTS = {"system": SYSTEM_PROMPT, "vqa_suffix": vqa_prompt(""), "grounding": grounding_prompt("{sentence}")}
BENCHMARK_PROMPTS = {"vizwiz_suffix": vizwiz_prompt(""), "tallyqa_suffix": tally_prompt(""),
                     "textvqa_ocr_prefix": OCR_MARKER + " ", "pope": POPE_TEMPLATE}


def generate(
    out: Path,
    seed: int = 0,
    n_train: int = 3000,
    n_eval: int = 300,
    n_classify: int = 2000,
    image_size: int = 64,
    log: Callable[[str], None] = print,
    mix: str = "all",
    grid: int = 0,
) -> dict:
    """Write the mini world under `out` and return its manifest (also written as `world.json`).

    Deterministic: the same arguments give byte-identical JSON files and identical images.
    `n_eval` is the number of VQA-v2 scenes (2 questions each), of RefCOCO sentences, and of the
    questions (expressions) of GQA, VizWiz, TextVQA, TallyQA and OCID-Ref and of each POPE split.
    `grid` > 0 snaps the boxes of the plain scenes (training, classification, VQA-v2, RefCOCO, GQA,
    VizWiz, POPE) to a `grid` x `grid` layout (`sample_scene`); 0 places them freely. The steps, in order (the order fixes which layouts each set is held out of):

    1. the training slots' plain layouts and kinds;
    2. the classification set;
    3. the eval sets, each held out of the layouts drawn so far (VQA-v2 and RefCOCO first);
    4. the instruction set, its text / counting layouts held out of every eval set;
    5. the ground truth, the text corpus, the baselines and the manifest (last: marks completion).
    """
    if mix not in TRAINING_MIXES:
        raise ValueError(f"unknown training mix {mix!r}; allowed: {', '.join(TRAINING_MIXES)}")
    start = time.perf_counter()
    out = Path(out)
    size = image_size
    # every line of the world's text, as often as the world says it: the tokenizer's BPE merges
    # follow frequency, as a real tokenizer's do (a set of distinct lines would leave the system
    # prompt, said once per record, in characters)
    corpus: Counter[str] = Counter()

    def remember(*texts: str) -> None:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    corpus[line.strip()] += 1

    remember(SYSTEM_PROMPT, *EVAL_PROMPT_LINES, "Yes", "No", UNANSWERABLE)

    # -- 1. training slots
    train_scenes = training_scenes(seed, n_train, size, grid)
    kinds = slot_kinds(seed, n_train, mix)

    # -- 2. classification set (before the eval sets, so that they are held out of it too)
    classify_scenes, classify_lines = write_classify(out, seed, n_classify, size, grid)
    log(f"classify: {len(classify_lines['train'])} train / {len(classify_lines['val'])} val images, "
        f"{len(CLASSES)} classes")

    # -- 3. eval sets: each writer holds its scenes out of `seen` and adds them to it
    seen = {s.key() for s in train_scenes} | {s.key() for s in classify_scenes}
    vqa_scenes, annotations = write_vqav2(out, seed, n_eval, size, seen, remember, grid)
    log(f"vqa-v2: {len(annotations)} questions over {len(vqa_scenes)} images "
        f"{dict(sorted(Counter(a['answer_type'] for a in annotations).items()))}")
    ref_scenes, refs = write_refcoco(out, seed, n_eval, size, seen, remember, grid)
    n_sentences = sum(len(r["sentences"]) for r in refs)
    log(f"refcoco: {len(refs)} refs, {n_sentences} sentences over {len(ref_scenes)} images "
        f"({sum(len(s.shapes) for s in ref_scenes)} objects)")
    gqa_scenes, gqa_questions = write_gqa(out, seed, n_eval, size, seen, remember, grid)
    log(f"gqa: {len(gqa_questions)} questions over {len(gqa_scenes)} images "
        f"{dict(sorted(Counter(q['types']['structural'] for q in gqa_questions.values()).items()))}")
    vizwiz_scenes, vizwiz = write_vizwiz(out, seed, n_eval, size, seen, remember, grid)
    log(f"vizwiz: {len(vizwiz)} questions, {sum(1 - r['answerable'] for r in vizwiz)} unanswerable")
    textvqa_scenes, textvqa = write_textvqa(out, seed, n_eval, size, seen, remember)
    log(f"textvqa: {len(textvqa)} questions over {len(textvqa_scenes)} images "
        f"({sum(len(s.words) for s in textvqa_scenes)} words)")
    pope_scenes, pope = write_pope(out, seed, n_eval, size, seen, remember, grid)
    log(f"pope: {' / '.join(f'{k} {len(v)}' for k, v in pope.items())} questions over {len(pope_scenes)} images")
    tally_scenes, tally = write_tallyqa(out, seed, n_eval, size, seen, remember)
    log(f"tallyqa: {len(tally)} questions ({sum(r['issimple'] for r in tally)} simple) over "
        f"{len(tally_scenes)} images, answers {dict(sorted(Counter(r['answer'] for r in tally).items()))}")
    ocid_scenes, ocid = write_ocidref(out, seed, n_eval, seen, remember)
    log(f"ocid-ref: {len(ocid)} expressions over {len(ocid_scenes)} scenes "
        f"{dict(Counter(clutter_split(e['take_id']) for e in ocid.values()))}")
    eval_scenes = {"vqa-v2": vqa_scenes, "refcoco": ref_scenes, "gqa": gqa_scenes, "vizwiz": vizwiz_scenes,
                   "textvqa": textvqa_scenes, "pope": pope_scenes, "tallyqa": tally_scenes, "ocid-ref": ocid_scenes}

    # -- 4. instruction set (LLaVA-665K format)
    eval_keys = {s.key() for scenes in eval_scenes.values() for s in scenes}
    llava = write_llava(out, seed, train_scenes, kinds, eval_keys, mix, remember)
    n_turns = sum(llava["turns"].values())
    log(f"llava: {llava['records']} records ({n_train} with images: {dict(sorted(Counter(kinds).items()))}, "
        f"{llava['language_only']} language-only), {n_turns} turns {llava['turns']}, "
        f"grounding {llava['turns'].get('grounding', 0) / max(1, n_turns):.1%}")

    # -- 5. ground truth, corpus, baselines, manifest
    scenes = {"llava": train_scenes, "vqa-v2": vqa_scenes, "refcoco": ref_scenes, "classify": classify_scenes,
              **{name: eval_scenes[name] for name in ("gqa", "vizwiz", "textvqa", "pope", "tallyqa", "ocid-ref")}}
    write_compact_json(out / "scenes.json", {name: [scene_record(s) for s in group] for name, group in scenes.items()})
    write_bytes(out / "text_corpus.txt", "".join(f"{line}\n" * n for line, n in corpus.items()).encode())
    baselines = world_baselines(out)
    log("baselines: " + ", ".join(f"{name} {', '.join(f'{v}%' for v in b['columns'].values())}"
                                  for name, b in baselines.items()))

    counts = {
        "train_scenes": n_train, "llava_records": llava["records"], "llava_language_only": llava["language_only"],
        "llava_turns": llava["turns"], "vqa_images": len(vqa_scenes),
        "vqa_questions": len(annotations), "refcoco_images": len(ref_scenes), "refcoco_refs": len(refs),
        "refcoco_sentences": n_sentences, "classify_train": len(classify_lines["train"]),
        "classify_val": len(classify_lines["val"]), "text_corpus_lines": sum(corpus.values()),
        "llava_slots": dict(sorted(Counter(kinds).items())),
        "gqa_questions": len(gqa_questions), "gqa_images": len(gqa_scenes),
        "vizwiz_questions": len(vizwiz), "vizwiz_unanswerable": sum(1 - r["answerable"] for r in vizwiz),
        "textvqa_questions": len(textvqa), "textvqa_images": len(textvqa_scenes),
        **{f"pope_{split}": len(rows) for split, rows in pope.items()}, "pope_images": len(pope_scenes),
        "tallyqa_questions": len(tally), "tallyqa_simple": sum(r["issimple"] for r in tally),
        "tallyqa_images": len(tally_scenes),
        "ocidref_expressions": len(ocid), "ocidref_scenes": len(ocid_scenes),
        "ocidref_clutter": {name: sum(clutter_split(e["take_id"]) == name for e in ocid.values())
                            for name in OCID_CLUTTER},
    }
    world = manifest(out, seed, size, mix, counts, list(pope), baselines, grid)
    write_json(out / "world.json", world)  # written last: its presence marks a complete world
    log(f"world: written to {out} in {time.perf_counter() - start:.1f} s")
    return world


def manifest(out: Path, seed: int, size: int, mix: str, counts: dict, pope_splits: list[str],
             baselines: dict, grid: int = 0) -> dict:
    """`world.json`: the arguments, counts, vocabulary, prompts, files and their sha256, baselines."""
    files = {
        "llava": "llava/llava_v1_5_mix665k.json",
        "llava_images": "llava",
        "vqa_questions": "vqa-v2/v2_OpenEnded_mscoco_val2014_questions.json",
        "vqa_annotations": "vqa-v2/v2_mscoco_val2014_annotations.json",
        "vqa_images": "vqa-v2/val2014",
        "refcoco_instances": "refcoco/refcoco/instances.json",
        "refcoco_refs": "refcoco/refcoco/refs(unc).p",
        "refcoco_images": "refcoco/train2014",
        "classify_train": "classify/train.jsonl",
        "classify_val": "classify/val.jsonl",
        "classify_classes": "classify/classes.json",
        "gqa_questions": "gqa/testdev_balanced_questions.json",
        "gqa_images": "gqa/images",
        "vizwiz_annotations": "vizwiz/Annotations/val.json",
        "vizwiz_images": "vizwiz/val",
        "textvqa_annotations": "textvqa/TextVQA_0.5.1_val.json",
        "textvqa_questions": "textvqa/textvqa_val_v051_ocr.jsonl",
        "textvqa_images": "textvqa/train_images",
        **{f"pope_{split}": f"pope/coco_pope_{split}.json" for split in pope_splits},
        "pope_images": "pope/val2014",
        "tallyqa_test": "tallyqa/test.json",
        "tallyqa_images": "tallyqa",
        "ocidref_expressions": "ocid-ref/val_expressions.json",
        "ocidref_images": "ocid-ref/OCID-dataset",
        "scenes": "scenes.json",
        "text_corpus": "text_corpus.txt",
    }
    return {
        "seed": seed,
        "image_size": size,
        **({"grid": grid} if grid else {}),  # absent: free placement (worlds written before the grid)
        "mix": mix,
        "counts": counts,
        "classes": CLASSES,
        "shapes": list(SHAPES),
        "colors": {name: list(rgb) for name, rgb in COLORS.items()},
        "question_families": {
            name: {"templates": templates, "question_type": qtype, "answer_type": atype}
            for name, (templates, qtype, atype) in QUESTION_FAMILIES.items()
        },
        "prompts": PROMPTS,
        "benchmark_prompts": BENCHMARK_PROMPTS,
        "text_words": list(TEXT_WORDS),
        "files": files,
        "sha256": {
            path: hashlib.sha256((out / path).read_bytes()).hexdigest()
            for path in files.values() if (out / path).is_file()
        },
        "baselines": baselines,
    }

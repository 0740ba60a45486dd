"""The human messages vlm-evaluation sends, one builder per prompt style
(/work/shared/reference/prismatic_spec.md 3.1), and the Vicuna system prompt around them.

The benchmarks build their prompts here, and the mini world's training turns use the same
builders, so a training turn and the evaluation of the same question are the same text.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

VQA_INSTRUCTION = "Answer the question using a single word or phrase."
UNANSWERABLE_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
TALLY_LETTERS: tuple[str, ...] = tuple(chr(ord("A") + i) for i in range(16))  # A..P <-> counts 0..15
GROUNDING_INSTRUCTION = "Please provide the bounding box coordinate of the region this sentence describes:"
OCR_MARKER = "\nReference OCR token:"  # LLaVA's TextVQA question file: question + marker + " tok1, tok2"


def vqa_prompt(question: str) -> str:
    """VQA-v2, GQA, POPE and TextVQA: the question and the "single word or phrase" instruction."""
    return f"{question}\n{VQA_INSTRUCTION}"


def vizwiz_prompt(question: str) -> str:
    """VizWiz: the "respond with 'Unanswerable'" instruction before the VQA one."""
    return f"{question}\n{UNANSWERABLE_INSTRUCTION}\n{VQA_INSTRUCTION}"


def tally_prompt(question: str) -> str:
    """TallyQA: the question, the 16 options "A. 0" .. "P. 15", the multiple-choice trigger."""
    options = [f"{letter}. {count}" for count, letter in enumerate(TALLY_LETTERS)]
    return "\n".join([question, *options, MC_INSTRUCTION])


def grounding_prompt(sentence: str) -> str:
    """RefCOCO* and OCID-Ref: the instruction and the quoted referring expression."""
    return f'{GROUNDING_INSTRUCTION} "{sentence}"'


def ocr_question(question: str, tokens: list[str]) -> str:
    """A question of LLaVA's TextVQA file: the question, then the reference OCR tokens."""
    return f"{question}{OCR_MARKER} {', '.join(tokens)}"


def pure_question(text: str) -> str:
    """The question without its OCR tokens: `text` cut at the first "\\nReference OCR token:"."""
    return text.split(OCR_MARKER)[0]

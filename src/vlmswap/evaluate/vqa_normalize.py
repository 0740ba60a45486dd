"""Official VQA answer normalization (shared by VQA-v2, VizWiz, TextVQA; the soft accuracy is in metrics.py).

The rules follow vlm-evaluation's LAVIS-derived copy of the official VQA evaluation
(`TRI-ML/vlm-evaluation :: vlm_eval/util/evaluation/vqav2/eval.py`), summarized in
/work/shared/reference/prismatic_spec.md section 3.2 (VQA-v2). Two quirks of that code are kept on
purpose, because the paper's numbers were produced with them:

- the period rule's regex is written `(?!<=\\d)(\\.)(?!\\d)`: the first group is a (mistyped)
  look-ahead, not a look-behind, so in effect a period is removed unless a digit follows it
  ("1.5" and ".5" keep theirs, "5." and "e.g." lose theirs);
- the punctuation decision is made per punctuation *character* over the whole string: if any
  occurrence of ";" touches a space, every ";" is deleted; if the string contains a digit,digit
  comma anywhere, every punctuation character is deleted rather than turned into a space.
"""

from __future__ import annotations

import re

# The official punctuation list (no apostrophe, colon or period: the period has its own rule).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (== 32) as the positional `count` of re.sub, so at most 32
# periods are removed; kept for fidelity (it never matters for a one-word answer).
_PERIOD_STRIP_COUNT = int(re.UNICODE)

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction map. Entries with capitals ("Im", "Ive", "Id've") can never match, since
# words are lowercased first; they are kept because the official map has them.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}


def process_punctuation(text: str) -> str:
    """The punctuation step, applied to predictions and (alone) to ground-truth answers."""
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for p in PUNCTUATION:
        # decided on the original text, as the official code does
        if (p + " " in text) or (" " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digits_articles_contractions(text: str) -> str:
    """Lowercase, split on whitespace, number words -> digits, drop articles, expand contractions."""
    # Articles are tested before the number-word map, as in vlm-evaluation; the two sets are
    # disjoint, so the order does not change the result.
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split() if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_prediction(text: str) -> str:
    """Full normalization of a model answer: whitespace, punctuation, then digits/articles/contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles_contractions(process_punctuation(text))


def normalize_answer(text: str) -> str:
    """Ground-truth answers get only the punctuation step, and always
    (/work/shared/reference/prismatic_spec.md 3.2 VQA-v2)."""
    return process_punctuation(text)

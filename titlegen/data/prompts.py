"""Chat messages for the title task, and the clean-up of a generated title.

Pure functions: no tokenizer, no model. The chat template that turns these messages into tokens is the
tokenizer's own (see `titlegen.data`), so the same prompt works for Qwen, Llama and SmolLM alike.
"""

from __future__ import annotations

import re

# The question comes after the abstract: with it before, small instruct models (SmolLM2-135M) tend to copy the
# abstract instead of answering. Compared on 6 to 8 abstracts with five other wordings (docs/results.md, "Prompt").
SYSTEM_PROMPT = "You are a helpful assistant."
USER_TEMPLATE = "Abstract:\n{abstract}\n\nWhat is a good title for this paper? Reply with only the title."

# Zero-shot instruct models like to chat before answering ("The title of the paper is: ...");
# these prefixes are cut so that BERTScore compares titles with titles.
_PREFIX = re.compile(
    r"^\s*(?:(?:sure|certainly|here is|here's)[^:\n]*:\s*)?"
    r"(?:"
    r"(?:(?:a|the|our|my)\s+)?(?:good\s+|suitable\s+|possible\s+|proposed\s+|suggested\s+)?(?:paper\s+)?title"
    r"(?:\s+(?:for|of)\s+(?:the|this)\s+paper)?"
    # a separator is required, so that titles such as "Title-Based Retrieval" or "The Title Is All You Need" stay
    r"(?:\s*:|\s+-\s+|\s+(?:is|could be|would be)\s*(?::|(?=[\"“'])))"
    r"|(?:the|this|our)\s+paper\s+is\s+(?:titled|entitled|called)\b:?"
    r")?\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`*“”‘’«»"


def build_messages(abstract: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversation that asks for a title; the assistant's answer (the title) is not part of it."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": USER_TEMPLATE.format(abstract=abstract)},
    ]


def clean_title(text: str) -> str:
    """Turn a generated answer into a bare title.

    Keeps the first non-empty line, drops a leading "Title:"-style preamble, surrounding quotes or markdown
    emphasis, and collapses whitespace. Casing is kept: BERTScore encoders are case-sensitive and so are titles.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # Quotes and markdown emphasis can wrap the preamble too ("**Title:** X"), so strip them on both sides of it.
    title = lines[0].strip().strip(_QUOTES)
    title = _PREFIX.sub("", title, count=1)
    title = title.strip().strip(_QUOTES).strip()
    # A lone "Title:" line is followed by the title itself on the next line.
    if not title and len(lines) > 1:
        return clean_title("\n".join(lines[1:]))
    return " ".join(title.split())


# A sentence ends at . ! or ? followed by a space and an upper-case letter, a digit, or an opening bracket or quote,
# unless the word before the full stop is an abbreviation ("Fig. 3", "et al. (2020)") or a single letter ("U.S.").
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z0-9(\[\"“'])")
_ABBREVIATIONS = {"al", "cf", "dr", "e.g", "eq", "eqs", "etc", "fig", "figs", "i.e", "mr", "ms", "no", "prof", "ref",
                  "refs", "sec", "vs"}  # fmt: skip


def first_sentence(abstract: str) -> str:
    """The abstract's first sentence, without its final full stop: the trivial title that a model must beat."""
    text = " ".join(abstract.split())
    for end in _SENTENCE_END.finditer(text):
        word = text[: end.start()].rsplit(" ", 1)[-1].lstrip("([")
        initial = len(word) == 1 and word.isupper()  # "A. B. Smith"
        dotted = re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word)  # "U.S", "e.g"
        if text[end.start()] == "." and (word.lower() in _ABBREVIATIONS or initial or dotted):
            continue
        return text[: end.start() + (text[end.start()] != ".")]
    return text[:-1] if text.endswith(".") else text

"""Chat messages for the title task and the clean-up of generated titles."""

from __future__ import annotations

import pytest

from titlegen.data.prompts import SYSTEM_PROMPT, build_messages, clean_title, first_sentence


def test_build_messages_has_system_then_user_with_the_abstract():
    abstract = "We study sparse convex estimators on random graphs."
    messages = build_messages(abstract)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    assert abstract in messages[1]["content"]
    assert abstract not in messages[0]["content"]
    # The question comes after the abstract, and no assistant answer is part of the prompt.
    assert messages[1]["content"].index(abstract) < messages[1]["content"].index("title")
    assert all(m["role"] != "assistant" for m in messages)


def test_build_messages_custom_system_prompt():
    messages = build_messages("An abstract.", system_prompt="Be terse.")
    assert messages[0] == {"role": "system", "content": "Be terse."}
    assert "An abstract." in messages[1]["content"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Title: Sparse Convex Estimators", "Sparse Convex Estimators"),
        ("title - Sparse Convex Estimators", "Sparse Convex Estimators"),
        ('A good title for this paper is "Sparse Convex Estimators', "Sparse Convex Estimators"),
        ('A good title for this paper is: "Sparse Convex Estimators"', "Sparse Convex Estimators"),
        ('The paper is titled "Sparse Convex Estimators"', "Sparse Convex Estimators"),
        ("This paper is entitled: Sparse Convex Estimators", "Sparse Convex Estimators"),
        ("**Sparse Convex Estimators**", "Sparse Convex Estimators"),
        ("“Sparse Convex Estimators”", "Sparse Convex Estimators"),
        ("Sure! Here is a title: Sparse Convex Estimators", "Sparse Convex Estimators"),
        ("Title:\nSparse Convex Estimators", "Sparse Convex Estimators"),
        ("Sparse Convex Estimators\nThis paper studies estimators.\nThird line", "Sparse Convex Estimators"),
        ("\n\n  Sparse Convex Estimators  \n", "Sparse Convex Estimators"),
        ("  Sparse   Convex \t Estimators  ", "Sparse Convex Estimators"),
        ("Titles of Papers Are Hard to Write", "Titles of Papers Are Hard to Write"),
        ("Title Generation with Transformers", "Title Generation with Transformers"),
        ("sparse convex ESTIMATORS", "sparse convex ESTIMATORS"),
    ],
)
def test_clean_title(raw, expected):
    assert clean_title(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\n\n", " \t\n "])
def test_clean_title_empty_input(raw):
    assert clean_title(raw) == ""


def test_clean_title_lone_prefix_without_a_following_line_is_empty():
    assert clean_title("Title:") == ""


@pytest.mark.parametrize(
    ("abstract", "expected"),
    [
        ("We study graphs. Then we prove it.", "We study graphs"),
        ("Dark matter (e.g. WIMPs) is hard to see. We look.", "Dark matter (e.g. WIMPs) is hard to see"),
        ("Using the method of Fig. 3 we find x. Next we go.", "Using the method of Fig. 3 we find x"),
        ("As in Smith et al. (2020) we go on. Next.", "As in Smith et al. (2020) we go on"),
        ("The U.S. economy grows. We model it.", "The U.S. economy grows"),
        ("A. B. Smith found a bound. It is tight.", "A. B. Smith found a bound"),
        ("Is it open? Yes it is.", "Is it open?"),
        ("One sentence only.", "One sentence only"),
        ("  Spaces\n and  lines.  Second.", "Spaces and lines"),
    ],
)
def test_first_sentence(abstract, expected):
    assert first_sentence(abstract) == expected

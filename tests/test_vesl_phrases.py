"""Noun-phrase extraction: the paper's chunk grammar, filtering, de-duplication and the offline taggers."""

import sys

import pytest

from cloc_mllm.vesl import phrases
from cloc_mllm.vesl.phrases import (
    MissingTaggerError,
    NounPhraseExtractor,
    build_phrase_extractor,
    clean_phrase,
    dedupe,
    repair_tags,
)

# A hand-tagged caption, so grammar and filtering are tested independently of any tagger.
TAGGED = {
    "the photo shows a big brown dog and a small cat near the brown dog on the left side": [
        ("the", "DT"), ("photo", "NN"), ("shows", "VBZ"), ("a", "DT"), ("big", "JJ"), ("brown", "JJ"),
        ("dog", "NN"), ("and", "CC"), ("a", "DT"), ("small", "JJ"), ("cat", "NN"), ("near", "IN"),
        ("the", "DT"), ("brown", "JJ"), ("dog", "NN"), ("on", "IN"), ("the", "DT"), ("left", "JJ"),
        ("side", "NN"),
    ],
}  # fmt: skip


def fixed_tagger(text):
    return TAGGED[text]


def test_grammar_chunks_follow_the_paper():
    extractor = NounPhraseExtractor(tagger=fixed_tagger)
    text = next(iter(TAGGED))
    assert extractor.chunks(text) == [
        ["the", "photo"],
        ["a", "big", "brown", "dog"],
        ["a", "small", "cat"],
        ["the", "brown", "dog"],
        ["the", "left", "side"],
    ]
    # determiners dropped, "photo"/"side" are generic, the repeated "brown dog" is not a second query
    assert extractor(text) == ["big brown dog", "small cat", "brown dog"]


def test_cleaning_and_dedupe_rules():
    assert clean_phrase(["The", "Red", "Car"]) == "red car"
    assert clean_phrase(["a", "lot"]) is None  # nothing but stop-words
    assert clean_phrase(["a", "blue", "background"]) is None  # generic head noun
    assert clean_phrase(["a", "2"]) is None
    assert dedupe(["a", None, "b", "a", "c"], limit=2) == ["a", "b"]


def test_at_most_max_queries():
    tagged = [(f"thing{i}", "NN") if i % 2 == 0 else ("and", "CC") for i in range(60)]
    extractor = NounPhraseExtractor(tagger=lambda _: tagged)
    assert extractor("x") == [f"thing{i}" for i in range(0, 40, 2)]  # 20 of the 30
    assert len(NounPhraseExtractor(tagger=lambda _: tagged, max_queries=3)("x")) == 3


def test_offline_pattern_tagger_on_synthetic_world_captions():
    extract = build_phrase_extractor("pattern")
    caption = (
        "a picture of two small green circles, a red cross and a large yellow star on a noisy background"
    )
    assert extract(caption) == ["small green circles", "red cross", "large yellow star"]
    assert extract("A man in a red shirt is riding a bicycle down a busy street.") == [
        "man",
        "red shirt",
        "bicycle",
        "busy street",
    ]
    assert extract("") == []
    assert extract("on top of it") == []


def test_repair_tags_turns_verbs_after_modifiers_into_nouns():
    assert repair_tags([("a", "DT"), ("red", "JJ"), ("cross", "VB")]) == [
        ("a", "DT"),
        ("red", "JJ"),
        ("cross", "NN"),
    ]
    assert repair_tags([("two", "CD"), ("crosses", "VBZ")])[1] == ("crosses", "NNS")
    assert repair_tags([("an", "DT"), ("orange", "JJ"), ("on", "IN")])[1] == ("orange", "NN")
    # a verb after a noun stays a verb; an adjective before a noun stays an adjective
    assert repair_tags([("dog", "NN"), ("runs", "VBZ")])[1] == ("runs", "VBZ")
    assert repair_tags([("a", "DT"), ("red", "JJ"), ("car", "NN")])[1] == ("red", "JJ")


def test_missing_nltk_data_names_the_fix(monkeypatch):
    import nltk

    def not_found(name):
        raise LookupError(name)

    monkeypatch.setattr(nltk.data, "find", not_found)
    with pytest.raises(MissingTaggerError, match="averaged_perceptron_tagger_eng"):
        build_phrase_extractor("nltk")


def test_missing_textblob_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "textblob.en", None)  # import now fails as if not installed
    with pytest.raises(MissingTaggerError, match="pip install"):
        phrases.pattern_tagger()


def test_spacy_extractor_reports_missing_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)
    with pytest.raises(MissingTaggerError, match="pip install spacy"):
        build_phrase_extractor("spacy:en_core_web_sm")


def test_unknown_tagger_is_an_error():
    with pytest.raises(ValueError, match="unknown POS tagger 'brill'"):
        NounPhraseExtractor("brill")

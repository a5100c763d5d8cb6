"""Noun-phrase extraction: the text queries VESL hands to the open-vocabulary detector.

The paper (App. C) tags the caption with POS tags, chunks it with ``NP: {<DT>?<JJ.*>*<NN.*>+}``, drops
stop-words and generic words and keeps at most 20 queries. The POS tagger is pluggable:

- ``"pattern"`` (default): the Penn-Treebank lexicon tagger that TextBlob ships inside its wheel
  (``textblob/en/en-lexicon.txt``, from the Pattern project), so ``pip install textblob`` is enough and
  nothing is downloaded at run time.
- ``"nltk"``: NLTK's averaged perceptron (needs the ``averaged_perceptron_tagger_eng`` data package).
- ``"spacy:<model>"``: spaCy's own noun chunks from an installed pipeline (e.g. ``spacy:en_core_web_sm``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

NP_GRAMMAR = "NP: {<DT>?<JJ.*>*<NN.*>+}"
MAX_QUERIES = 20

# Words that carry no visual content of their own inside a phrase (articles, quantifiers, pronouns).
STOP_WORDS = frozenset(
    """a an the this that these those some any each every either neither all both few many much
    several other another such own same its it their his her our my your one ones lot lots kind
    sort type number couple pair bunch group""".split()
)
# Phrases whose head noun names the picture itself or a place in it, not something a box could hold.
GENERIC_WORDS = frozenset(
    """image images picture pictures photo photos photograph photographs view views scene scenes
    shot shots frame frames background foreground side sides front back top bottom left right
    middle center centre corner corners edge edges area areas part parts thing things object objects
    item items stuff color colors colour colours shape shapes way time day something someone
    anything everything nothing""".split()
)

Tagger = Callable[[str], list[tuple[str, str]]]


class MissingTaggerError(RuntimeError):
    """Raised when the chosen POS tagger's code or data is not installed (the message names the fix)."""


def pattern_tagger() -> Tagger:
    """TextBlob's bundled Pattern lexicon tagger: (text) -> [(word, Penn tag)], fully offline."""
    try:
        from textblob.en import tag
    except ImportError as err:
        raise MissingTaggerError(
            "the 'pattern' POS tagger needs TextBlob: pip install 'cloc-mllm[vesl]' (or pip install textblob)"
        ) from err
    return lambda text: repair_tags(tag(text))


_MODIFIER_TAGS = ("DT", "CD", "PRP$", "JJ", "JJR", "JJS")
VERB_AS_NOUN = {"VB": "NN", "VBP": "NN", "VBZ": "NNS"}


def repair_tags(tagged: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Fix the lexicon tagger's commonest caption error: nouns that are also verbs or adjectives.

    "a red cross", "a small bear", "an orange on a plate": after a determiner, number or adjective a verb
    tag is a noun, and an adjective with nothing nominal or coordinated after it is a noun too.
    """
    out = [(word, pos) for word, pos in tagged]
    for i in range(1, len(out)):
        word, pos = out[i]
        if out[i - 1][1] not in _MODIFIER_TAGS:
            continue
        following = out[i + 1][1] if i + 1 < len(out) else "."
        if pos in VERB_AS_NOUN:
            out[i] = (word, VERB_AS_NOUN[pos])
        elif pos == "JJ" and not following.startswith(("JJ", "NN", "CC", "RB", "VB")):
            out[i] = (word, "NN")
    return out


def nltk_tagger() -> Tagger:
    """NLTK's averaged perceptron tagger; fails early, naming the data package, when it is missing."""
    import nltk
    from nltk.tokenize import TreebankWordTokenizer

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
    except LookupError as err:
        raise MissingTaggerError(
            "NLTK's tagger data is not installed: run `python -m nltk.downloader "
            "averaged_perceptron_tagger_eng` where a download is possible, or use the offline default "
            "tagger 'pattern' (pip install textblob)"
        ) from err
    tokenizer = TreebankWordTokenizer()
    return lambda text: nltk.pos_tag(tokenizer.tokenize(text), lang="eng")


_TAGGERS: dict[str, Callable[[], Tagger]] = {"pattern": pattern_tagger, "nltk": nltk_tagger}


def clean_phrase(words: Sequence[str]) -> str | None:
    """Lower-case a chunk, drop stop-words; None when nothing visual is left or the head is generic."""
    kept = [w.lower() for w in words if re.fullmatch(r"[\w'-]+", w) and w.lower() not in STOP_WORDS]
    if not kept or kept[-1] in GENERIC_WORDS or kept[-1].isdigit():
        return None
    return " ".join(kept)


def dedupe(phrases: Iterable[str | None], limit: int = MAX_QUERIES) -> list[str]:
    """First occurrences in caption order, without None, at most ``limit``."""
    seen: dict[str, None] = {}
    for phrase in phrases:
        if phrase and phrase not in seen:
            seen[phrase] = None
            if len(seen) == limit:
                break
    return list(seen)


class NounPhraseExtractor:
    """Caption -> detector queries with the paper's POS-tag chunk grammar.

    ``tagger`` is a name from ``"pattern"``, ``"nltk"`` or a callable ``text -> [(word, tag)]`` with
    Penn Treebank tags (tests inject a fixed one).
    """

    def __init__(self, tagger: str | Tagger = "pattern", max_queries: int = MAX_QUERIES):
        import nltk

        if isinstance(tagger, str):
            if tagger not in _TAGGERS:
                raise ValueError(f"unknown POS tagger {tagger!r}; expected one of {sorted(_TAGGERS)}")
            tagger = _TAGGERS[tagger]()
        self.tag = tagger
        self.max_queries = max_queries
        self.chunker = nltk.RegexpParser(NP_GRAMMAR)

    def chunks(self, text: str) -> list[list[str]]:
        """The raw NP chunks of ``text`` as word lists, in order."""
        tagged = self.tag(text)
        if not tagged:
            return []
        tree = self.chunker.parse(tagged)
        return [[word for word, _ in sub.leaves()] for sub in tree.subtrees(lambda t: t.label() == "NP")]

    def __call__(self, text: str) -> list[str]:
        return dedupe((clean_phrase(chunk) for chunk in self.chunks(text)), self.max_queries)


class SpacyPhraseExtractor:
    """Caption -> queries from spaCy's dependency-based noun chunks, with the same cleaning."""

    def __init__(self, model: str, max_queries: int = MAX_QUERIES):
        try:
            import spacy
        except ImportError as err:
            raise MissingTaggerError(
                f"phrase extractor 'spacy:{model}' needs spaCy: pip install spacy"
            ) from err
        try:
            self.nlp = spacy.load(model, disable=["ner", "lemmatizer"])
        except OSError as err:
            raise MissingTaggerError(
                f"spaCy pipeline {model!r} is not installed: install its package (pip install {model})"
            ) from err
        self.max_queries = max_queries

    def __call__(self, text: str) -> list[str]:
        doc = self.nlp(text)
        return dedupe((clean_phrase([t.text for t in chunk]) for chunk in doc.noun_chunks), self.max_queries)


def build_phrase_extractor(
    name: str = "pattern", max_queries: int = MAX_QUERIES
) -> Callable[[str], list[str]]:
    """``"pattern"`` | ``"nltk"`` | ``"spacy:<model>"`` -> a callable caption -> list of queries."""
    if name.startswith("spacy:"):
        return SpacyPhraseExtractor(name.split(":", 1)[1], max_queries)
    return NounPhraseExtractor(name, max_queries)

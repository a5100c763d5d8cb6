"""Language of the synthetic world: region phrases, captions and referring expressions.

Referring expressions are built as small structures (``RefExpression``) whose meaning is computed on the
scene (``denotes``), so an expression is only emitted when it is true of its target and of no other
object. ``resolve`` parses the *text* back and evaluates it, which is the checker tests use: it fails if
rendering ever says something other than what was meant.

Text is kept as *segments* (plain words and ``Mention``s of objects) so one sentence can be written
plainly (captions, refer sentences) or with Flickr30k Entities markup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .synthetic_scene import PALETTE, SHAPES, SIZE_WORDS, Scene

POSITIONS = ("left", "right", "top", "bottom")
RELATIONS = ("left of", "right of", "above", "below")
# An object is "the X on the left" only if it is this much (fraction of the image side) further left
# than every other X; a lone X must sit in the outer 40% of the image.
POSITION_MARGIN = 0.15
LONE_POSITION_LIMIT = 0.4
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Mention:
    """Words that name objects of the scene (``objects`` are indices; empty for the background)."""

    text: str
    objects: tuple[int, ...]
    kind: str = "other"


Segment = str | Mention


def join_segments(segments: list[Segment]) -> str:
    """Plain text of a segment list: words joined by spaces, no space before commas."""
    text = " ".join(s if isinstance(s, str) else s.text for s in segments)
    return text.replace(" ,", ",")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


# ----------------------------------------------------------------------------- phrases and captions


def region_phrase(scene: Scene, index: int, rng: np.random.Generator, size_word_prob: float) -> str:
    """ "red circle", with the size word when another red circle is present or at random."""
    obj = scene.objects[index]
    twins = sum(o.category == obj.category for o in scene.objects)
    return f"{obj.size} {obj.category}" if twins > 1 or rng.random() < size_word_prob else obj.category


def caption_segments(scene: Scene, phrases: list[str], rng: np.random.Generator) -> list[Segment]:
    """All objects, in random order, identical phrases grouped ("two red circles"), then the background.

    E.g. "a small red circle, a blue square and two green stars on a noisy background".
    """
    groups: dict[str, list[int]] = {}
    for i in rng.permutation(len(phrases)):
        groups.setdefault(phrases[i], []).append(int(i))
    mentions = []
    for phrase, members in groups.items():
        if len(members) == 1:
            text = f"{article(phrase)} {phrase}"
        else:
            words = phrase.split()
            text = " ".join([NUMBER_WORDS[min(len(members), 10)], *words[:-1], plural(words[-1])])
        mentions.append(Mention(text, tuple(members)))
    segments: list[Segment] = []
    for k, mention in enumerate(mentions):
        if k > 0:
            segments.append("and" if k == len(mentions) - 1 else ",")
        segments.append(mention)
    opener = str(rng.choice(["", "an image of", "a picture of"]))
    background = Mention(f"{article(scene.background)} {scene.background} background", (), "scene")
    return ([opener] if opener else []) + segments + ["on", background]


# ----------------------------------------------------------------------------- referring expressions


@dataclass(frozen=True)
class Description:
    """The noun phrase "the [size] colour shape"."""

    colour: str
    shape: str
    size: str | None = None

    def words(self) -> str:
        return " ".join(w for w in (self.size, self.colour, self.shape) if w)


@dataclass(frozen=True)
class RefExpression:
    """A head description, optionally narrowed by an absolute position or a relation to a landmark."""

    head: Description
    position: str | None = None
    relation: str | None = None
    landmark: Description | None = None

    @property
    def kind(self) -> str:
        if self.relation:
            return "relation"
        if self.position:
            return "position"
        return "size" if self.head.size else "plain"


def matching(scene: Scene, description: Description) -> list[int]:
    return [
        i
        for i, o in enumerate(scene.objects)
        if o.colour == description.colour
        and o.shape == description.shape
        and (description.size is None or o.size == description.size)
    ]


def _normalised_center(scene: Scene, index: int) -> tuple[float, float]:
    cx, cy = scene.objects[index].box_center
    return cx / scene.width, cy / scene.height


def _by_position(scene: Scene, candidates: list[int], position: str) -> list[int]:
    axis = 0 if position in ("left", "right") else 1
    sign = 1.0 if position in ("left", "top") else -1.0  # smaller coordinate first for left/top
    ranked = sorted(candidates, key=lambda i: sign * _normalised_center(scene, i)[axis])
    if not ranked:
        return []
    first = sign * _normalised_center(scene, ranked[0])[axis]
    if len(ranked) == 1:
        # A lone object is "on the left" only if it really is in the left part of the image.
        return ranked if first < (LONE_POSITION_LIMIT if sign > 0 else -(1 - LONE_POSITION_LIMIT)) else []
    second = sign * _normalised_center(scene, ranked[1])[axis]
    return ranked[:1] if second - first >= POSITION_MARGIN else []


def relation_holds(scene: Scene, index: int, landmark: int, relation: str) -> bool:
    """Object ``index`` is ``relation`` the landmark: its centre lies beyond the landmark's edge and its
    own far edge does not reach past the landmark's centre."""
    a, b = scene.objects[index].box, scene.objects[landmark].box
    acx, acy = scene.objects[index].box_center
    bcx, bcy = scene.objects[landmark].box_center
    if relation == "left of":
        return acx < b[0] and a[2] <= bcx
    if relation == "right of":
        return acx > b[2] and a[0] >= bcx
    if relation == "above":
        return acy < b[1] and a[3] <= bcy
    if relation == "below":
        return acy > b[3] and a[1] >= bcy
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def denotes(scene: Scene, expr: RefExpression) -> list[int]:
    """Indices of the objects the expression picks out (a definite reference needs exactly one)."""
    candidates = matching(scene, expr.head)
    if expr.position:
        return _by_position(scene, candidates, expr.position)
    if expr.relation:
        assert expr.landmark is not None
        landmarks = matching(scene, expr.landmark)
        if len(landmarks) != 1:
            return []
        return [
            i
            for i in candidates
            if i != landmarks[0] and relation_holds(scene, i, landmarks[0], expr.relation)
        ]
    return candidates


def referring_expressions(scene: Scene, target: int, allow_location: bool = True) -> list[RefExpression]:
    """Every expression of the grammar that is true of ``target`` and of nothing else.

    ``allow_location=False`` keeps appearance-only ones, as RefCOCO+ forbids location words.
    """
    obj = scene.objects[target]
    heads = [Description(obj.colour, obj.shape), Description(obj.colour, obj.shape, obj.size)]
    options = list(heads)
    if allow_location:
        options += [RefExpression(h, position=p) for h in heads for p in POSITIONS]
        for j, other in enumerate(scene.objects):
            landmark = Description(other.colour, other.shape)
            if j == target or other.category == obj.category or len(matching(scene, landmark)) != 1:
                continue
            options += [RefExpression(h, relation=r, landmark=landmark) for h in heads for r in RELATIONS]
    exprs = [o if isinstance(o, RefExpression) else RefExpression(o) for o in options]
    return [e for e in exprs if denotes(scene, e) == [target]]


def choose_expressions(
    exprs: list[RefExpression], count: int, rng: np.random.Generator, prefer: tuple[str, ...] = ()
) -> list[RefExpression]:
    """Up to ``count`` different expressions, drawing a kind first so relations do not crowd out the rest;
    kinds in ``prefer`` are drawn first when present (RefCOCOg's longer descriptions)."""
    pool = list(exprs)
    chosen: list[RefExpression] = []
    while pool and len(chosen) < count:
        kinds = sorted({e.kind for e in pool})
        preferred = [k for k in kinds if k in prefer]
        kind = str(rng.choice(preferred or kinds))
        same = [e for e in pool if e.kind == kind]
        pick = same[rng.integers(len(same))]
        chosen.append(pick)
        pool.remove(pick)
    return chosen


def expression_segments(
    expr: RefExpression, target: int, landmark: int | None, style: str, rng: np.random.Generator
) -> list[Segment]:
    """Words of an expression. ``style`` "short" reads like RefCOCO ("the red circle left of the blue
    square"), "long" like RefCOCOg ("a red circle that is to the left of the blue square")."""
    if style not in ("short", "long"):
        raise ValueError(f"unknown expression style {style!r}; expected 'short' or 'long'")
    long = style == "long"
    det = str(rng.choice(["the", "a"])) if long else "the"
    head_words = expr.head.words()
    head = Mention(f"{article(head_words) if det == 'a' else det} {head_words}", (target,))
    segments: list[Segment] = [head]
    if expr.position:
        side = " side of the image" if long and expr.position in ("left", "right") else ""
        prep = "at" if expr.position in ("top", "bottom") else "on"
        segments += (["located"] if long else []) + [f"{prep} the {expr.position}{side}"]
    elif expr.relation:
        assert expr.landmark is not None and landmark is not None
        rel = expr.relation
        if long:
            rel = ("that is " if rng.random() < 0.5 else "which is ") + (
                f"to the {rel}" if rel in ("left of", "right of") else rel
            )
        segments += [rel, Mention(f"the {expr.landmark.words()}", (landmark,))]
    elif long:
        segments.append(str(rng.choice(["in the picture", "shown in the image"])))
    return segments


def landmark_index(scene: Scene, expr: RefExpression) -> int | None:
    return matching(scene, expr.landmark)[0] if expr.landmark else None


# ----------------------------------------------------------------------------- the checker

_COLOURS = "|".join(sorted(PALETTE))
_SHAPES = "|".join(sorted(SHAPES))
_SIZES = "|".join(SIZE_WORDS)
_NP = rf"(?:the|a|an)\s+(?:({_SIZES})\s+)?({_COLOURS})\s+({_SHAPES})"
_EXPRESSION = re.compile(
    rf"^{_NP}"
    r"(?:\s+(?:that is|which is|located|shown))*"
    r"(?:\s+(?:on|at) the (left|right|top|bottom)(?: side of the image)?"
    rf"|\s+(?:to the )?(left of|right of|above|below)\s+{_NP})?"
    r"(?:\s+in the (?:image|picture))?$"
)


def parse_expression(text: str) -> RefExpression | None:
    """The structure of a sentence written by ``expression_segments``; None if it is not one."""
    match = _EXPRESSION.match(text.strip().lower())
    if match is None:
        return None
    size, colour, shape, position, relation, l_size, l_colour, l_shape = match.groups()
    landmark = Description(l_colour, l_shape, l_size) if relation else None
    return RefExpression(Description(colour, shape, size), position, relation, landmark)


def resolve(text: str, scene: Scene) -> list[int]:
    """Objects a referring sentence denotes in ``scene`` ([] if unparseable or nothing fits)."""
    expr = parse_expression(text)
    return [] if expr is None else denotes(scene, expr)

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from cloc_mllm.eval import metrics


def test_iou_matches_pycocotools_on_random_boxes():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, size=(40, 2))
    wh = rng.uniform(1, 120, size=(40, 2))
    xywh = np.concatenate([xy, wh], axis=1)
    xyxy = np.concatenate([xy, xy + wh], axis=1)
    preds, gts = xyxy[:20], xyxy[20:]
    expected = mask_utils.iou(xywh[:20].tolist(), xywh[20:].tolist(), [0] * 20)  # (20, 20)
    for i in range(20):
        got = metrics.protocol_ious([preds[i].tolist()], gts.tolist(), "any")[0]
        assert got == pytest.approx(expected[i].max(), abs=1e-9)
        first = metrics.protocol_ious([preds[i].tolist()], gts.tolist(), "first")[0]
        assert first == pytest.approx(expected[i, 0], abs=1e-9)


def test_merged_and_any_protocols_differ_on_two_box_phrase():
    # "two dogs": GT boxes side by side; a prediction covering both hits only under "merged".
    gts = [(0, 0, 10, 10), (10, 0, 20, 10)]
    covering = [(0, 0, 20, 10)]
    one_dog = [(10, 0, 20, 10)]
    assert metrics.protocol_ious(covering, gts, "any") == [pytest.approx(0.5)]
    assert metrics.protocol_ious(covering, gts, "merged") == [pytest.approx(1.0)]
    assert metrics.protocol_ious(one_dog, gts, "first") == [pytest.approx(0.0)]
    assert metrics.protocol_ious(one_dog, gts, "any") == [pytest.approx(1.0)]
    assert metrics.protocol_ious(one_dog, gts, "merged") == [pytest.approx(0.5)]
    assert metrics.merge_boxes(gts) == (0, 0, 20, 10)
    with pytest.raises(ValueError, match="unknown protocol"):
        metrics.protocol_ious(one_dog, gts, "best")


def test_score_grounding_hand_computed():
    targets = [[(0, 0, 10, 10)], [(0, 0, 10, 10)], [(0, 0, 10, 10)], [(0, 0, 10, 10)]]
    predictions = [
        [(0, 0, 10, 10)],  # hit, IoU 1
        [(0, 0, 10, 4), (0, 0, 10, 9)],  # first IoU .4 (miss), second .9 -> counts for recall@5
        [],  # unparseable answer: a miss with IoU 0
        [(0, 0, 10, 5)],  # IoU exactly .5: a hit (>=)
    ]
    got = metrics.score_grounding(predictions, targets, ks=(1, 5))
    assert got["acc@0.5"] == pytest.approx(2 / 4)
    assert got["recall@1"] == pytest.approx(2 / 4)
    assert got["recall@5"] == pytest.approx(3 / 4)
    assert got["mean_iou"] == pytest.approx((1 + 0.4 + 0 + 0.5) / 4)
    assert got["n"] == 4
    with pytest.raises(ValueError):
        metrics.score_grounding(predictions[:2], targets)


def test_centre_errors_hand_computed():
    sizes = [(100, 50), (100, 50), (100, 50)]
    targets = [[(0, 0, 20, 10)], [(60, 20, 100, 50)], [(0, 0, 10, 10), (30, 40, 40, 50)]]  # last: merged
    predictions = [[(10, 0, 30, 10)], [], [(0, 0, 40, 50), (0, 0, 1, 1)]]  # only the first box counts
    got = metrics.centre_errors(predictions, targets, sizes)
    # answered: items 0 and 2; centres (x/100, y/50): target (.1, .1) and (.2, .5), predicted (.2, .1) and (.2, .5)
    assert got["answered"] == 2
    assert got["centre_error"] == pytest.approx((0.1 + 0 + 0 + 0) / 4)
    # blind guess = mean target centre (.15, .3): |dx| .05 .05, |dy| .2 .2
    assert got["centre_error_blind"] == pytest.approx((0.05 + 0.2 + 0.05 + 0.2) / 4)
    assert metrics.centre_errors([[]], targets[:1], sizes[:1])["centre_error"] is None
    with pytest.raises(ValueError):
        metrics.centre_errors(predictions, targets, sizes[:2])


def test_retrieval_recall_hand_computed():
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    pos = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    # query 0: positive at rank 0; query 1: rank 2; query 2: rank 2
    got = metrics.retrieval_recall(sim, pos, ks=(1, 2, 3))
    assert got == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(1 / 3), "R@3": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="positive"):
        metrics.retrieval_recall(sim, torch.zeros_like(pos))


def test_mean_per_class_and_topk():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    target = torch.tensor([0, 1, 1, 1, 1, 0])
    macc, per_class = metrics.mean_per_class_accuracy(pred, target, num_classes=4)
    assert per_class[0] == pytest.approx(0.5) and per_class[1] == pytest.approx(0.75)
    assert math.isnan(per_class[2]) and math.isnan(per_class[3])
    assert macc == pytest.approx((0.5 + 0.75) / 2)
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    acc = metrics.topk_accuracy(logits, torch.tensor([1, 2]), ks=(1, 2, 5))
    assert acc == {"top1": pytest.approx(0.5), "top2": pytest.approx(1.0), "top5": pytest.approx(1.0)}


def test_text_matching():
    assert metrics.exact_match("The red cube.", ["red cube", "a cube"])
    assert not metrics.exact_match("", [""])
    assert not metrics.exact_match("red cube on left", ["red cube"])
    assert metrics.noun_match("two large red cubes", "cube")
    assert metrics.noun_match("a man on a motor bike", "motor bike")
    assert not metrics.noun_match("a blue circle", "cube")
    assert metrics.token_f1("red cube", ["the big red cube"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert metrics.token_f1("sky", ["red cube"]) == 0.0


def test_cider_when_available_and_absent(monkeypatch):
    preds = {"a": "red cube", "b": "blue circle", "c": "green star"}
    refs = {"a": ["red cube", "a red cube"], "b": ["blue circle"], "c": ["yellow triangle"]}
    try:
        import pycocoevalcap  # noqa: F401

        good = metrics.cider(preds, refs)
        worse = metrics.cider({**preds, "a": "green star"}, refs)
        assert good is not None and worse is not None and good > worse
    except ImportError:
        assert metrics.cider(preds, refs) is None
    import builtins

    real_import = builtins.__import__

    def no_cider(name, *args, **kwargs):
        if name.startswith("pycocoevalcap"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cider)
    assert metrics.cider(preds, refs) is None


def test_mean_box_reference_scores_the_constant_guess():
    from cloc_mllm.eval.metrics import mean_box_accuracy

    # two 100x100 images: targets left and right halves; the mean box is the centre half -> IoU 1/3 each
    targets = [[(0, 0, 50, 100)], [(50, 0, 100, 100)]]
    assert mean_box_accuracy(targets, [(100, 100)] * 2) == 0.0
    assert mean_box_accuracy(targets, [(100, 100)] * 2, threshold=0.3) == 1.0
    # the same normalised box in images of other sizes is one guess that hits both
    assert mean_box_accuracy([[(10, 10, 30, 30)], [(20, 20, 60, 60)]], [(40, 40), (80, 80)]) == 1.0
    assert mean_box_accuracy([[], []], [(10, 10)] * 2) is None


def test_random_object_reference_is_the_expected_share_of_hitting_candidates():
    from cloc_mllm.eval.metrics import random_object_accuracy

    target = [(0, 0, 10, 10)]
    # 1 of 4 candidates is the target (IoU 1), one overlaps it at IoU 0.5 (a hit), two are elsewhere
    candidates = [(0, 0, 10, 10), (0, 0, 10, 5), (50, 50, 60, 60), (70, 70, 80, 80)]
    assert random_object_accuracy([target], [candidates]) == pytest.approx(2 / 4)
    # averaged over items; an item without candidates is left out
    assert random_object_accuracy([target, target, target], [candidates, [(0, 0, 10, 10)], []]) == pytest.approx(0.75)
    assert random_object_accuracy([target], [[]]) is None
    with pytest.raises(ValueError):
        random_object_accuracy([target], [])


def test_object_hits_separate_finding_an_object_from_finding_the_referred_one():
    from cloc_mllm.eval.metrics import object_hits

    target = [(0, 0, 10, 10)]
    scene = [(0, 0, 10, 10), (50, 50, 60, 60), (70, 70, 80, 80)]
    predictions = [
        [(0, 0, 10, 10)],  # the referred object
        [(50, 50, 60, 61)],  # another object (IoU 10/11): found, not the referred one
        [(30, 30, 40, 40)],  # background
        [],  # unparseable answer: a miss
        [(0, 0, 10, 10)],  # an item without annotated objects: left out
    ]
    got = object_hits(predictions, [target] * 5, [scene, scene, scene, scene, []])
    assert got == {"hit": pytest.approx(2 / 4), "referred_of_hits": pytest.approx(1 / 2), "items": 4}
    # only the first (ranked) box counts
    assert object_hits([[(30, 30, 40, 40), (0, 0, 10, 10)]], [target], [scene])["hit"] == 0.0
    assert object_hits([[(30, 30, 40, 40)]], [target], [scene])["referred_of_hits"] is None
    assert object_hits([[(0, 0, 1, 1)]], [target], [[]]) == {"hit": None, "referred_of_hits": None, "items": 0}
    with pytest.raises(ValueError):
        object_hits([[]], [target], [])


def test_paired_bootstrap_gap_brackets_the_observed_gap_and_shrinks_with_items():
    from cloc_mllm.eval.metrics import paired_bootstrap_gap

    a = {"s1": [0] * 50 + [1] * 50, "s2": [0] * 80 + [1] * 20}
    b = {"s1": [1] * 70 + [0] * 30, "s2": [1] * 40 + [0] * 60}
    got = paired_bootstrap_gap(a, b, resamples=4000, seed=1)
    assert got["gap"] == pytest.approx(((0.7 - 0.5) + (0.4 - 0.2)) / 2)
    assert got["low"] < got["gap"] < got["high"]
    tenfold = paired_bootstrap_gap({k: v * 10 for k, v in a.items()}, {k: v * 10 for k, v in b.items()}, resamples=4000)
    assert (tenfold["high"] - tenfold["low"]) < 0.5 * (got["high"] - got["low"])
    same = paired_bootstrap_gap(a, a)  # identical systems: every resample's gap is exactly 0
    assert same["low"] == same["high"] == same["gap"] == 0
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap_gap({"s1": [0, 1]}, {"s1": [0, 1, 1]})
    with pytest.raises(ValueError, match="same splits"):
        paired_bootstrap_gap({"s1": [0]}, {"s2": [0]})


def test_score_grounding_keeps_per_item_hits_in_order():
    got = metrics.score_grounding([[(0, 0, 10, 10)], [], [(0, 0, 10, 4)]], [[(0, 0, 10, 10)]] * 3)
    assert got["hits@0.5"] == [1, 0, 0]

"""The collator: batch shapes, masks in the model frame, deterministic region sampling, counted losses."""

import math

import pytest
import torch
from PIL import Image

from cloc_mllm.data.collate import PAD_BOX, CLOCCollator
from cloc_mllm.data.tokenizer import EOS_ID, PAD_ID, train_world_tokenizer
from cloc_mllm.data.transforms import ImageTransform, boxes_to_model_frame

SIZE = 32


@pytest.fixture(scope="module")
def tokenizer():
    return train_world_tokenizer(["a red circle", "a blue square on a plain background", "green star"] * 5)


def _region(box, phrase="red circle"):
    return {"box": box, "phrase": phrase, "score": 1.0}


def _sample(key, regions, size=(80, 40), caption="a red circle"):
    meta = {"caption": caption, "width": size[0], "height": size[1], "regions": regions, "source": "test"}
    return key, Image.new("RGB", size, (200, 100, 50)), meta


def _collator(tokenizer, mode="pad", **kwargs):
    return CLOCCollator(tokenizer, ImageTransform.from_size(SIZE, mode), **kwargs)


def test_batch_shapes_masks_and_model_frame_boxes(tokenizer):
    collator = _collator(tokenizer, max_regions=3, region_max_length=8)
    regions = [_region([8, 4, 40, 20]), _region([40, 20, 80, 40], "blue square")]
    batch = collator([_sample("a", regions), _sample("b", [], caption="a blue square on a plain background")])
    assert batch["pixel_values"].shape == (2, 3, SIZE, SIZE)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 2
    assert batch["region_boxes"].shape == (2, 3, 4)
    assert batch["region_input_ids"].shape == batch["region_attention_mask"].shape
    assert batch["region_input_ids"].shape[:2] == (2, 3) and batch["region_input_ids"].shape[2] <= 8
    assert batch["region_mask"].tolist() == [[True, True, False], [False, False, False]]
    # Region boxes are the pad-mode map of the normalised pixel boxes.
    expected, _ = boxes_to_model_frame(
        torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]), (80, 40), "pad", SIZE
    )
    torch.testing.assert_close(batch["region_boxes"][0, :2], expected)
    assert batch["region_boxes"][1].tolist() == [list(PAD_BOX)] * 3
    # Every text row, padded slots included, ends in eos before its padding: finite inputs for the tower.
    ids, mask = batch["region_input_ids"].flatten(0, 1), batch["region_attention_mask"].flatten(0, 1)
    for row, m in zip(ids, mask, strict=True):
        assert row[m.sum() - 1] == EOS_ID and (row[m == 0] == PAD_ID).all()
    assert tokenizer.decode(ids[1], skip_special_tokens=True) == "blue square"
    assert collator.stats["images_without_regions"] == 1 and collator.stats["regions_used"] == 2


def test_collator_model_and_declared_batch_agree_on_the_keys(tokenizer):
    """One contract (cloc_mllm.batch.CLOCBatch): the collator fills exactly its keys and the model's
    forward takes exactly them (and return_loss), so neither side can add or rename one alone."""
    import inspect

    from cloc_mllm import CLOCModel
    from cloc_mllm.batch import CLOCBatch

    batch = _collator(tokenizer)([_sample("a", [_region([8, 4, 40, 20])])])
    declared = set(CLOCBatch.__annotations__)
    assert set(batch) == declared == CLOCBatch.__required_keys__
    taken = set(inspect.signature(CLOCModel.forward).parameters) - {"self", "return_loss"}
    assert taken == declared


def test_bad_regions_are_counted_never_used(tokenizer):
    collator = _collator(tokenizer, max_regions=8)
    regions = [
        _region([10, 5, 30, 25]),  # fine
        _region([30, 5, 10, 25]),  # inverted
        _region([math.nan, 0, 10, 10]),  # NaN
        _region([90, 50, 120, 60]),  # fully outside
        _region([60, 20, 100, 50]),  # partly outside: clamped, used
        _region([1, 2, 3]),  # malformed box
        _region([1, 2, 3, 4], phrase="  "),  # empty phrase
        "not a region",
    ]
    batch = collator([_sample("k", regions)])
    stats = collator.stats
    assert stats["regions_seen"] == 8
    assert stats["regions_malformed"] == 3
    assert stats["regions_invalid_box"] == 3
    assert stats["regions_clamped"] == 1
    assert stats["regions_used"] == 2 == int(batch["region_mask"].sum())
    assert torch.isfinite(batch["region_boxes"]).all()
    used = batch["region_boxes"][0, batch["region_mask"][0]]
    assert (used[:, 2:] > used[:, :2]).all() and (used >= 0).all() and (used <= 1).all()


def test_region_sampling_is_deterministic_per_key_seed_and_epoch(tokenizer):
    regions = [_region([i * 8, 0, i * 8 + 6, 6], f"red circle {i}") for i in range(10)]

    def chosen(seed=0, epoch=0, key="img-1"):
        batch = _collator(tokenizer, max_regions=4, seed=seed, epoch=epoch)([_sample(key, regions)])
        return batch["region_boxes"][0].tolist()

    assert chosen() == chosen()
    assert len({str(chosen(seed=s)) for s in range(6)}) > 1
    assert len({str(chosen(epoch=e)) for e in range(6)}) > 1
    assert len({str(chosen(key=f"img-{k}")) for k in range(6)}) > 1
    collator = _collator(tokenizer, max_regions=4)
    collator([_sample("x", regions)])
    assert collator.stats["regions_used"] == 4 and collator.stats["regions_not_sampled"] == 6


def test_center_crop_drops_cut_regions_and_counts_them(tokenizer):
    collator = _collator(tokenizer, mode="center_crop")
    regions = [_region([0, 0, 12, 40]), _region([30, 10, 50, 30])]  # left strip is cropped away
    batch = collator([_sample("c", regions)])
    assert batch["region_mask"][0].tolist() == [True, False, False, False]
    assert collator.stats["regions_cropped_out"] == 1


def test_size_mismatch_and_missing_caption_are_counted(tokenizer):
    collator = _collator(tokenizer)
    key, image, meta = _sample("m", [_region([0, 0, 40, 20])], caption="")
    meta["width"], meta["height"] = 160, 80  # boxes refer to a 2x larger original
    batch = collator([(key, image, meta)])
    assert collator.stats["image_size_mismatch"] == 1 and collator.stats["captions_empty"] == 1
    expected, _ = boxes_to_model_frame(torch.tensor([[0.0, 0.0, 0.25, 0.25]]), (80, 40), "pad", SIZE)
    torch.testing.assert_close(batch["region_boxes"][0, :1], expected)
    with pytest.raises(ValueError, match="empty batch"):
        collator([])

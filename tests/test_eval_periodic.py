import pytest
import torch

from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval import encoder
from cloc_mllm.eval.periodic import PeriodicEval
from cloc_mllm.training.model import build_model

from .pretrain_utils import tiny_config, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory)


@pytest.mark.parametrize(("loss", "head"), [("cloc", None), ("clip", "clip_roialign")])
def test_scores_the_held_out_split_with_the_eval_code(world, tmp_path, monkeypatch, loss, head):
    tokenizer = load_tokenizer(world / "tokenizer")
    model = build_model(tiny_config(world, tmp_path, loss=loss), tokenizer)
    evaluate = PeriodicEval(world / "coco", "val", tokenizer, ImageTransform.from_size(32), max_images=3)
    assert len(evaluate.captions) == 3
    assert {r.image_id for r in evaluate.detection.regions} == {c.image_id for c in evaluate.captions}
    heads = []
    recognition = encoder.region_recognition
    monkeypatch.setattr(
        "cloc_mllm.eval.periodic.region_recognition",
        lambda *args, **kwargs: heads.append(kwargs["head"]) or recognition(*args, **kwargs),
    )
    model.train()
    metrics = evaluate(model)
    assert heads == [head]  # the CLIP baseline's regions are scored the CLIP way
    assert model.training  # back in training mode afterwards
    assert set(metrics) >= {"region_mAcc", "region_acc", "t2i_R@1", "i2t_R@1"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert torch.is_grad_enabled()

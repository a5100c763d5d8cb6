import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel

from cloc_mllm import CLOCModel
from cloc_mllm.data.coco import CocoDetection, CocoRegion, load_coco_captions, load_coco_detection
from cloc_mllm.data.imagefolder import load_image_folder
from cloc_mllm.data.tokenizer import load_tokenizer
from cloc_mllm.data.transforms import ImageTransform, box_frame
from cloc_mllm.eval import encoder
from cloc_mllm.eval.benchmarks import GroundingBenchmark, GroundingItem, load_grounding_benchmarks
from tests.eval_helpers import make_world, tiny_cloc

SIZE = 32


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def tokenizer(world):
    return load_tokenizer(world / "tokenizer")


def pad_transform():
    return ImageTransform.from_size(SIZE, mode="pad")


def model_frame(box, width, height):
    """Where a pixel box of the original image lies in the padded, resized model input."""
    norm = torch.tensor([box[0] / width, box[1] / height, box[2] / width, box[3] / height])
    return box_frame(width, height, "pad", SIZE).to_model(norm)


class OracleModel(torch.nn.Module):
    """Knows the right answer *in the model frame*: scores can only be perfect if the evaluation maps
    boxes into the model input and predictions back out exactly as the transform does."""

    def __init__(self, tokenizer, boxes_by_text=None, classes_by_box=None, classnames=()):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.boxes_by_text = tokenizer, boxes_by_text or {}
        self.classes_by_box, self.classnames = classes_by_box or [], list(classnames)
        dim = max(len(self.classnames), 1)
        self.config = SimpleNamespace(
            text_config=SimpleNamespace(max_position_embeddings=32), projection_dim=dim, region_head="oracle"
        )

    @property
    def dtype(self):
        return torch.float32

    def _texts(self, input_ids):
        return [t.strip() for t in self.tokenizer.batch_decode(input_ids, skip_special_tokens=True)]

    def get_vision_tokens(self, pixel_values):
        self.images_encoded = getattr(self, "images_encoded", 0) + len(pixel_values)
        return torch.zeros(len(pixel_values), 16, 4)

    def get_region_tokens(self, pixel_values, head=None):
        return self.get_vision_tokens(pixel_values)

    def get_text_features(self, input_ids, attention_mask=None):
        """One-hot over the grounding texts when grounding (the box is looked up from it), else over
        the class names."""
        names = list(self.boxes_by_text) or self.classnames
        hot = [[float(name == text if self.boxes_by_text else name in text) for name in names] for text in self._texts(input_ids)]
        return F.normalize(torch.tensor(hot) + 1e-6, dim=-1)

    def get_region_features(self, vision_tokens, boxes, head=None):
        out = torch.full((*boxes.shape[:2], len(self.classnames)), 1e-6)
        for b in range(boxes.shape[0]):
            for k in range(boxes.shape[1]):
                for known, label in self.classes_by_box:
                    if torch.allclose(boxes[b, k], known, atol=1e-5):
                        out[b, k, label] = 1.0
        return F.normalize(out, dim=-1)

    def ground(self, vision_tokens, text_embeds):
        assert len(vision_tokens) == len(text_embeds)  # one image row per query
        boxes = list(self.boxes_by_text.values())
        return torch.stack([boxes[int(i)] for i in text_embeds.argmax(dim=-1)])


def test_grounding_head_boxes_come_back_to_the_original_image(world, tokenizer):
    bench = load_grounding_benchmarks(world / "refer", None, ["refcoco_val"])[0][0]
    items = [
        GroundingItem(f"k{i}", it.image_path, f"item {i}", it.boxes, it.width, it.height)
        for i, it in enumerate(bench.items)
    ]
    assert any(it.width != it.height for it in items)  # padding really moves boxes
    oracle = OracleModel(tokenizer, {it.text: model_frame(it.boxes[0], it.width, it.height) for it in items})
    metrics, rows = encoder.evaluate_grounding_head(
        oracle, tokenizer, [GroundingBenchmark("oracle", items, ("any",))], pad_transform(), batch_size=4
    )
    assert metrics["oracle"]["any"]["acc@0.5"] == 1.0
    assert metrics["oracle"]["any"]["mean_iou"] == pytest.approx(1.0, abs=1e-4)
    assert set(metrics["oracle"]["any"]) == {"acc@0.5", "mean_iou", "n", "hits@0.5"}  # one box: no Recall@k
    # the expressions of an image share its vision encode: once per image and batch of 4 items
    images = {(it.image_path, it.width, it.height) for it in items}
    assert len(images) < len(items) // 4 and oracle.images_encoded == len(items) // 4
    oracle.images_encoded = 0
    _, same = encoder.evaluate_grounding_head(
        oracle, tokenizer, [GroundingBenchmark("oracle", items, ("any",))], pad_transform(), batch_size=len(items)
    )
    assert oracle.images_encoded == len(images) and same == rows  # one batch: once per image, same boxes


def test_region_recognition_maps_boxes_into_the_model_frame(world, tokenizer):
    det = load_coco_detection(world / "coco/annotations/instances_val.json", world / "coco/val")
    known = [(model_frame(r.box, r.width, r.height), r.category_index) for r in det.regions]
    oracle = OracleModel(tokenizer, classes_by_box=known, classnames=det.categories)
    result = encoder.region_recognition(oracle, tokenizer, det, pad_transform(), batch_size=3)
    assert result["mAcc"] == 1.0 and result["acc"] == 1.0 and result["n"] == len(det.regions)
    # the same oracle with plain resizing sees boxes where it does not expect them
    squashed = encoder.region_recognition(oracle, tokenizer, det, ImageTransform.from_size(SIZE, "resize"))
    assert squashed["acc"] < 0.5


def test_missing_images_are_counted(world, tokenizer):
    det = load_coco_detection(world / "coco/annotations/instances_val.json", world / "coco/val")
    ghost = CocoRegion(999, str(world / "no_such.jpg"), (0, 0, 5, 5), det.categories[0], 0, 10, 10)
    det = CocoDetection(det.categories, [*det.regions, ghost])
    model = tiny_cloc(tokenizer).train()
    result = encoder.region_recognition(model, tokenizer, det, batch_size=4)
    assert result["counts"] == {"missing_image": 1, "regions_lost_to_missing_images": 1}
    assert result["n"] == len(det.regions) - 1
    assert model.training  # periodic evaluation hands the model back in training mode


def test_tiny_cloc_runs_every_encoder_evaluation(world, tokenizer, tmp_path):
    model = tiny_cloc(tokenizer)
    bench = load_grounding_benchmarks(world / "refer", world / "flickr30k_entities", ["flickr30k_val"])[0][0]
    retrieval = encoder.region_text_retrieval(model, tokenizer, bench, batch_size=4)
    assert retrieval["n_regions"] > 0 and retrieval["n_texts"] >= retrieval["n_regions"]
    assert retrieval["counts"]["multi_box_target"] >= 0
    for key in ("t2r_R@1", "t2r_R@10", "r2t_R@5", "t2r_in_image_R@1"):
        assert 0.0 <= retrieval[key] <= 1.0
    assert retrieval["t2r_R@1"] <= retrieval["t2r_R@5"] <= retrieval["t2r_R@10"]
    assert retrieval["t2r_in_image_R@1"] >= retrieval["t2r_R@1"]  # fewer competitors, never harder

    images = load_coco_captions(world / "coco/annotations/captions_val.json", world / "coco/val")
    itr = encoder.image_text_retrieval(model, tokenizer, images, batch_size=3)
    assert itr["n_images"] == len(images) and itr["i2t_R@10"] == 1.0  # fewer than 10 images: always found

    for label, name in enumerate(["circle", "square"]):  # a two-class image folder from world images
        (tmp_path / name).mkdir()
        for i in range(2):
            shutil.copy(images[2 * label + i].image_path, tmp_path / name / f"{i}.jpg")
    zs = encoder.zero_shot_classification(model, tokenizer, load_image_folder(tmp_path), batch_size=3)
    assert zs["n"] == 4 and zs["top5"] == 1.0 and 0.0 <= zs["top1"] <= 1.0


def test_plain_clip_uses_the_roialign_baseline(world, tokenizer, tmp_path):
    clip = CLIPModel(
        CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": len(tokenizer),
                "max_position_embeddings": 32,
                "eos_token_id": tokenizer.eos_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=16,
        )  # fmt: skip
    )
    clip.save_pretrained(tmp_path / "clip")
    model = CLOCModel.from_clip(tmp_path / "clip")
    det = load_coco_detection(world / "coco/annotations/instances_val.json", world / "coco/val")
    result = encoder.region_recognition(model, tokenizer, det, head="clip_roialign")
    assert result["n"] == len(det.regions) and 0.0 <= result["mAcc"] <= 1.0

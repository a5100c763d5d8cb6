import pytest
import torch
from PIL import Image

from cloc_mllm import CLOCModel
from cloc_mllm.data.coco import CocoDetection, CocoRegion
from cloc_mllm.data.transforms import ImageTransform
from cloc_mllm.eval.patch_probe import fit_linear_probe, patch_labels, patch_probe, probe_images

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def test_patch_labels_smallest_box_wins_and_background_is_zero():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.0, 0.0, 0.3, 0.3]])
    labels = patch_labels(boxes, torch.tensor([2, 5]), grid=4).view(4, 4)
    assert labels[0, 0] == 6  # centre (0.125, 0.125) lies in both: the smaller box's class
    assert labels[0, 1] == 3 and labels[3, 1] == 3  # only the tall box
    assert (labels[:, 2:] == 0).all()  # right half: background
    assert (patch_labels(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), grid=3) == 0).all()


def test_linear_probe_separates_separable_classes():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 3
    targets = torch.arange(3).repeat(100)
    features = centres[targets] + torch.randn(300, 16, generator=generator)
    probe = fit_linear_probe(features[:240], targets[:240], num_classes=3)
    accuracy = (probe(features[240:]).argmax(-1) == targets[240:]).float().mean()
    assert accuracy == 1.0


def _squares(root, count, seed) -> CocoDetection:
    """32 px grey images, each with one 16 px red or blue square in a random quadrant."""
    generator = torch.Generator().manual_seed(seed)
    detection = CocoDetection(categories=list(COLOURS))
    for i in range(count):
        colour = int(torch.randint(2, (1,), generator=generator))
        x, y = (16 * int(v) for v in torch.randint(2, (2,), generator=generator))
        image = Image.new("RGB", (32, 32), (128, 128, 128))
        image.paste(COLOURS[detection.categories[colour]], (x, y, x + 16, y + 16))
        path = root / f"{seed}_{i}.png"
        image.save(path)
        box = (float(x), float(y), float(x + 16), float(y + 16))
        detection.regions.append(CocoRegion(i, str(path), box, detection.categories[colour], colour, 32, 32))
    return detection


def test_patch_probe_reads_colour_and_position_from_the_embedding_layer(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = CLOCModel(tiny_config)  # 32 px, 8 px patches: a 4x4 grid
    train, test = _squares(tmp_path, 24, seed=0), _squares(tmp_path, 8, seed=1)
    assert len(probe_images(train)) == 24 and len(probe_images(train, limit=5)) == 5
    result = patch_probe(model, train, test, ImageTransform.from_size(32), layers=(0, -1), train_images=24)
    assert model.training  # handed back in the mode it came in
    assert result["classes"] == 3 and result["grid_cells"] == 16
    assert result["test_patches"] == 8 * 16 and result["object_patch_fraction"] == pytest.approx(0.25)
    embedding = result["layers"]["0"]  # patch embedding + position embedding: linear in the pixels
    assert embedding["object_class_acc"] >= 0.95 and embedding["all_class_acc"] >= 0.95
    assert embedding["position_acc"] >= 0.9
    assert set(result["layers"]) == {"0", "-1"}
    assert all(0.0 <= v <= 1.0 for v in result["layers"]["-1"].values())


def test_patch_probe_rejects_mismatched_categories(tiny_config, tmp_path):
    train = _squares(tmp_path, 2, seed=0)
    other = CocoDetection(categories=["green"], regions=[])
    with pytest.raises(ValueError, match="category lists"):
        patch_probe(CLOCModel(tiny_config), train, other, ImageTransform.from_size(32))

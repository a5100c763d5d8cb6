"""Grounding experiments on a frozen tower's tokens, computed once, and on ideal ("oracle") tokens.

With the tower frozen (LLaVA's default), its tokens for an image are the same on every step, so an
experiment on *what an LLM learns from a tower* can compute them once and train only the projector and
the LLM (about 1.5 steps/s of 32 grounding records on 2 CPU cores with the main job's tiny Llama).
``oracle_tokens`` builds what an ideal tower would say from the world's COCO-format annotations: per
patch, one-hots of the class of the object under it and of the patch's grid row and column. An LLM
finetuned on them shows what that LLM and budget make of a tower that answers everything a patch probe
asks; if it cannot ground from these, the LLM, not the tower, limits a tower comparison.

``TokenTable`` stands in for the vision tower both in training and in the usual evaluation
(``evaluate_mllm_grounding``): it returns the stored tokens of an image, found by its exact
preprocessed pixels, and refuses images it has not stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm
from transformers.modeling_outputs import BaseModelOutputWithPooling

from cloc_mllm.atomic_io import write_bytes_atomic
from cloc_mllm.eval.benchmarks import load_grounding_benchmarks
from cloc_mllm.eval.mllm_grounding import evaluate_mllm_grounding
from cloc_mllm.eval.patch_probe import patch_labels
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.data import LazySupervisedDataset, SupervisedCollator
from cloc_mllm.mllm.region_prompts import boxes_to_model_frame
from cloc_mllm.mllm.training import ModelArguments, set_trainable
from cloc_mllm.training.monitor import LOG_FILE, plot_runs
from cloc_mllm.training.optim import warmup_cosine


def pixel_key(pixels: Tensor) -> str:
    """Identity of one preprocessed image (3, H, W): the digest of its exact values."""
    return hashlib.sha1(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class TokenTable(torch.nn.Module):
    """A vision tower that answers from a table: image (by its preprocessed pixels) -> tokens (T, D).

    Every hidden state is the stored tokens, so any ``mm_vision_select_layer`` reads them.
    """

    def __init__(self, tokens: dict[str, Tensor], num_hidden_layers: int):
        super().__init__()
        self.tokens = tokens
        self.num_hidden_layers = num_hidden_layers

    def forward(self, pixel_values: Tensor, **kwargs) -> BaseModelOutputWithPooling:
        keys = [pixel_key(pixels) for pixels in pixel_values]
        missing = sum(key not in self.tokens for key in keys)
        if missing:
            raise KeyError(
                f"{missing} of {len(keys)} images have no stored tokens: build the table over them"
            )
        tokens = torch.stack([self.tokens[key] for key in keys]).to(pixel_values.device, pixel_values.dtype)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, hidden_states=(tokens,) * (self.num_hidden_layers + 1)
        )


def preprocess(image_processor, paths: Sequence[Path]) -> list[Tensor]:
    """Preprocessed pixels (3, H, W) of each image, in order."""
    out = []
    for path in paths:
        with Image.open(path) as image:
            out.append(image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0])
    return out


@torch.no_grad()
def tower_tokens(tower, pixels: Sequence[Tensor], layer: int, batch_size: int = 64) -> dict[str, Tensor]:
    """The tower's tokens at ``layer`` (counted like ``mm_vision_select_layer``) for each image."""
    device = next(tower.parameters()).device
    table = {}
    for start in tqdm(range(0, len(pixels), batch_size), desc="tower tokens", mininterval=5):
        batch = torch.stack(list(pixels[start : start + batch_size]))  # (B, 3, H, W)
        hidden = tower(batch.to(device), output_hidden_states=True).hidden_states[layer]  # (B, T, D)
        table.update({pixel_key(p): h.cpu().clone() for p, h in zip(batch, hidden, strict=True)})
    return table


def oracle_image_tokens(
    boxes: Tensor, classes: Tensor, num_classes: int, grid: int, hidden_size: int, scale: float = 3.0
) -> Tensor:
    """Ideal tokens of one image: a CLS slot (zeros), then per patch in raster order one-hots of
    (class under the patch + 1, 0 = background), grid row and grid column, times ``scale``.

    boxes (K, 4) normalised xyxy, classes (K,) in [0, num_classes) -> (1 + grid * grid, hidden_size).
    """
    width = num_classes + 1 + 2 * grid
    if width > hidden_size:
        raise ValueError(
            f"oracle tokens need {width} dims ({num_classes} classes, grid {grid}), tower has {hidden_size}"
        )
    patches = torch.arange(grid * grid)
    tokens = torch.zeros(1 + grid * grid, hidden_size)
    tokens[1 + patches, patch_labels(boxes, classes, grid)] = scale
    tokens[1 + patches, num_classes + 1 + patches // grid] = scale
    tokens[1 + patches, num_classes + 1 + grid + patches % grid] = scale
    return tokens


def oracle_tokens(
    instances_path: str | Path,
    pixels_by_file: dict[str, Tensor],
    image_processor,
    grid: int,
    hidden_size: int,
) -> dict[str, Tensor]:
    """Oracle tokens of every image of a COCO instances file that ``pixels_by_file`` (file name ->
    preprocessed pixels) holds; images it does not hold are not needed and left out. Boxes are mapped
    into the square ``image_processor`` makes, so each patch is labelled with what the tower sees there."""
    coco = json.loads(Path(instances_path).read_text())
    class_index = {cat["id"]: i for i, cat in enumerate(coco["categories"])}
    objects: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    table = {}
    for image in coco["images"]:
        if image["file_name"] not in pixels_by_file:
            continue
        width, height = image["width"], image["height"]
        anns = objects.get(image["id"], [])
        boxes = torch.tensor(
            [
                [x / width, y / height, (x + w) / width, (y + h) / height]
                for x, y, w, h in (a["bbox"] for a in anns)
            ]
        ).reshape(-1, 4)
        boxes = boxes_to_model_frame(boxes, (width, height), image_processor)
        classes = torch.tensor([class_index[a["category_id"]] for a in anns], dtype=torch.long)
        tokens = oracle_image_tokens(boxes, classes, len(class_index), grid, hidden_size)
        table[pixel_key(pixels_by_file[image["file_name"]])] = tokens
    return table


def refer_instances(refer_root: str | Path) -> Path:
    """The COCO instances file of a refer-layout root that oracle tokens are built from."""
    return Path(refer_root) / "refcoco" / "instances.json"


def images_of(
    datasets: Sequence[LazySupervisedDataset], image_folder: str | Path, benchmarks: Sequence = ()
) -> list[Path]:
    """Every image the datasets' records and the benchmarks' items show, each once."""
    names = sorted({r["image"] for dataset in datasets for r in dataset.records if "image" in r})
    eval_paths = sorted({Path(item.image_path) for bench in benchmarks for item in bench.items})
    return [Path(image_folder) / name for name in names] + eval_paths


def use_token_table(
    model, processor, paths: Sequence[Path], oracle_instances: Path | None, select_layer: int
) -> TokenTable:
    """Put a ``TokenTable`` over ``paths`` in place of the LLaVA's tower: the tower's own tokens at
    ``select_layer``, or oracle tokens from ``oracle_instances`` (a COCO instances file)."""
    pixels = preprocess(processor.image_processor, tqdm(paths, desc="preprocess", mininterval=5))
    tower = model.model.vision_tower
    if oracle_instances is None:
        table = tower_tokens(tower, pixels, select_layer)
    else:
        by_file = {path.name: p for path, p in zip(paths, pixels, strict=True)}
        grid = tower.config.image_size // tower.config.patch_size
        table = oracle_tokens(
            oracle_instances, by_file, processor.image_processor, grid, tower.config.hidden_size
        )
    model.model.vision_tower = TokenTable(table, tower.config.num_hidden_layers)
    return model.model.vision_tower


def write_loss_log(out_dir: Path, losses: Sequence[float], label: str) -> None:
    """Per-step losses as the training log (``train_log.jsonl``) and its plot (``loss.png``)."""
    (out_dir / LOG_FILE).write_text(
        "".join(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(losses))
    )
    plot_runs({label: out_dir}, out_dir / "loss.png", metrics=("loss",))


def finetune_on_tokens(
    model, dataset: LazySupervisedDataset, steps: int, batch_size: int = 32, lr: float = 1e-3, seed: int = 0
) -> list[float]:
    """Train what ``set_trainable`` left trainable (projector + LLM) for ``steps`` steps of AdamW, linear
    warm-up over 5% then cosine decay, epochs reshuffled; the tower is expected to be a ``TokenTable``
    over the dataset's images. Returns the loss of every step."""
    rng = random.Random(seed)
    collate = SupervisedCollator(dataset.processor.tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps)
    device = params[0].device
    order: list[int] = []
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="finetune on tokens", mininterval=5):
        if len(order) < batch_size:
            order = list(range(len(dataset)))
            rng.shuffle(order)
        indices, order = order[:batch_size], order[batch_size:]
        batch = collate([dataset[i] for i in indices])
        loss = model(**{name: value.to(device) for name, value in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vision_tower", required=True, help="exported tower (its processor and size)")
    parser.add_argument("--llm", required=True, help="LLM directory (model + tokenizer)")
    parser.add_argument("--data_path", required=True, help="LLaVA json")
    parser.add_argument("--image_folder", required=True)
    parser.add_argument("--refer_root", required=True, help="RefCOCO-format root for evaluation")
    parser.add_argument("--benchmarks", default="refcoco_testA,refcoco_testB,refcocog_test")
    parser.add_argument("--eval_limit", type=int, default=200)
    parser.add_argument(
        "--oracle", action="store_true", help="ideal tokens from refer_root's refcoco instances"
    )
    parser.add_argument("--select_layer", type=int, default=-2)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    build = LlavaBuildArgs(args.vision_tower, args.llm, mm_vision_select_layer=args.select_layer)
    model, processor = build_llava(build)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    set_trainable(model, ModelArguments(model_name_or_path=args.llm, vision_tower=args.vision_tower))
    dataset = LazySupervisedDataset(
        args.data_path, args.image_folder, processor, num_image_tokens=model.config.image_seq_length
    )
    benchmarks, not_loaded = load_grounding_benchmarks(
        args.refer_root, None, args.benchmarks.split(","), limit=args.eval_limit
    )
    paths = images_of([dataset], args.image_folder, benchmarks)
    instances = refer_instances(args.refer_root) if args.oracle else None
    use_token_table(model, processor, paths, instances, args.select_layer)

    losses = finetune_on_tokens(model, dataset, args.steps, args.batch_size, args.lr, args.seed)
    metrics, _ = evaluate_mllm_grounding(model, processor, benchmarks, batch_size=16, max_new_tokens=24)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "args": vars(args),
        "data": dataset.stats.as_dict(),
        "loss_first_100": sum(losses[:100]) / max(1, len(losses[:100])),
        "loss_last_100": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "losses": losses,
        "grounding": metrics,
        "not_evaluated": not_loaded,
    }
    write_bytes_atomic(out / "frozen_tokens.json", json.dumps(result, indent=1).encode())
    write_loss_log(out, losses, "projector + LLM on frozen tokens")
    for name, scores in metrics.items():
        loc = scores.get("localisation") or {}
        print(f"{name}: Acc@0.5 {100 * scores['any']['acc@0.5']:.1f}, centre error {loc.get('centre_error')}"
              f" (blind guess {loc.get('centre_error_blind')})")  # fmt: skip


if __name__ == "__main__":
    main()

"""LLaVA conversation json -> supervised examples: tokens, labels on the answers only, pixel values.

Records are checked and tokenised once up front (text only, cheap) so that bad records, over-long
conversations and the lengths for modality grouping are all known before training starts; images are
read lazily in ``__getitem__``. Labels come from the character spans of the answers in the rendered
chat (``templates.render_with_answer_spans``) mapped onto tokens through the tokenizer's offsets, so the
prompt is tokenised exactly as ``generate_answers`` tokenises it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from cloc_mllm.box_text import BOX_TEXT_SCALE
from cloc_mllm.data.images import upright_rgb
from cloc_mllm.mllm.pointing import check_pointers, tokenizer_grid
from cloc_mllm.mllm.region_prompts import boxes_to_model_frame, region_boxes_tensor
from cloc_mllm.mllm.templates import IMAGE_TOKEN, REGION_TOKEN, render_with_answer_spans, to_messages

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MAX_LOGGED_REFUSALS = 20  # all refused records are named in ``DataStats.refused``, these first ones logged
_NUMBER_LIST = re.compile(r"\[[\s\d.,+-]*\d[\s\d.,+-]*\]")


class RecordError(ValueError):
    """A record that cannot be used; the message names the record."""


@dataclass
class EncodedConversation:
    input_ids: list[int]  # (L,) image placeholder already expanded to its image tokens
    labels: list[int]  # (L,) IGNORE_INDEX outside answers
    truncated: bool


@dataclass
class DataStats:
    """What loading did to the records: every record is counted in exactly one outcome."""

    records: int = 0
    kept: int = 0
    truncated: int = 0  # kept, but cut to model_max_length
    refused_image_cut: int = 0  # truncation would have cut image tokens
    refused_no_answer: int = 0  # nothing left to learn after truncation
    skipped_bad: int = 0  # malformed or missing image (only with skip_bad_records)
    refused: dict[str, str] = field(default_factory=dict)  # record id -> why it was not kept

    def as_dict(self) -> dict[str, int | dict[str, str]]:
        return asdict(self)

    def refuse(self, name: str, outcome: str, reason: str) -> None:
        """Count a record that is not kept under ``outcome`` and name it (logged for the first few)."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.refused[name] = reason
        if len(self.refused) <= MAX_LOGGED_REFUSALS:
            logger.warning("record %s not used (%s): %s", name, outcome, reason)


def check_box_text(text: str) -> None:
    """Raise ``ValueError`` unless every bracketed number list is a Ferret box ``[x1, y1, x2, y2]``.

    Boxes in training text must be integers 0-999 with x1 <= x2 and y1 <= y2; anything else would teach
    the model a format ``parse_boxes`` reads differently.
    """
    for match in _NUMBER_LIST.finditer(text):
        parts = [p.strip() for p in match.group(0)[1:-1].split(",")]
        ok = len(parts) == 4 and all(re.fullmatch(r"\d+", p) for p in parts)
        if ok:
            x1, y1, x2, y2 = (int(p) for p in parts)
            ok = max(x1, y1, x2, y2) <= BOX_TEXT_SCALE and x1 <= x2 and y1 <= y2
        if not ok:
            raise ValueError(
                f"box text {match.group(0)!r} is not [x1, y1, x2, y2] with integers 0-{BOX_TEXT_SCALE}"
            )


def encode_conversation(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[dict],
    chat_template: str,
    image_token_id: int,
    num_image_tokens: int,
    max_length: int,
) -> EncodedConversation:
    """Tokens and labels of one LLaVA conversation; raises ``ValueError`` when it cannot be used.

    The single ``<image>`` token is expanded to ``num_image_tokens`` copies. Sequences longer than
    ``max_length`` are cut at the end, but never inside the image tokens.
    """
    if not tokenizer.is_fast:
        raise ValueError("answer masking needs a fast tokenizer (character offsets)")
    text, spans = render_with_answer_spans(tokenizer, to_messages(conversations), chat_template)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, labels = [], []
    for token, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        in_answer = any(s <= start < e for s, e in spans)
        if token == image_token_id:
            if in_answer:
                raise ValueError(f"{IMAGE_TOKEN} inside an answer")
            input_ids += [token] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
        else:
            input_ids.append(token)
            labels.append(token if in_answer else IGNORE_INDEX)
    truncated = len(input_ids) > max_length
    if truncated:
        last_image = max((i for i, t in enumerate(input_ids) if t == image_token_id), default=-1)
        if last_image >= max_length:
            raise ImageCutError(
                f"{len(input_ids)} tokens with image tokens beyond model_max_length {max_length}"
            )
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise NoAnswerError(f"no answer token left within model_max_length {max_length}")
    return EncodedConversation(input_ids, labels, truncated)


class ImageCutError(ValueError):
    """Truncation would cut image tokens."""


class NoAnswerError(ValueError):
    """Truncation leaves nothing to learn."""


def with_image_placeholder(conversations: list[dict], has_image: bool) -> list[dict]:
    """Put ``<image>\\n`` in front of the first human turn when an image record lacks it."""
    placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in conversations)
    if placeholders > 1 or (placeholders and not has_image):
        raise ValueError(f"{placeholders} {IMAGE_TOKEN} placeholders for {int(has_image)} image")
    if has_image and not placeholders:
        first = next(i for i, turn in enumerate(conversations) if turn["from"] in ("human", "user"))
        conversations = [dict(turn) for turn in conversations]
        conversations[first]["value"] = f"{IMAGE_TOKEN}\n{conversations[first]['value']}"
    return conversations


def read_records(data_path: str | Path) -> object:
    """The parsed json file; a file that is not json (e.g. cut short) is an error naming it."""
    try:
        return json.loads(Path(data_path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{data_path}: not a json list of LLaVA records ({err})") from err


class LazySupervisedDataset(Dataset):
    """LLaVA json records as training examples.

    Each item: ``input_ids`` (L,), ``labels`` (L,), ``pixel_values`` (3, H, W) or None for text-only.
    Bad records (missing image, malformed turns) raise ``RecordError`` naming the record, or are skipped
    and counted with ``skip_bad_records``. Box text that is not a Ferret box, or a ``<cell_k>`` pointer that
    does not name the centre cell of its box, always raises. ``stats``
    counts every outcome and names each record not kept, with the reason (``stats.refused``).
    """

    def __init__(
        self,
        data_path: str | Path,
        image_folder: str | Path | None,
        processor: ProcessorMixin,
        num_image_tokens: int,
        skip_bad_records: bool = False,
        check_boxes: bool = True,
    ):
        self.image_folder = Path(image_folder) if image_folder else None
        self.processor = processor
        self.num_image_tokens = num_image_tokens
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.has_region_token = REGION_TOKEN in processor.tokenizer.get_vocab()  # once: a 49k-entry dict
        self.cell_grid = tokenizer_grid(processor.tokenizer)
        self.stats = DataStats()
        self.records: list[dict] = []
        self.lengths: list[int] = []
        self.has_image: list[bool] = []
        records = read_records(data_path)
        if not isinstance(records, list):
            raise ValueError(f"{data_path}: expected a json list of LLaVA records")
        for index, record in enumerate(tqdm(records, desc=f"check {Path(data_path).name}", mininterval=5)):
            self._admit(index, record, skip_bad_records, check_boxes)

    def _admit(self, index: int, record: dict, skip_bad: bool, check_boxes: bool) -> None:
        self.stats.records += 1
        name = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
        try:
            record = self._checked(record, check_boxes, name)
            encoded = self._encode(record)
        except ImageCutError as err:
            self.stats.refuse(name, "refused_image_cut", str(err))
            return
        except NoAnswerError as err:
            self.stats.refuse(name, "refused_no_answer", str(err))
            return
        except RecordError as err:
            if not skip_bad:
                raise
            self.stats.refuse(name, "skipped_bad", str(err.__cause__ or err))  # without "record NAME: "
            return
        self.stats.kept += 1
        self.stats.truncated += int(encoded.truncated)
        self.records.append(record)
        self.lengths.append(len(encoded.input_ids))
        self.has_image.append("image" in record)

    def _checked(self, record: dict, check_boxes: bool, name: str) -> dict:
        """The record with its image placeholder in place; ``RecordError`` when unusable."""
        try:
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                raise ValueError("needs a 'conversations' list")
            if "image" in record and not isinstance(record["image"], str):
                raise ValueError("'image' must be one file name")
            to_messages(record["conversations"])
            conversations = with_image_placeholder(record["conversations"], "image" in record)
            if "image" in record and not self._image_path(record).is_file():
                raise ValueError(f"image file {self._image_path(record)} not found")
            if "regions" in record:
                self._check_regions(record, conversations)
        except ValueError as err:
            raise RecordError(f"record {name}: {err}") from err
        for turn in conversations:  # wrong box text or pointers teach what the evaluation reads otherwise
            try:
                if check_boxes:
                    check_box_text(turn["value"])
                check_pointers(turn["value"], self.cell_grid)
            except ValueError as err:
                raise ValueError(f"record {name}: {err}") from err
        return {**record, "id": name, "conversations": conversations}

    def _check_regions(self, record: dict, conversations: list[dict]) -> None:
        """``regions``: one normalised xyxy box per ``<region>`` placeholder, in order; needs an image."""
        regions = record["regions"]
        if not self.has_region_token:
            raise ValueError("has regions, but the model was built without region prompts")
        if "image" not in record:
            raise ValueError("regions need an image")
        placeholders = sum(turn["value"].count(REGION_TOKEN) for turn in conversations)
        if not isinstance(regions, list) or len(regions) != placeholders:
            raise ValueError(f"{placeholders} {REGION_TOKEN} placeholders but regions {regions!r}")
        for box in regions:
            ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            if not ok or not (0 <= box[0] <= box[2] <= 1 and 0 <= box[1] <= box[3] <= 1):
                raise ValueError(f"region {box!r} is not a normalised [x1, y1, x2, y2]")

    def _image_path(self, record: dict) -> Path:
        return self.image_folder / record["image"] if self.image_folder else Path(record["image"])

    def _encode(self, record: dict) -> EncodedConversation:
        tokenizer = self.processor.tokenizer
        try:
            return encode_conversation(
                tokenizer,
                record["conversations"],
                self.processor.chat_template,
                self.image_token_id,
                self.num_image_tokens,
                tokenizer.model_max_length,
            )
        except (ImageCutError, NoAnswerError):
            raise
        except ValueError as err:
            raise RecordError(f"record {record['id']}: {err}") from err

    @property
    def modality_lengths(self) -> list[int]:
        """LLaVA's convention: positive lengths for image records, negative for text-only ones."""
        return [n if img else -n for n, img in zip(self.lengths, self.has_image, strict=True)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        encoded = self._encode(record)
        item = {
            "input_ids": torch.tensor(encoded.input_ids),
            "labels": torch.tensor(encoded.labels),
            "pixel_values": None,
        }
        if "image" in record:
            try:
                with Image.open(self._image_path(record)) as image:
                    image = upright_rgb(image)  # as evaluation and chat see it: boxes agree
            except OSError as err:
                raise RecordError(
                    f"record {record['id']}: cannot read {self._image_path(record)}: {err}"
                ) from err
            pixels = self.processor.image_processor(image, return_tensors="pt")["pixel_values"]
            item["pixel_values"] = pixels[0]
            if "regions" in record:
                boxes = torch.tensor(record["regions"], dtype=torch.float32)
                item["region_boxes"] = boxes_to_model_frame(boxes, image.size, self.processor.image_processor)
        return item


@dataclass
class SupervisedCollator:
    """Right-pads a batch: ``input_ids``/``labels``/``attention_mask`` (B, L); ``pixel_values`` (I, 3, H, W)
    for the I records that have an image, in batch order (Llava fills image tokens in that order);
    ``region_boxes`` (I, K, 4) when any record has regions."""

    pad_token_id: int

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), longest), self.pad_token_id)
        labels = torch.full((len(items), longest), IGNORE_INDEX)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = (
                item["input_ids"],
                item["labels"],
                1,
            )
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        with_image = [item for item in items if item["pixel_values"] is not None]
        if with_image:
            batch["pixel_values"] = torch.stack([item["pixel_values"] for item in with_image])
        if any("region_boxes" in item for item in with_image):
            boxes = [item.get("region_boxes", torch.empty(0, 4)).tolist() for item in with_image]
            batch["region_boxes"] = region_boxes_tensor(boxes)  # (I, K, 4), one row per image
        return batch

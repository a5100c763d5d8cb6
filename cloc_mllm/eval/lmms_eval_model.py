"""lmms-eval model ``cloc_llava``: any LLaVA that ``finetune/train.py`` saves, scored by lmms-eval.

lmms-eval finds it through the ``lmms_eval.models`` entry point in pyproject.toml (:func:`manifest`),
so with both packages installed ``lmms-eval --model cloc_llava --model_args pretrained=DIR --tasks ...``
runs it: CLIP or CLOC tower, plain ``llava`` or ``cloc_llava`` weights, or a LoRA dir, all through
:func:`~cloc_mllm.mllm.inference.load_mllm`. Only lmms-eval imports this module.

Prompts. lmms-eval's RefCOCO REC tasks (``refcoco*_bbox_rec_*``) ask for "floating point numbers
bounded between 0 and 1 ... the region this sentence describes: EXPR"; our models were trained on
"Where is EXPR?" answered with Ferret's 0-999 integers. With ``prompt=native`` (default) the expression
is asked the way the model was trained and the first box of the answer comes back as 0-1 floats, the
task's format, so lmms-eval scores exactly what ``eval/run.py`` scores (docs/evaluation.md). With
``prompt=verbatim``, or for any other task's prompt, the prompt goes in as it is and the answer comes
back untouched (0-999 boxes, Ferret's format).
"""

from __future__ import annotations

import re

import numpy as np
from lmms_eval.api.model import lmms

from cloc_mllm.box_text import parse_boxes
from cloc_mllm.eval.mllm_grounding import GROUNDING_PROMPT
from cloc_mllm.mllm.instruct_builders import grounding_prompt

MODEL_ID = "cloc_llava"
# The instruction of lmms-eval's refcoco*_bbox_rec tasks (tasks/refcoco*/utils_rec.py), up to EXPR.
_REC_PROMPT = re.compile(
    r"bounded between 0 and 1\..*the region this sentence describes:\s*(?P<expr>.+)\Z", re.S
)
PROMPT_MODES = ("native", "verbatim")


def manifest():
    """The entry point's payload: lmms-eval's registry record for this model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.ClocLlava")


def unit_box_text(box) -> str:
    """``[x1, y1, x2, y2]`` as shortest exact decimals: lmms-eval's parser reads no exponent, and the
    exact value keeps its IoU equal to ours to the last bit."""
    return "[" + ", ".join(np.format_float_positional(float(v), trim="0") for v in box) + "]"


def native_request(context: str, question: str = GROUNDING_PROMPT) -> str | None:
    """The trained grounding question for a REC task prompt, or None for any other prompt."""
    match = _REC_PROMPT.search(context.strip())
    return grounding_prompt(match.group("expr").strip(), question) if match else None


class ClocLlava(lmms):
    """Greedy answers in batches; ``generate_until`` only (REC and VQA-style tasks)."""

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        batch_size: int | str = 8,
        max_new_tokens: int | str = 32,
        prompt: str = "native",
        question: str = GROUNDING_PROMPT,
        **lmms_eval_settings,  # what lmms-eval passes every model (max_batch_size, ...); not needed here
    ) -> None:
        super().__init__()
        from cloc_mllm.mllm.inference import load_mllm

        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt={prompt!r}: expected one of {PROMPT_MODES}")
        self.model, self.processor = load_mllm(pretrained, device=device)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.prompt, self.question = prompt, question

    @property
    def device(self):
        return self.model.device

    def _prepare(self, request) -> tuple:
        """(image, prompt for the model, REC?) for one lmms-eval ``Instance``."""
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if not visuals or len(visuals) != 1:
            raise ValueError(f"{task}: cloc_llava answers about exactly one image, got {len(visuals or [])}")
        native = native_request(context, self.question) if self.prompt == "native" else None
        return visuals[0], native or context, native is not None

    def generate_until(self, requests) -> list[str]:
        from cloc_mllm.mllm.inference import generate_answers

        answers: list[str] = [""] * len(requests)
        groups: dict[tuple, list[int]] = {}  # same generation settings -> one batched call
        for i, request in enumerate(requests):
            kwargs = request.args[1] or {}
            until = kwargs.get("until") or []
            key = (
                int(kwargs.get("max_new_tokens", self.max_new_tokens)),
                tuple([until] if isinstance(until, str) else until),
            )
            groups.setdefault(key, []).append(i)
        for (max_new_tokens, until), indices in groups.items():
            prepared = [self._prepare(requests[i]) for i in indices]
            texts = generate_answers(
                self.model, self.processor, [p[0] for p in prepared], [p[1] for p in prepared],
                max_new_tokens=max_new_tokens, batch_size=self.batch_size,
            )  # fmt: skip
            for i, (image, _, rec), text in zip(indices, prepared, texts, strict=True):
                for stop in until:
                    text = text.split(stop)[0]
                if rec:
                    boxes = parse_boxes(text, image_size=image.size)
                    text = unit_box_text(boxes[0]) if boxes else text
                answers[i] = text
                self.cache_hook.add_partial(
                    "generate_until", (requests[i].args[0], requests[i].args[1]), text
                )
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("cloc_llava answers generate_until tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("cloc_llava answers single-round generate_until tasks only")

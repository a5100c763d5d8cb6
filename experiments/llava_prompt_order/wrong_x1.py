"""Is y1 read from the image on its own, or found through the true x1 the answer already holds?

Under teacher forcing a box answer's y1 follows the *true* x1: given the question and x1, the object
is the one in that column, a lookup by place instead of by description. This scores the val records
twice per LLaVA with their own image, once as they are and once with x1 replaced by another record's
x1 (a different hundreds digit); the rise of y1's loss is what y1 owed to the true x1.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
from pathlib import Path

from cloc_mllm.eval.digit_gain import digit_losses
from cloc_mllm.mllm.inference import load_mllm
from experiments.llava_prompt_order.digit_loss import llava_records_parser

_BOX = re.compile(r"^\[(\d+), (\d+), (\d+), (\d+)\]$")


def with_wrong_x1(records: list[dict], seed: int = 0) -> list[dict]:
    """Each record's box answer with x1 from another record whose x1 has another hundreds digit (and
    still lies left of this box's x2, so the answer remains a valid box)."""
    boxes = [list(map(int, _BOX.match(r["conversations"][1]["value"]).groups())) for r in records]
    rng = random.Random(seed)
    out = []
    for record, box in zip(records, boxes, strict=True):
        # a box whose x2 lies in the first tenth has no such donor: it keeps its x1 (and is counted)
        donors = [b[0] for b in boxes if b[0] // 100 != box[0] // 100 and b[0] < box[2]]
        x1 = rng.choice(donors) if donors else box[0]
        turns = [record["conversations"][0], {"from": "gpt", "value": f"[{x1}, {box[1]}, {box[2]}, {box[3]}]"}]
        out.append({**record, "conversations": turns})
    return out


def main() -> None:
    args = llava_records_parser(__doc__.split("\n\n")[0]).parse_args()
    records = json.loads(Path(args.data).read_text())
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        wrong = Path(scratch) / "wrong_x1.json"
        wrong.write_text(json.dumps(with_wrong_x1(records)))
        for path in args.llava:
            model, processor = load_mllm(path, device="cpu")
            results[path] = {
                variant: digit_losses(model, processor, data, Path(args.image_folder), args.limit)
                for variant, data in (("true_x1", Path(args.data)), ("wrong_x1", wrong))
            }
    Path(args.out).write_text(json.dumps(results, indent=1))
    for path, result in results.items():
        print(path)
        for name in result["true_x1"]["digits"]:
            true, wrong_row = result["true_x1"]["digits"][name], result["wrong_x1"]["digits"][name]
            print(
                f"  {name:12s} true x1: own {true['own']:.3f} gain {true['other'] - true['own']:+.3f}   "
                f"wrong x1: own {wrong_row['own']:.3f} gain {wrong_row['other'] - wrong_row['own']:+.3f}"
            )


if __name__ == "__main__":
    main()

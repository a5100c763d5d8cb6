"""Re-score the pointing of finished ``--point_cell`` variants with today's evaluation
(``cloc_mllm.eval.mllm_grounding.pointing_scores``).

Generation is greedy, so the answers are those of the first scoring (the check below says so when
the older scores are kept); only the pointing figures are recomputed and written back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloc_mllm.eval.benchmarks import load_grounding_benchmarks
from cloc_mllm.eval.mllm_grounding import evaluate_mllm_grounding
from cloc_mllm.mllm.inference import load_mllm
from cloc_mllm.mllm.instruct_builders import GROUNDING_QUESTIONS
from cloc_mllm.mllm.templates import IMAGE_TOKEN
from experiments.llava_prompt_order.run import read_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the main-job run the variants were trained from")
    parser.add_argument("--out", required=True, help="the study's output directory (summary.json)")
    args = parser.parse_args()
    run, out = Path(args.run), Path(args.out)
    summary = read_summary(out / "summary.json")
    for key, result in summary["results"].items():
        options = result["args"]
        if not options.get("point_cell"):
            continue
        names = [n for n in options["benchmarks"].split(",") if n]
        benchmarks, _ = load_grounding_benchmarks(run / "world" / "refer", None, names, limit=options["eval_limit"])
        order = key.split("/")[1]
        template = GROUNDING_QUESTIONS[0] + (f"\n{IMAGE_TOKEN}" if order == "question_first" else "")
        llava = out / f"llava_{key.replace('/', '_')}"
        for step, scores in sorted(result["val"].items()):
            path = llava if step == options["finetune_steps"] else llava / f"checkpoint-{step}"
            model, processor = load_mllm(path)
            metrics, _ = evaluate_mllm_grounding(model, processor, benchmarks, prompt=template)
            for bench in benchmarks:
                new = metrics[bench.name]["pointing"]
                old = scores["metrics"][bench.name]["pointing"]
                if (old["named"], old["right_cell"]) != (new["named"], new["right_cell"]):
                    raise SystemExit(f"{key} step {step} {bench.name}: answers differ from the first scoring")
                scores["metrics"][bench.name]["pointing"] = new
            print(key, step, {b.name: scores["metrics"][b.name]["pointing"] for b in benchmarks})
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

import pytest

import cloc_mllm.mllm.inference as inference
from cloc_mllm.box_text import format_box
from cloc_mllm.eval.benchmarks import GroundingBenchmark, load_grounding_benchmarks, region_targets
from cloc_mllm.eval.metrics import noun_match
from cloc_mllm.eval.referring import evaluate_referring
from tests.eval_helpers import make_world


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("world"))
    return load_grounding_benchmarks(world / "refer", None, ["refcoco_val"])[0][0]


@pytest.mark.parametrize("use_regions", [False, True])
def test_referring_prompts_and_scores(bench, monkeypatch, use_regions):
    targets = region_targets(bench)[0][:3]
    keep = {t.key for t in targets}
    bench = GroundingBenchmark(bench.name, [i for i in bench.items if i.target in keep], ("any",))
    norm = [
        (t.box[0] / t.width, t.box[1] / t.height, t.box[2] / t.width, t.box[3] / t.height) for t in targets
    ]
    replies = [targets[0].references[0].upper() + ".", f"a big {targets[1].noun}s thing", ""]
    asked = []

    def fake_generate(model, processor, images, prompts, max_new_tokens, batch_size, regions=None):
        answers = []
        for k, prompt in enumerate(prompts):
            box = tuple(regions[k][0]) if use_regions else None
            asked.append(prompt)
            hit = [
                i
                for i, b in enumerate(norm)
                if format_box(b) in prompt and (not use_regions or box == pytest.approx(b))
            ]
            answers.append(replies[hit[0]])
        return answers

    monkeypatch.setattr(inference, "generate_answers", fake_generate)
    metrics, rows = evaluate_referring(None, None, [bench], batch_size=2, use_regions=use_regions)
    m = metrics[bench.name]
    assert m["exact"] == pytest.approx(1 / 3)
    assert m["noun"] == pytest.approx((noun_match(replies[0], targets[0].noun) + 1) / 3)  # plural noun counts
    assert m["counts"] == {"targets": 3, "status_empty_answer": 1, "status_ok": 2}
    assert "cider" in m and m["n"] == 3
    # the training data's mention: the text box, then the region token for a Ferret* model
    expected = {f"What is in {format_box(b)}{' <region>' if use_regions else ''}?" for b in norm}
    assert set(asked) == expected

import json

from cloc_mllm.pipeline.stages import final_checkpoint
from experiments.grounding_cells.run import main


def test_each_cell_size_trains_its_own_tower_and_is_scored_on_val(tmp_path):
    from cloc_mllm.data.synthetic import SyntheticWorldConfig, write_world

    world = tmp_path / "world"
    write_world(world, SyntheticWorldConfig(seed=0, num_train=40, num_val=12, num_test=4))
    out = tmp_path / "out"
    main(["--world", str(world), "--out", str(out), "--profile", "ci", "--pretrain_steps", "2",
          "--cell_sizes", "2,1", "--benchmarks", "refcoco_val"])  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    for cell_size in (1, 2):
        row = summary[f"cell_size_{cell_size}"]
        assert list(row["grounding"]) == ["refcoco_val"]  # the val split only
        assert 0.0 <= row["refcoco_mean_acc@0.5"] <= 1.0 and row["pretrain_s"] > 0
        checkpoint = final_checkpoint(out / f"cells_{cell_size}" / "pretrain")
        config = json.loads((checkpoint / "config.json").read_text())
        assert config["prompter_config"]["grounding_cell_size"] == cell_size
        results = json.loads((out / f"cells_{cell_size}" / "eval" / "results.json").read_text())
        assert results["config"]["coco_split"] == "val"

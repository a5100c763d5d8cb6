"""The main job: synthetic world -> CLOC and CLIP pretraining -> LLaVA finetuning -> evaluation -> report."""

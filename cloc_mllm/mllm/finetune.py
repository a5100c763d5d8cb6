"""The finetuning command as a module, for an installed package and any launcher:
``python -m cloc_mllm.mllm.finetune ...`` or ``deepspeed --module cloc_mllm.mllm.finetune ...``
(``finetune/train.py`` in a checkout). A module of its own, so that ``training`` is never also
``__main__``."""

from cloc_mllm.mllm.training import main

if __name__ == "__main__":
    main()

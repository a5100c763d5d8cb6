"""Make the synthetic world in every format (docs/synthetic_world.md).

    python scripts/make_synthetic.py --out data/world --seed 0 --num-train 2000 --formats all
    cloc-mllm make-synthetic --out data/world ...          # the same parser

Every field of ``SyntheticWorldConfig`` is a flag (``--image-size``, ``--clutter``, ``--colours red
green blue ...``); see ``--help``.
"""

from cloc_mllm.data.synthetic import main

if __name__ == "__main__":
    main()

"""Make the synthetic world in every format of DESIGN §4.

    python scripts/make_synthetic.py --out data/world --seed 0 --num-train 2000 --formats all

Every field of ``SyntheticWorldConfig`` is a flag (``--image-size``, ``--clutter``, ``--colours red
green blue ...``); see ``--help`` and docs/synthetic_world.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from cloc_mllm.data.synthetic import FORMATS, SyntheticWorldConfig, write_world


@dataclass
class OutputArguments:
    out: str = field(metadata={"help": "Directory to write the world into."})
    formats: list[str] = field(
        default_factory=lambda: ["all"], metadata={"help": f"'all' or some of {list(FORMATS)}."}
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((OutputArguments, SyntheticWorldConfig))
    output, cfg = parser.parse_args_into_dataclasses(args=argv)
    formats = "all" if output.formats == ["all"] else output.formats
    manifest = write_world(output.out, cfg, formats)
    print(
        json.dumps(
            {"out": output.out, "splits": manifest["splits"], "formats": manifest["formats"]}, indent=1
        )
    )
    return manifest


if __name__ == "__main__":
    main()

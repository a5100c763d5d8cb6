"""Compare evaluation runs side by side (table + chart), e.g. CLIP vs CLOC:

python eval/compare.py results/clip results/cloc --out results/compare
"""

import argparse
import logging

from cloc_mllm.eval.compare import write_comparison


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="result directories written by eval/run.py")
    parser.add_argument("--out", default=None, help="output dir (default: <parent of the first run>/compare)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    out = args.out or f"{args.runs[0].rstrip('/')}/../compare"
    print(write_comparison(args.runs, out))


if __name__ == "__main__":
    main()

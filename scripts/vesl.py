"""Label images with region-text pseudo labels (VESL): caption -> noun phrases -> OWLv2 -> shards.

    python scripts/vesl.py --input 'images/{000..099}.tar' --output out/ \
        --captioner Salesforce/blip-image-captioning-large --detector google/owlv2-base-patch16-ensemble \
        --batch-size 16 [--num-workers 4 | --ray [--ray-address auto]]

Re-running skips finished shards. Every VeslConfig field is a flag; see --help and docs/vesl.md.
"""

from cloc_mllm.vesl.cli import main

if __name__ == "__main__":
    main()

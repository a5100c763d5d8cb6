"""The README's picture of the demo: serve it on a trained run and photograph it in headless Chromium.

    python -m cloc_mllm.demo.screenshot --run runs/quickstart --out docs/images/demo.png

The browser does what a person does: uploads one of the run's test images, clicks two corners around
an annotated object, asks for its nearest phrases, then grounds another object's class name.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cloc_mllm.demo import models as demo_models
from cloc_mllm.demo.app import build_app, launch
from cloc_mllm.demo.browser import DemoPage, free_port, headless_chromium

DEFAULT_OUT = "docs/images/demo.png"


def annotated_objects(run_dir: str | Path, image_path: str | Path) -> list[tuple[tuple[float, ...], str]]:
    """(pixel xyxy box, class name) of each object on one of the run's test images (its COCO file)."""
    from cloc_mllm.data.coco import load_coco_detection

    world = Path(run_dir) / "world"
    detection = load_coco_detection(
        world / "coco" / "annotations" / "instances_test.json", world / "coco" / "test"
    )
    name = Path(image_path).name
    return [(r.box, r.category) for r in detection.regions if Path(r.image_path).name == name]


def take_screenshot(
    models: demo_models.DemoModels,
    image_path: str | Path,
    box: Sequence[float],
    phrase: str,
    out: str | Path = DEFAULT_OUT,
    max_new_tokens: int = demo_models.MAX_NEW_TOKENS,
) -> Path:
    """Serve the page on a free localhost port, drive it, and save a PNG of the whole page."""
    port = free_port()
    page = build_app(models, max_new_tokens)
    allowed = [Path(p).parent for p in models.examples] + [Path(image_path).parent]
    launch(page, "127.0.0.1", port, allowed, block=False)
    driver = headless_chromium(width=1280, height=1200)
    try:
        browser = DemoPage(driver, f"http://127.0.0.1:{port}/", timeout=300).open()
        browser.upload(image_path)
        size = demo_models.read_image(image_path).size
        browser.click_corners([round(v) for v in box], size)
        browser.describe()
        browser.ground(phrase)
        return browser.screenshot(out)
    finally:
        driver.quit()
        page.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Screenshot the demo page on a trained run (headless Chromium)."
    )
    parser.add_argument(
        "--run", default=demo_models.DEFAULT_RUN, help="main job run dir (default %(default)s)"
    )
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--image", default=None, help="default: the run's first test image")
    parser.add_argument(
        "--box", default=None, help="x1,y1,x2,y2 pixels (default: its first annotated object)"
    )
    parser.add_argument("--phrase", default=None, help="default: the class of its second object")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    try:
        models = demo_models.load_demo(args.run, device=args.device)
        image = args.image or (models.examples[0] if models.examples else None)
        if image is None:
            raise demo_models.DemoError(f"{args.run}: no test images; pass --image")
        objects = annotated_objects(args.run, image) if not (args.box and args.phrase) else []
        box = [float(v) for v in args.box.split(",")] if args.box else objects[0][0]
        phrase = args.phrase or objects[min(1, len(objects) - 1)][1]
    except (demo_models.DemoError, IndexError, FileNotFoundError) as error:
        print(f"screenshot: {error}", file=sys.stderr)
        return 2
    print(
        f"screenshot: {image}, box {box}, phrase {phrase!r} -> {take_screenshot(models, image, box, phrase, args.out)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

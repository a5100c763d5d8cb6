"""The demo page (Gradio) and ``cloc-mllm demo``, which serves it on localhost.

    cloc-mllm demo                                  # the main job's runs/quickstart
    cloc-mllm demo --cloc runs/x/pretrain/cloc --llava-cloc runs/x/finetune/llava_cloc --port 7860

How a person gives a box: click two opposite corners on the "Draw a box" picture (each click is a
``select`` event with pixel coordinates), or type x1, y1, x2, y2 in pixels of the original image. The
page only wires components to :mod:`cloc_mllm.demo.models`; every answer comes from there. Nothing is
fetched from the network: analytics off, no share link, no server-side rendering, fonts bundled.
"""

# No ``from __future__ import annotations``: Gradio finds the ``gr.SelectData`` parameter of a handler by
# its evaluated annotation, and ``gr`` is imported inside build_app (``--help`` does not load Gradio).
import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cloc_mllm.demo import models as demo_models
from cloc_mllm.demo.models import DemoError, DemoModels

# Before gradio is imported: it reads these at import time.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLE = "CLOC: draw a box, ask for a box"
CSS = "#ground-json textarea, #describe-json textarea {font-family: monospace; font-size: 12px}"


def _explain(fn):
    """Turn a DemoError into the page's error message (a gr.Error), so no stack trace is shown."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DemoError as error:
            raise gr.Error(str(error)) from error

    return wrapper


def phrases_markdown(name: str, tower_result: dict) -> str:
    """One tower's nearest phrases (cosine score) and its LLaVA's referring answer, as a Markdown table."""
    rows = "\n".join(f"| {phrase} | {score:.3f} |" for phrase, score in tower_result["phrases"])
    answer = tower_result["llava_answer"]
    llava = "_no LLaVA on this tower_" if answer is None else f"LLaVA: **{answer or '(empty answer)'}**"
    return f"### {name}\n| nearest phrase | cosine |\n|---|---|\n{rows}\n\n{llava}"


def picture_label(tower) -> str:
    parts = ["grounding head (red)" if tower.grounding_head else "no grounding head"]
    parts.append("LLaVA (blue)" if tower.mllm is not None else "no LLaVA")
    return f"{tower.name}: {' · '.join(parts)}"


def towers_markdown(models: DemoModels) -> str:
    lines = [
        f"- **{t.name}** `{t.encoder_dir}`"
        + (f" + LLaVA `{t.mllm_dir}`" if t.mllm_dir else " (no LLaVA)")
        + ("" if t.grounding_head else " — no grounding head (CLIP): regions by RoIAlign over its tokens")
        for t in models.towers
    ]
    lines += [f"- _{note}_" for note in models.notes]
    return "\n".join(lines)


def build_app(models: DemoModels, max_new_tokens: int = demo_models.MAX_NEW_TOKENS):
    """The ``gr.Blocks`` page over loaded ``models``."""
    import gradio as gr

    names = [t.name for t in models.towers]

    @_explain
    def load_image(path):
        # -> (image path state, picker picture, first corner, x1, y1, x2, y2)
        if path is None:
            return None, None, None, None, None, None, None
        return str(path), demo_models.draw_box(path, None), None, None, None, None, None

    def pick_example(evt: gr.SelectData):
        return load_image(models.examples[evt.index])

    @_explain
    def click_corner(path, corner, evt: gr.SelectData):
        """First click: remember the corner; second: the box. Clicks are pixels of the enlarged picture."""
        if not path:
            raise DemoError("pick or upload an image first")
        size = demo_models.read_image(path).size
        scale = demo_models.display_image(demo_models.read_image(path)).width / size[0]
        point = [round(evt.index[0] / scale, 1), round(evt.index[1] / scale, 1)]
        if corner is None:
            tiny = [point[0], point[1], point[0] + 1, point[1] + 1]
            return point, demo_models.draw_box(path, demo_models.check_box(tiny, size)), *point, None, None
        box = demo_models.check_box([*corner, *point], size)
        return None, demo_models.draw_box(path, box), *box

    @_explain
    def show_box(path, x1, y1, x2, y2):
        return demo_models.draw_box(path, [x1, y1, x2, y2])

    @_explain
    def describe(path, x1, y1, x2, y2):
        result = demo_models.describe_box(models, path, [x1, y1, x2, y2], max_new_tokens=max_new_tokens)
        tables = [phrases_markdown(name, result["towers"][name]) for name in names]
        return demo_models.draw_box(path, result["box"]), *tables, json.dumps(result)

    @_explain
    def ground(path, phrase):
        result = demo_models.ground_phrase(models, path, phrase, max_new_tokens)
        pictures = [demo_models.draw_grounding(path, result["towers"][name]) for name in names]
        return *pictures, json.dumps(result)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        path = gr.State(None)  # the current image file
        corner = gr.State(None)  # the first clicked corner [x, y], until the second click
        gr.Markdown(f"# {TITLE}\n{towers_markdown(models)}")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Upload an image", file_types=["image"], type="filepath", elem_id="upload"
                )
                gallery = gr.Gallery(
                    value=models.examples or None,
                    label="…or pick an example (the run's test images)",
                    columns=4,
                    height=140,
                    allow_preview=False,
                    visible=bool(models.examples),
                    elem_id="examples",
                )
            with gr.Column(scale=1):
                picker = gr.Image(
                    label="Draw a box: click two opposite corners",
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id="picker",
                )
                with gr.Row():
                    coords = [
                        gr.Number(label=f"{name} (px)", precision=1, min_width=60, elem_id=f"box-{name}")
                        for name in ("x1", "y1", "x2", "y2")
                    ]
        gr.Markdown("## Box → nearest phrases (region embedding) and the LLaVA's answer")
        describe_button = gr.Button("Describe the box", variant="primary", elem_id="describe")
        with gr.Row():
            tables = [
                gr.Markdown(label=name, value=f"### {name}", elem_id=f"phrases-{name.lower()}")
                for name in names
            ]
        describe_json = gr.Textbox(
            label="box → phrases, as JSON", interactive=False, lines=2, elem_id="describe-json"
        )
        gr.Markdown("## Phrase → box: the grounding head (red) and the LLaVA's answer (blue)")
        with gr.Row():
            phrase = gr.Textbox(label="Phrase", placeholder="red circle", scale=4, elem_id="phrase")
            ground_button = gr.Button("Ground", variant="primary", scale=1, elem_id="ground")
        with gr.Row():
            drawn = [
                gr.Image(
                    label=picture_label(t),
                    type="pil",
                    format="png",
                    interactive=False,
                    elem_id=f"ground-{t.name.lower()}",
                )
                for t in models.towers
            ]
        ground_json = gr.Textbox(
            label="phrase → boxes, as JSON", interactive=False, lines=2, elem_id="ground-json"
        )

        loaded = [path, picker, corner, *coords]
        upload.change(load_image, upload, loaded)
        gallery.select(pick_example, None, loaded)
        picker.select(click_corner, [path, corner], [corner, picker, *coords])
        for number in coords:
            number.submit(show_box, [path, *coords], picker)
        describe_button.click(describe, [path, *coords], [picker, *tables, describe_json])
        ground_button.click(ground, [path, phrase], [*drawn, ground_json])
        phrase.submit(ground, [path, phrase], [*drawn, ground_json])
    return page


def launch(page, host: str, port: int, allowed: Sequence[str | Path] = (), block: bool = True):
    """Serve ``page`` on ``host:port`` with nothing reaching out: no share link, SSR, MCP or API page."""
    os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
    return page.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        mcp_server=False,
        show_error=True,
        inbrowser=False,
        prevent_thread_lock=not block,
        allowed_paths=[str(p) for p in allowed],
        footer_links=[],
        css=CSS,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the CLOC demo page: draw a box -> nearest phrases and the LLaVA's answer; "
        "type a phrase -> the grounding head's box and the LLaVA's box."
    )
    parser.add_argument("--run", default=demo_models.DEFAULT_RUN,
                        help="main job run dir: pretrain/{cloc,clip}, finetune/llava_{cloc,clip}, world/ (default %(default)s)")  # fmt: skip
    parser.add_argument(
        "--cloc", default=None, help="CLOC checkpoint or pretraining dir (default: RUN/pretrain/cloc)"
    )
    parser.add_argument(
        "--clip", default=None, help="CLIP baseline: CLOC-format CLIP-only run or HF CLIP dir"
    )
    parser.add_argument("--llava-cloc", "--llava_cloc", default=None, help="LLaVA on the CLOC tower")
    parser.add_argument("--llava-clip", "--llava_clip", default=None, help="LLaVA on the CLIP tower")
    parser.add_argument("--tokenizer", default=None, help="text tokenizer dir (default: the checkpoint's, else RUN/world/tokenizer)")  # fmt: skip
    parser.add_argument("--phrases", default=None, help="candidate phrases: a file (one a line) or a comma list (default: the world's classes)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--device", default=None, help="default: CUDA when present, else CPU")
    parser.add_argument("--image-mode", "--image_mode", default="resize", choices=("resize", "pad"))
    parser.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=demo_models.MAX_NEW_TOKENS)
    return parser.parse_args(argv)


def load_from_args(args: argparse.Namespace) -> DemoModels:
    run = args.run if args.run and Path(args.run).is_dir() else None
    explicit = any((args.cloc, args.clip))
    if run is None and not explicit:
        raise DemoError(
            f"{args.run}: no such run directory; run the main job first (cloc-mllm pipeline --profile quick "
            f"writes {demo_models.DEFAULT_RUN}) or pass --cloc DIR / --clip DIR"
        )
    return demo_models.load_demo(
        run,
        cloc=args.cloc,
        clip=args.clip,
        llava_cloc=args.llava_cloc,
        llava_clip=args.llava_clip,
        tokenizer=args.tokenizer,
        phrases=demo_models.read_phrases(args.phrases) if args.phrases else None,
        device=args.device,
        image_mode=args.image_mode,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = load_from_args(args)
    except DemoError as error:
        print(f"cloc-mllm demo: {error}", file=sys.stderr)
        return 2
    allowed = [Path(p).parent for p in models.examples]
    print(
        f"towers: {', '.join(t.name for t in models.towers)}; serving on http://{args.host}:{args.port}",
        flush=True,
    )
    launch(build_app(models, args.max_new_tokens), args.host, args.port, allowed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cloc-mllm demo``: its answers, its error messages, and the page driven in headless Chromium.

Tiny random models are built here from configs (seconds); the answers are meaningless but
deterministic, which is all the page needs: it must show exactly what the library computes.
"""

import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cloc_mllm.cli import main as cli_main
from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.demo import app
from cloc_mllm.demo import models as demo
from cloc_mllm.demo.browser import DemoPage, chromium_paths, free_port, headless_chromium, wait_for_page
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower
from tests.eval_helpers import tiny_cloc

MAX_NEW_TOKENS = 6
PHRASE = "red circle"
BOX = (10, 8, 40, 38)  # pixels of the 96 x 64 test image, around the red disc


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    texts = ["red circle", "blue square", "where is the red circle", "[1, 2, 3, 4]"]
    tok = train_world_tokenizer(texts, vocab_size=300)
    tiny_cloc(tok).save_pretrained(root / "cloc")
    tok.save_pretrained(root / "cloc")
    tower = write_tiny_tower(root / "tower")
    llm = write_tiny_llm(root / "llm", tok, hidden_size=32, num_layers=1)
    model, processor = build_llava(LlavaBuildArgs(str(tower), str(llm)))
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    image = Image.new("RGB", (96, 64), "white")
    ImageDraw.Draw(image).ellipse((10, 8, 40, 38), fill=(215, 35, 35))
    image.save(root / "scene.png")
    (root / "broken.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def loaded(files):
    """Both towers on the one tiny checkpoint (CLIP as the baseline reads it), a LLaVA on CLOC only."""
    return demo.load_demo(
        None, cloc=files / "cloc", clip=files / "cloc", llava_cloc=files / "llava", device="cpu"
    )


def test_box_gives_top5_phrases_per_tower_and_the_llava_answer(files, loaded):
    result = demo.describe_box(loaded, files / "scene.png", [40, 38, 10, 8], max_new_tokens=MAX_NEW_TOKENS)
    assert result["box"] == [10.0, 8.0, 40.0, 38.0]  # corners in any order
    assert result["image_size"] == [96, 64]
    for name in ("CLOC", "CLIP"):
        phrases = result["towers"][name]["phrases"]
        scores = [s for _, s in phrases]
        assert len(phrases) == 5 and scores == sorted(scores, reverse=True)
        assert {p for p, _ in phrases} <= set(loaded.phrases)
    assert isinstance(result["towers"]["CLOC"]["llava_answer"], str)
    assert result["towers"]["CLIP"]["llava_answer"] is None  # no LLaVA on that tower
    # the CLIP baseline's regions are RoIAlign over its tokens, CLOC's the Prompter's: different rankings
    assert result["towers"]["CLOC"]["phrases"] != result["towers"]["CLIP"]["phrases"]


def test_phrase_gives_the_head_box_and_the_llava_box(files, loaded):
    result = demo.ground_phrase(loaded, files / "scene.png", PHRASE, MAX_NEW_TOKENS)
    head = result["towers"]["CLOC"]["grounding_head"]
    assert len(head["box"]) == 4 and all(0.0 <= v <= 1.0 for v in head["box"])
    assert head["pixels"] == demo.to_pixels(head["box"], (96, 64))
    assert set(result["towers"]["CLOC"]["llava"]) == {"answer", "box", "pixels"}
    assert result["towers"]["CLIP"] == {"grounding_head": None, "llava": None}  # CLIP has no grounding head
    drawn = np.asarray(demo.draw_grounding(files / "scene.png", result["towers"]["CLOC"]))
    x1, y1, _, _ = demo.to_pixels(head["box"], (drawn.shape[1], drawn.shape[0]))
    assert tuple(drawn[min(y1 + 1, drawn.shape[0] - 1), min(x1 + 1, drawn.shape[1] - 1)]) == demo.HEAD_COLOUR


def test_a_run_directory_supplies_the_defaults(files, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(files / "cloc", run / "pretrain" / "cloc" / "checkpoints" / "step_00000080" / "model")
    shutil.copytree(files / "llava", run / "finetune" / "llava_cloc")
    models = demo.load_demo(run, device="cpu")
    (tower,) = models.towers
    assert tower.name == "CLOC" and tower.mllm is not None and tower.grounding_head
    assert tower.encoder_dir == run / "pretrain" / "cloc" / "checkpoints" / "step_00000080" / "model"
    assert any(note.startswith("CLIP:") for note in models.notes)
    assert "red circle" in models.phrases  # the world's classes when the run has no world.json


def test_clear_errors_for_missing_checkpoints_and_bad_images(files, loaded, tmp_path, capsys):
    with pytest.raises(demo.DemoError, match="no such directory"):
        demo.load_demo(None, cloc=tmp_path / "nowhere")
    with pytest.raises(demo.DemoError, match="no CLOC or CLIP checkpoint found under .*pretrain"):
        demo.load_demo(tmp_path)
    with pytest.raises(demo.DemoError, match="a LLaVA, not an encoder"):
        demo.load_tower("CLOC", files / "llava")
    with pytest.raises(demo.DemoError, match="broken.png: not a readable image"):
        demo.ground_phrase(loaded, files / "broken.png", PHRASE)
    with pytest.raises(demo.DemoError, match="pick or upload an image first"):
        demo.describe_box(loaded, None, BOX)
    with pytest.raises(demo.DemoError, match="is empty"):
        demo.describe_box(loaded, files / "scene.png", [5, 5, 5, 20])
    assert app.main(["--run", str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err
    assert "no_run: no such run directory" in err and "cloc-mllm pipeline" in err


def test_demo_is_a_cli_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["demo", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "cloc-mllm demo" in out and "--llava-cloc" in out and "--phrases" in out


def test_chromium_is_installed():
    """The browser test needs Debian's chromium + chromium-driver; missing ones fail here, never skip."""
    browser, driver = chromium_paths()
    assert subprocess.run([driver, "--version"], capture_output=True, timeout=60).returncode == 0, driver


@pytest.mark.slow
def test_the_page_in_headless_chromium_shows_the_library_answers(files, loaded):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cloc_mllm.cli", "demo", "--run", "", "--cloc", str(files / "cloc"),
         "--clip", str(files / "cloc"), "--llava-cloc", str(files / "llava"), "--device", "cpu",
         "--host", "127.0.0.1", "--port", str(port), "--max-new-tokens", str(MAX_NEW_TOKENS)],
    )  # fmt: skip
    driver = None
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, timeout=240, process=server)
        driver = headless_chromium()
        page = DemoPage(driver, url, timeout=120).open()

        # a bad file gets a readable message, not a stack trace
        page.send_file(files / "broken.png")
        page.wait_for_text("broken.png: not a readable image")

        page.upload(files / "scene.png")
        page.click_corners(BOX, (96, 64))
        fields = page.box_fields()
        assert fields == pytest.approx(BOX, abs=1.0)  # clicks land on the intended pixels

        described = page.describe()
        assert described == demo.describe_box(
            loaded, files / "scene.png", fields, max_new_tokens=MAX_NEW_TOKENS
        )

        grounded = page.ground(PHRASE)
        expected = demo.ground_phrase(loaded, files / "scene.png", PHRASE, MAX_NEW_TOKENS)
        assert grounded == expected
        shown = np.asarray(Image.open(io.BytesIO(page.drawn_image("CLOC"))).convert("RGB"))
        drawn = np.asarray(demo.draw_grounding(files / "scene.png", expected["towers"]["CLOC"]))
        assert np.array_equal(shown, drawn)  # the picture is the library's drawing of that box
        assert not np.array_equal(shown, np.asarray(demo.display_image(Image.open(files / "scene.png"))))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)

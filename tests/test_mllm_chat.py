import numpy as np
import pytest
from PIL import Image

from cloc_mllm.data.tokenizer import train_world_tokenizer
from cloc_mllm.mllm import chat
from cloc_mllm.mllm.builder import LlavaBuildArgs, build_llava
from cloc_mllm.mllm.tiny import write_tiny_llm, write_tiny_tower


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    tok = train_world_tokenizer(["where is the red circle", "[1, 2, 3, 4]"], vocab_size=300)
    model, processor = build_llava(
        LlavaBuildArgs(str(write_tiny_tower(root / "t")), str(write_tiny_llm(root / "l", tok)))
    )
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    Image.new("RGB", (200, 100), "white").save(root / "x.jpg")
    return root


def test_chat_runs_the_model_end_to_end(setup, capsys):
    chat.main(["--model", str(setup / "model"), "--image", str(setup / "x.jpg"), "--prompt", "where is the red circle?",
               "--max_new_tokens", "4"])  # fmt: skip
    assert capsys.readouterr().out.strip()  # the (untrained) answer is printed


def test_chat_prints_and_draws_the_answer_boxes(setup, capsys, monkeypatch):
    monkeypatch.setattr(chat, "generate_answers", lambda *a, **k: ["it is at [100, 200, 300, 400]."])
    chat.main(["--model", str(setup / "model"), "--image", str(setup / "x.jpg"), "--prompt", "where?",
               "--draw", str(setup / "drawn.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert "it is at [100, 200, 300, 400]." in out and "(pixels) [20, 20, 60, 40]" in out
    drawn = np.asarray(Image.open(setup / "drawn.png"))
    outline = np.argwhere((drawn != 255).any(-1))
    assert outline[:, 1].min() == 20 and outline[:, 1].max() <= 60 and outline[:, 0].max() <= 40

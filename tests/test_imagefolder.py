from collections import Counter

import pytest

from cloc_mllm.data.imagefolder import load_image_folder


def test_image_folder_labels_and_classnames(tmp_path):
    for folder, files in {"n02": ["b.png", "a.jpg"], "n01": ["x.JPEG", "notes.txt"]}.items():
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_bytes(b"")
    stats = Counter()
    plain = load_image_folder(tmp_path, stats=stats)
    assert stats == Counter(not_an_image=1)
    assert plain.classnames == ["n01", "n02"]
    assert [(p.rsplit("/", 1)[-1], label) for p, label in ((i.image_path, i.label) for i in plain.items)] == [
        ("x.JPEG", 0),
        ("a.jpg", 1),
        ("b.png", 1),
    ]
    (tmp_path / "classnames.txt").write_text("n01\tgold fish\nn02 great white shark\n")
    assert load_image_folder(tmp_path).classnames == ["gold fish", "great white shark"]
    (tmp_path / "classnames.txt").write_text("n01\tgold fish\n")
    with pytest.raises(ValueError, match=r"classnames.txt.*n02"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "absent")

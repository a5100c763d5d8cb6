import logging
from collections import Counter

import pytest

from cloc_mllm.data.flickr30k import load_flickr30k_entities, parse_sentence

XML = """<annotation><filename>{id}.jpg</filename>
<size><width>500</width><height>375</height><depth>3</depth></size>
<object><name>1</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>100</xmax><ymax>200</ymax></bndbox></object>
<object><name>1</name><bndbox><xmin>201</xmin><ymin>11</ymin><xmax>300</xmax><ymax>200</ymax></bndbox></object>
<object><name>2</name><name>3</name><bndbox><xmin>51</xmin><ymin>51</ymin><xmax>60</xmax><ymax>70</ymax></bndbox></object>
<object><name>4</name><nobndbox>1</nobndbox><scene>0</scene></object>
<object><name>5</name><nobndbox>1</nobndbox><scene>1</scene></object>
<object><name>6</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>9</xmax><ymax>20</ymax></bndbox></object>
</annotation>"""

SENTENCES = [
    "[/EN#1/people Two men] hold [/EN#2/other a ball] in [/EN#5/scene the park] .",
    "[/EN#3/other The ball] is near [/EN#4/bodyparts his hand] and [/EN#6/other a stick] [/EN#0/notvisual today] .",
]


def write_flickr(root, ids=("1000",), split="test"):
    (root / "Annotations").mkdir(parents=True)
    (root / "Sentences").mkdir()
    for image_id in ids:
        (root / "Annotations" / f"{image_id}.xml").write_text(XML.format(id=image_id))
        (root / "Sentences" / f"{image_id}.txt").write_text("\n".join(SENTENCES) + "\n")
    (root / f"{split}.txt").write_text("\n".join([*ids, "missing"]) + "\n")
    return root


def test_parse_sentence():
    plain, phrases = parse_sentence("[/EN#12/people/other A tall man] runs [/EN#0/notvisual now] .")
    assert plain == "A tall man runs now ."
    assert phrases == [("12", "people/other", "A tall man"), ("0", "notvisual", "now")]


def test_load_flickr_records_boxes_and_counts(tmp_path, caplog):
    write_flickr(tmp_path)
    stats = Counter()
    with caplog.at_level(logging.INFO, logger="cloc_mllm.data.flickr30k"):
        items = load_flickr30k_entities(tmp_path, "test", stats=stats)
    assert [(r.sentence_index, r.phrase_id, r.phrase) for r in items] == [
        (0, "1", "Two men"),
        (0, "2", "a ball"),
        (1, "3", "The ball"),
    ]
    men = items[0]
    # all four numbers minus 1, as the dataset's reader; both boxes of the phrase kept in order
    assert men.boxes == [(0.0, 10.0, 99.0, 199.0), (200.0, 10.0, 299.0, 199.0)]
    assert items[1].boxes == items[2].boxes == [(50.0, 50.0, 59.0, 69.0)]  # one box, two phrase ids
    assert men.sentence == "Two men hold a ball in the park ."
    assert men.phrase_type == "people" and (men.width, men.height) == (500, 375)
    assert men.image_path == str(tmp_path / "flickr30k-images" / "1000.jpg")
    assert stats["phrase_scene"] == 1 and stats["phrase_no_box"] == 1
    assert stats["phrase_not_annotated"] == 1 and stats["zero_area_box"] == 1
    assert stats["phrase_only_zero_area_boxes"] == 1
    assert stats["missing_annotation_or_sentences"] == 1
    assert "flickr30k_entities test: 2 images, 2 sentences, 3 phrases with boxes, 4 boxes" in caplog.text
    assert "official split has 1000 images" in caplog.text


def test_flickr_image_dir_and_missing_split(tmp_path):
    write_flickr(tmp_path, split="val")
    (tmp_path / "images").mkdir()
    items = load_flickr30k_entities(tmp_path, "val")
    assert items[0].image_path == str(tmp_path / "images" / "1000.jpg")
    items = load_flickr30k_entities(tmp_path, "val", image_dir=tmp_path / "elsewhere")
    assert items[0].image_path == str(tmp_path / "elsewhere" / "1000.jpg")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        load_flickr30k_entities(tmp_path, "test")

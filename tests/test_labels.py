"""Label sets: Oxford 102 names, reading label files and folders, display-name fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier.labels import LabelSet, LabelSetError, normalize_language


def test_oxford102_has_102_named_classes():
    labels = LabelSet.oxford102()

    assert len(labels) == 102
    assert labels.languages == ("en", "zh")
    for index in range(102):
        assert labels.names["en"][index].strip(), f"class {index} has no English name"
        assert labels.names["zh"][index].strip(), f"class {index} has no Chinese name"
    assert len(set(labels.class_ids)) == 102
    assert len(set(labels.names["en"])) == 102
    assert len(set(labels.names["zh"])) == 102


def test_oxford102_order_matches_torchvision():
    labels = LabelSet.oxford102()

    assert labels.class_ids[0] == "pink primrose"
    assert labels.class_ids[1] == "hard-leaved pocket orchid"
    assert labels.class_ids[53] == "sunflower"
    assert labels.class_ids[73] == "rose"
    assert labels.class_ids[101] == "blackberry lily"
    assert labels.display_name(53, "zh") == "向日葵"
    assert labels.display_name(73, "zh") == "玫瑰"

    flowers102 = pytest.importorskip("torchvision.datasets").Flowers102
    # torchvision writes label 59 as "pink-yellow dahlia?"; the label set drops the question mark.
    assert list(labels.class_ids) == [name.rstrip("?") for name in flowers102.classes]


def test_chinese_names_contain_han_characters():
    labels = LabelSet.oxford102()

    for index, name in enumerate(labels.names["zh"]):
        assert any("\u4e00" <= char <= "\u9fff" for char in name), f"class {index} Chinese name {name!r}"


def test_text_file_skips_blanks_and_comments(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("\ufeff# my flowers\nsunflowers\n\n  daisy  \nmystery bloom\n", encoding="utf-8")

    labels = LabelSet.from_path(path)

    assert labels.class_ids == ("sunflowers", "daisy", "mystery bloom")
    assert labels.display_name(0, "zh") == "向日葵"
    assert labels.display_name(1, "zh") == "雏菊"
    # Unknown in Chinese: falls back to the English name.
    assert labels.display_name(2, "zh") == "mystery bloom"
    assert labels.display_name(2, "en") == "mystery bloom"


def test_text_file_with_duplicates_is_rejected(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("rose\ntulip\nrose\n", encoding="utf-8")

    with pytest.raises(LabelSetError, match="duplicate class ids.*rose"):
        LabelSet.from_path(path)


def test_empty_text_file_is_rejected(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("# nothing here\n\n", encoding="utf-8")

    with pytest.raises(LabelSetError, match="no class names"):
        LabelSet.from_path(path)


def test_missing_path_is_rejected(tmp_path: Path):
    with pytest.raises(LabelSetError, match="not found"):
        LabelSet.from_path(tmp_path / "absent.txt")


def test_image_folder_uses_train_subfolder(tmp_path: Path):
    for split, classes in (("train", ["tulips", "daisy", "odd_flower"]), ("val", ["only_in_val"])):
        for name in classes:
            (tmp_path / split / name).mkdir(parents=True)

    labels = LabelSet.from_path(tmp_path)

    assert labels.class_ids == ("daisy", "odd_flower", "tulips")
    assert labels.display_name(1, "en") == "odd flower"
    assert labels.display_name(0, "zh") == "雏菊"
    assert labels.display_name(1, "zh") == "odd flower"
    assert labels.display_name(2, "zh") == "郁金香"


def test_image_folder_without_subfolders_is_rejected(tmp_path: Path):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")

    with pytest.raises(LabelSetError, match="own subfolder"):
        LabelSet.from_path(tmp_path)


def test_flowers5_folder_has_chinese_names(flowers5_dir: Path):
    labels = LabelSet.from_path(flowers5_dir)

    assert labels.class_ids == ("daisy", "dandelion", "roses", "sunflowers", "tulips")
    assert labels.display_names("zh") == ["雏菊", "蒲公英", "玫瑰", "向日葵", "郁金香"]


def test_dict_round_trip_keeps_names():
    labels = LabelSet.oxford102()

    restored = LabelSet.from_dict(json.loads(json.dumps(labels.to_dict(), ensure_ascii=False)))

    assert restored == labels
    assert hash(restored) == hash(labels)


def test_json_file_forms(tmp_path: Path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["rose", "lotus"]), encoding="utf-8")
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"classes": [{"id": "a", "zh": "甲"}, {"id": "b", "en": "Bee", "zh": "乙"}]}), encoding="utf-8")

    plain_labels = LabelSet.from_path(plain)
    flat_labels = LabelSet.from_path(flat)

    assert plain_labels.display_names("zh") == ["玫瑰", "荷花"]
    assert flat_labels.display_names("zh") == ["甲", "乙"]
    # Class "a" has only a Chinese name, so English falls back to it.
    assert flat_labels.display_names("en") == ["甲", "Bee"]


def test_invalid_json_is_rejected(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")

    with pytest.raises(LabelSetError, match="not valid JSON"):
        LabelSet.from_path(path)


def test_single_language_set_falls_back():
    labels = LabelSet(class_ids=("x", "y"), names={"zh": ("某花", "另一种花")})

    assert labels.display_name(0, "en") == "某花"
    assert labels.display_name(0, "zh-hans") == "某花"
    with pytest.raises(IndexError):
        labels.display_name(2, "en")


def test_one_class_set_is_rejected(tmp_path: Path):
    path = tmp_path / "one.txt"
    path.write_text("rose\n", encoding="utf-8")

    with pytest.raises(LabelSetError, match="at least 2 classes, got 1: rose"):
        LabelSet.from_path(path)
    with pytest.raises(LabelSetError, match="at least 2 classes"):
        LabelSet.from_names(["rose"])
    with pytest.raises(LabelSetError, match="at least 2 classes"):
        LabelSet.from_dict({"classes": [{"id": "rose"}]})
    with pytest.raises(LabelSetError, match="at least 2 classes, got 0"):
        LabelSet(class_ids=(), names={})


def test_one_class_folder_is_rejected(tmp_path: Path):
    (tmp_path / "train" / "roses").mkdir(parents=True)

    with pytest.raises(LabelSetError, match="at least 2 classes"):
        LabelSet.from_path(tmp_path)


@pytest.mark.parametrize(
    "names",
    [["Rose", "tulip", "rose"], ["rose", " ROSE "], ["Daisy", "DAISY"]],
    ids=["case", "case and spaces", "upper"],
)
def test_near_duplicate_class_ids_are_rejected(names: list[str]):
    first, second = (name for name in names if name.strip().lower() == names[-1].strip().lower())

    with pytest.raises(LabelSetError, match="differ only in case") as caught:
        LabelSet(class_ids=tuple(names), names={})

    assert repr(first) in str(caught.value)
    assert repr(second) in str(caught.value)


def test_near_duplicate_in_text_file_is_rejected(tmp_path: Path):
    path = tmp_path / "classes.txt"
    path.write_text("Rose\ntulip\nrose\n", encoding="utf-8")

    with pytest.raises(LabelSetError, match="'Rose' and 'rose'"):
        LabelSet.from_path(path)


def test_language_tags_are_normalized():
    assert normalize_language("zh-hans") == "zh"
    assert normalize_language("zh_TW") == "zh"
    assert normalize_language("en-US") == "en"
    assert normalize_language(None) == "en"


def test_index_of_unknown_class_raises():
    labels = LabelSet.from_names(["rose", "tulip"])

    assert labels.index_of("tulip") == 1
    with pytest.raises(KeyError, match="lily"):
        labels.index_of("lily")


def test_oxford102_carries_aliases():
    labels = LabelSet.oxford102()
    rose = labels.index_of("rose")

    assert labels.aliases["zh"][rose] == ("月季",)
    assert labels.aliases_of(labels.index_of("frangipani")) == ("plumeria", "缅栀子")
    assert labels.aliases_of(labels.index_of("pink primrose")) == ()
    # Aliases are searched, never shown.
    assert labels.display_name(rose, "zh") == "玫瑰"


def test_aliases_survive_dict_round_trip():
    labels = LabelSet.from_dict(
        {"classes": [{"id": "rose", "names": {"zh": "玫瑰"}, "aliases": {"zh-hans": ["月季", " 月季 ", ""]}}, {"id": "tulip"}]}
    )

    assert dict(labels.aliases) == {"zh": (("月季",), ())}
    document = labels.to_dict()
    assert document["classes"][0]["aliases"] == {"zh": ["月季"]}
    assert "aliases" not in document["classes"][1]
    restored = LabelSet.from_dict(json.loads(json.dumps(document, ensure_ascii=False)))
    assert restored == labels
    assert hash(restored) == hash(labels)


def test_aliases_change_equality():
    plain = LabelSet.from_dict({"classes": ["rose", "tulip"]})
    aliased = LabelSet.from_dict({"classes": [{"id": "rose", "aliases": {"zh": ["月季"]}}, "tulip"]})

    assert plain != aliased
    assert plain.matches(aliased)


@pytest.mark.parametrize("aliases", [["月季"], {"zh": "月季"}, {"zh": [1]}], ids=["list", "string", "number"])
def test_malformed_aliases_are_rejected(aliases):
    with pytest.raises(LabelSetError, match="class entry 0"):
        LabelSet.from_dict({"classes": [{"id": "rose", "aliases": aliases}, "tulip"]})


def test_folder_names_get_known_aliases():
    labels = LabelSet.from_names(["daisy", "roses", "Rose_Bush"])

    assert labels.aliases_of(0) == ()
    # "roses" is the plural of the Oxford 102 class "rose".
    assert labels.aliases_of(1) == ("月季",)
    assert labels.aliases_of(2) == ()

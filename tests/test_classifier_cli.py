"""`python -m classifier`: new-bundle and info."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from classifier.__main__ import main
from classifier.bundle import Bundle

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_new_bundle_from_text_file(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    classes = tmp_path / "classes.txt"
    classes.write_text("sunflowers\ntulips\nmystery\n", encoding="utf-8")

    code = main(["new-bundle", "--classes", str(classes), "--out", str(tmp_path / "bundle"), "--seed", "3"])

    assert code == 0
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.labels.class_ids == ("sunflowers", "tulips", "mystery")
    assert bundle.labels.display_name(0, "zh") == "向日葵"
    assert bundle.recipe["seed"] == 3
    assert bundle.version in capsys.readouterr().out

    assert main(["info", str(tmp_path / "bundle")]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == bundle.version


def test_new_bundle_oxford102(tmp_path: Path):
    pytest.importorskip("torch")

    code = main(["new-bundle", "--classes", "oxford102", "--out", str(tmp_path / "oxford")])

    assert code == 0
    bundle = Bundle.load(tmp_path / "oxford")
    assert bundle.num_classes == 102
    assert bundle.state_dict()["classifier.2.weight"].shape == (102, 768)


def test_missing_classes_path_is_one_line(tmp_path: Path, capsys):
    code = main(["new-bundle", "--classes", str(tmp_path / "absent.txt"), "--out", str(tmp_path / "bundle")])

    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1
    assert "label path not found" in error
    assert "absent.txt" in error
    assert not (tmp_path / "bundle").exists()


def test_empty_class_folder_is_one_line(tmp_path: Path, capsys):
    (tmp_path / "photos").mkdir()

    code = main(["new-bundle", "--classes", str(tmp_path / "photos"), "--out", str(tmp_path / "bundle")])

    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: no class subfolders")


def test_info_on_missing_bundle(tmp_path: Path, capsys):
    code = main(["info", str(tmp_path / "nothing")])

    assert code == 2
    assert "new-bundle" in capsys.readouterr().err


def test_help_states_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "classifier", "new-bundle", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0
    assert "--classes" in result.stdout
    assert "default: 0" in result.stdout

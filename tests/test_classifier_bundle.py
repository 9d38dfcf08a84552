"""Model bundles: save and load, atomic replacement, random bundles, and errors for broken bundles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from classifier.bundle import Bundle, BundleError, new_random_bundle, new_version_id  # noqa: E402
from classifier.labels import LabelSet  # noqa: E402
from classifier.preprocess import Preprocessing  # noqa: E402

LABELS = LabelSet.from_names(["daisy", "dandelion", "roses"])


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bundles") / "random"
    new_random_bundle(LABELS, directory, seed=0)
    return directory


def leftovers(parent: Path) -> list[str]:
    return sorted(entry.name for entry in parent.iterdir() if entry.name.startswith("."))


def test_version_id_format():
    version = new_version_id()

    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", version)
    assert new_version_id() != version


def test_random_bundle_round_trip(bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)

    assert (bundle_dir / "bundle.json").is_file()
    assert (bundle_dir / "model.pt").is_file()
    assert bundle.labels == LABELS
    assert bundle.preprocessing == Preprocessing()
    assert bundle.architecture == "convnext_tiny"
    assert bundle.recipe == {"kind": "random-init", "seed": 0}
    assert bundle.temperature == 1.0
    assert bundle.ood["score"] == "energy"
    assert bundle.ood_threshold is None
    assert bundle.exports == {}
    assert bundle.path == bundle_dir.resolve()


def test_weights_are_read_lazily(bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)

    assert bundle._state_dict is None
    state_dict = bundle.state_dict()

    assert state_dict["classifier.2.weight"].shape == (3, 768)
    assert bundle.state_dict() is state_dict


def test_same_seed_same_weights(tmp_path: Path, bundle_dir: Path):
    rng_before = torch.random.get_rng_state()
    again = new_random_bundle(LABELS, tmp_path / "again", seed=0)
    other = new_random_bundle(LABELS, tmp_path / "other", seed=1)

    original = Bundle.load(bundle_dir).state_dict()
    assert torch.equal(again.state_dict()["features.0.0.weight"], original["features.0.0.weight"])
    assert not torch.equal(other.state_dict()["features.0.0.weight"], original["features.0.0.weight"])
    assert torch.equal(torch.random.get_rng_state(), rng_before)


def test_build_torch_model_runs(bundle_dir: Path):
    model = Bundle.load(bundle_dir).build_torch_model()

    with torch.inference_mode():
        logits = model(torch.zeros(1, 3, 64, 64))

    assert not model.training
    assert logits.shape == (1, 3)


def test_save_replaces_existing_bundle(tmp_path: Path, bundle_dir: Path):
    target = tmp_path / "served"
    bundle = Bundle.load(bundle_dir)
    bundle.save(target)

    bundle.metrics = {"top1": 0.5}
    bundle.calibration = {"temperature": 1.7}
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": 3.25}
    bundle.save(target)
    reloaded = Bundle.load(target)

    assert reloaded.metrics == {"top1": 0.5}
    assert reloaded.temperature == 1.7
    assert reloaded.ood_threshold == 3.25
    assert leftovers(tmp_path) == []


def test_failed_save_keeps_old_bundle(tmp_path: Path, bundle_dir: Path):
    target = tmp_path / "served"
    bundle = Bundle.load(bundle_dir)
    bundle.save(target)
    first_version = bundle.version

    bundle.version = new_version_id()
    with pytest.raises(FileNotFoundError):
        bundle.save(target, extra_files={"model.onnx": tmp_path / "missing.onnx"})

    assert Bundle.load(target).version == first_version
    assert leftovers(tmp_path) == []


def test_exports_travel_with_the_bundle(tmp_path: Path, bundle_dir: Path):
    export = tmp_path / "exported.onnx"
    export.write_bytes(b"onnx bytes")
    (tmp_path / "weights.bin").write_bytes(b"external data")
    bundle = Bundle.load(bundle_dir)
    bundle.exports["onnx"] = {"file": "model.onnx", "opset": 18, "fit_for_serving": True}
    bundle.save(tmp_path / "first", extra_files={"model.onnx": export, "model.onnx.data": tmp_path / "weights.bin"})

    Bundle.load(tmp_path / "first").save(tmp_path / "second")
    second = Bundle.load(tmp_path / "second")

    assert second.export_path("onnx").read_bytes() == b"onnx bytes"
    assert (tmp_path / "second" / "model.onnx.data").read_bytes() == b"external data"


def test_export_file_missing_is_an_error(tmp_path: Path, bundle_dir: Path):
    bundle = Bundle.load(bundle_dir)
    bundle.exports["onnx"] = {"file": "model.onnx", "fit_for_serving": True}

    with pytest.raises(BundleError, match="model.onnx"):
        bundle.save(tmp_path / "copy")


def test_refuses_to_replace_other_directory(tmp_path: Path, bundle_dir: Path):
    target = tmp_path / "notes"
    target.mkdir()
    (target / "important.txt").write_text("keep me")

    with pytest.raises(BundleError, match="non-empty directory"):
        Bundle.load(bundle_dir).save(target)

    assert (target / "important.txt").read_text() == "keep me"


def test_missing_directory(tmp_path: Path):
    with pytest.raises(BundleError, match="not found.*new-bundle"):
        Bundle.load(tmp_path / "nowhere")


def test_missing_manifest(tmp_path: Path):
    with pytest.raises(BundleError, match="bundle.json is missing.*new-bundle"):
        Bundle.load(tmp_path)


def test_missing_weights(tmp_path: Path, bundle_dir: Path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "bundle.json").write_bytes((bundle_dir / "bundle.json").read_bytes())

    with pytest.raises(BundleError, match="no model.pt.*new-bundle"):
        Bundle.load(copy)


def test_corrupt_manifest(tmp_path: Path):
    (tmp_path / "bundle.json").write_text("{broken", encoding="utf-8")
    (tmp_path / "model.pt").write_bytes(b"")

    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_unknown_format_version(tmp_path: Path, bundle_dir: Path):
    document = json.loads((bundle_dir / "bundle.json").read_text(encoding="utf-8"))
    document["format"] = 99
    (tmp_path / "bundle.json").write_text(json.dumps(document), encoding="utf-8")
    (tmp_path / "model.pt").write_bytes(b"")

    with pytest.raises(BundleError, match="unsupported bundle format 99"):
        Bundle.load(tmp_path)


def test_corrupt_weights(tmp_path: Path, bundle_dir: Path):
    (tmp_path / "bundle.json").write_bytes((bundle_dir / "bundle.json").read_bytes())
    (tmp_path / "model.pt").write_bytes(b"this is not a torch file")
    bundle = Bundle.load(tmp_path)

    with pytest.raises(BundleError, match="cannot read .*model.pt"):
        bundle.state_dict()


def test_weights_for_other_label_count(tmp_path: Path, bundle_dir: Path):
    document = json.loads((bundle_dir / "bundle.json").read_text(encoding="utf-8"))
    document["labels"]["classes"].append({"id": "tulips"})
    (tmp_path / "bundle.json").write_text(json.dumps(document), encoding="utf-8")
    (tmp_path / "model.pt").write_bytes((bundle_dir / "model.pt").read_bytes())

    with pytest.raises(BundleError, match="do not fit 4 classes"):
        Bundle.load(tmp_path).build_torch_model()

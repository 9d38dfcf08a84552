"""The retraining job the bot runs in a separate process.

    python -m training.retrain --job JOB.json [--stop-on-stdin-eof]

The bot's supervisor (`bot/retrain.py`) writes `JOB.json` and starts this
module as a child process. The job:

1. reads the serving bundle and checks that the base data has its classes;
2. splits the corrected photos into training and a held-out slice (by photo
   hash, seeded), skipping labels the serving model does not know;
3. trains with `training.train.train`, the code path of `python -m training
   train`, starting from the serving bundle's weights, with the photos people
   marked "not a flower" or "not in this list" (a flower of a species the
   model does not have) as the negatives that fit the OOD threshold;
4. evaluates candidate and serving model on the base validation split and on
   the held-out corrections (`training.gate`);
5. when the candidate passes and the serving bundle has an ONNX export, exports
   the candidate to ONNX too, so a bot with BACKEND=onnx can serve it;
6. prints a final `result` event and exits 0.

stdout carries only JSON lines, one event each (see `training.progress` for
the training events). Training's own `done` event is forwarded as `trained`,
and the job adds:

- `{"event": "data", ...}`: counts of the assembled data;
- `{"event": "phase", "phase": "prepare" | "gate" | "export"}`; "export" comes after a
  passing gate when the serving bundle has an ONNX export (`export_like_serving`);
- `{"event": "gate", "decision": {...}}`: the `GateDecision` as a dict;
- `{"event": "result", "version", "bundle", "confusion_png", "gate", "data", "metrics"}`;
- `{"event": "error", "message"}` before exit status 1;
- `{"event": "cancelled"}` before exit status 3, after SIGTERM or SIGINT, or
  when `--stop-on-stdin-eof` is given and stdin closes because the
  supervisor went away.

Logs go to stderr. The candidate bundle is written to `<work_dir>/candidate`;
moving it into the model directory and registering it is the supervisor's job.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

JOB_FORMAT = 1
CANDIDATE_DIR_NAME = "candidate"
GATE_DIR_NAME = "gate"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CANCELLED = 3

# The sabotage hook makes a candidate worse on purpose so tests can show the
# gate rejecting it. It is ignored unless this variable is "1" in the job's environment.
TESTING_ENV = "FLOWERBOT_TESTING"
# "negate_head" flips the sign of the final Linear layer, so the class the
# trained model ranks last wins. A trained model then scores well below chance.
SABOTAGE_MODES = ("negate_head",)
# Base-data photos on which a candidate's ONNX export is compared with its PyTorch outputs.
EXPORT_CHECK_SAMPLES = 16
HEAD_LINEAR_KEYS = ("classifier.2.weight", "classifier.2.bias")

EventSink = Callable[[dict[str, Any]], None]


class JobError(Exception):
    """A job file or data problem, reported to the admin as one line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrainJob:
    """Everything one retraining run needs, written by the supervisor as JSON.

    `examples` are photos with a confirmed or corrected label:
    `{"path", "label", "image_sha256", "prediction_id"}`, label being a class
    id. `not_flower` are photos marked "not a flower" and `unknown_species`
    photos of a flower of a species the model does not have, both
    `{"path", "image_sha256"}`. Both are negatives for the OOD threshold only.
    `recipe` contains recipe overrides (`training.recipe.Recipe` field names).
    `threads` caps torch's intra-op threads (None leaves torch's default) and
    `nice` is added to the process niceness, so serving in the bot process
    keeps priority over training.
    """

    run_id: int
    serving_bundle: str
    base_data: str
    work_dir: str
    base_data_root: str | None = None
    examples: tuple[Mapping[str, Any], ...] = ()
    not_flower: tuple[Mapping[str, Any], ...] = ()
    unknown_species: tuple[Mapping[str, Any], ...] = ()
    holdout_fraction: float = 0.2
    seed: int = 0
    recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    gate_tolerance: float = 0.0
    device: str = "auto"
    threads: int | None = None
    nice: int = 10
    sabotage: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise JobError(f"holdout_fraction must be within [0, 1), got {self.holdout_fraction!r}")
        if self.sabotage is not None and self.sabotage not in SABOTAGE_MODES:
            raise JobError(f"unknown sabotage mode {self.sabotage!r}; accepted: {', '.join(SABOTAGE_MODES)}")
        if self.threads is not None and self.threads < 1:
            raise JobError(f"threads must be >= 1, got {self.threads!r}")

    @property
    def candidate_dir(self) -> Path:
        return Path(self.work_dir) / CANDIDATE_DIR_NAME

    @property
    def gate_dir(self) -> Path:
        return Path(self.work_dir) / GATE_DIR_NAME

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["examples"] = [dict(example) for example in self.examples]
        values["not_flower"] = [dict(example) for example in self.not_flower]
        values["unknown_species"] = [dict(example) for example in self.unknown_species]
        values["recipe"] = dict(self.recipe)
        return {"format": JOB_FORMAT, **values}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RetrainJob:
        if values.get("format") != JOB_FORMAT:
            raise JobError(f"unsupported job format {values.get('format')!r}; this code reads format {JOB_FORMAT}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"format"})
        if unknown:
            raise JobError(f"unknown job keys: {', '.join(unknown)}")
        missing = [name for name in ("run_id", "serving_bundle", "base_data", "work_dir") if name not in values]
        if missing:
            raise JobError(f"job is missing: {', '.join(missing)}")
        fields = dict(values)
        fields.pop("format")
        fields["examples"] = tuple(fields.get("examples") or ())
        fields["not_flower"] = tuple(fields.get("not_flower") or ())
        fields["unknown_species"] = tuple(fields.get("unknown_species") or ())
        return cls(**fields)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the job as JSON to `path`, through a temporary file and a rename."""
        path = Path(path)
        staging = path.with_name(f".{path.name}.tmp")
        staging.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> RetrainJob:
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise JobError(f"cannot read job file {path}: {error}") from error
        if not isinstance(values, dict):
            raise JobError(f"job file {path} must contain a JSON object")
        return cls.from_dict(values)


# ---------------------------------------------------------------------------
# Corrections: which photos train and which are held out for the gate


@dataclasses.dataclass(frozen=True)
class CorrectionData:
    """Corrected photos split for one run, with counts of what was left out and why.

    `not_flower` and `unknown_species` are image paths, each photo once across both.
    """

    train: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    not_flower: list[str]
    unknown_species: list[str] = dataclasses.field(default_factory=list)
    skipped_unknown_label: int = 0
    skipped_missing_file: int = 0
    duplicates: int = 0

    @property
    def ood_negatives(self) -> list[str]:
        """Image paths of every photo that fits the OOD threshold as a negative."""
        return [*self.not_flower, *self.unknown_species]

    def counts(self) -> dict[str, int]:
        return {
            "corrections_train": len(self.train),
            "corrections_holdout": len(self.holdout),
            "not_flower": len(self.not_flower),
            "unknown_species": len(self.unknown_species),
            "skipped_unknown_label": self.skipped_unknown_label,
            "skipped_missing_file": self.skipped_missing_file,
            "duplicates": self.duplicates,
        }


def is_held_out(image_sha256: str, *, fraction: float, seed: int) -> bool:
    """Return whether a photo belongs to the held-out slice.

    The choice hashes the photo's SHA-256 with the seed, so a photo stays on
    the same side in every later run with the same seed: a held-out photo
    never trains a later candidate that is then gated on it.
    """
    if fraction <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}:{image_sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_corrections(
    examples: Sequence[Mapping[str, Any]],
    not_flower: Sequence[Mapping[str, Any]],
    class_ids: Sequence[str],
    *,
    fraction: float,
    seed: int,
    unknown_species: Sequence[Mapping[str, Any]] = (),
) -> CorrectionData:
    """Keep usable corrected photos, one label per photo, and split them into train and holdout.

    A photo saved more than once (same SHA-256) keeps the label of its newest
    prediction. The photos of one album (one `prediction_id`) are held out or
    trained on together. Labels outside `class_ids` and files that no longer exist are
    skipped and counted. "Not a flower" and `unknown_species` photos are only
    deduplicated and checked for existence; they never become a class. A photo
    in both lists is kept once, as "not a flower".
    """
    known = set(class_ids)
    newest: dict[str, Mapping[str, Any]] = {}
    duplicates = 0
    unknown = 0
    missing = 0
    for example in examples:
        label = example.get("label")
        if label not in known:
            unknown += 1
            continue
        if not Path(example["path"]).is_file():
            missing += 1
            continue
        key = str(example.get("image_sha256") or example["path"])
        previous = newest.get(key)
        if previous is not None:
            duplicates += 1
            if int(previous.get("prediction_id") or 0) > int(example.get("prediction_id") or 0):
                continue
        newest[key] = example

    # The photos of one album (one prediction) go to the same side, so the gate never
    # scores a plant whose other photos trained the candidate. The side follows the
    # smallest hash among them, which for a single photo is its own hash.
    # NOTE: an album photo that is later sent again alone moves to that newer
    # prediction and then follows its own hash, so it can change sides once.
    side_keys: dict[int, str] = {}
    for key, example in newest.items():
        prediction_id = example.get("prediction_id")
        if prediction_id is None:
            continue
        current = side_keys.get(int(prediction_id))
        if current is None or key < current:
            side_keys[int(prediction_id)] = key

    train: list[dict[str, Any]] = []
    holdout: list[dict[str, Any]] = []
    for key in sorted(newest):
        example = newest[key]
        prediction_id = example.get("prediction_id")
        side_key = key if prediction_id is None else side_keys[int(prediction_id)]
        entry = {"path": str(example["path"]), "label": str(example["label"])}
        (holdout if is_held_out(side_key, fraction=fraction, seed=seed) else train).append(entry)

    negatives: dict[str, dict[str, str]] = {"not_flower": {}, "unknown_species": {}}
    for kind, rows in (("not_flower", not_flower), ("unknown_species", unknown_species)):
        for example in rows:
            path = Path(example["path"])
            if not path.is_file():
                missing += 1
                continue
            key = str(example.get("image_sha256") or path)
            if kind == "unknown_species" and key in negatives["not_flower"]:
                continue
            negatives[kind].setdefault(key, str(path))
    return CorrectionData(
        train=train,
        holdout=holdout,
        not_flower=[negatives["not_flower"][key] for key in sorted(negatives["not_flower"])],
        unknown_species=[negatives["unknown_species"][key] for key in sorted(negatives["unknown_species"])],
        skipped_unknown_label=unknown,
        skipped_missing_file=missing,
        duplicates=duplicates,
    )


# ---------------------------------------------------------------------------
# The run


def base_class_ids(job: RetrainJob) -> list[str]:
    """Return the class ids of the base data, read the way training reads them."""
    from classifier.labels import LabelSet
    from training.data import FLOWERS102

    if job.base_data.lower() == FLOWERS102:
        return list(LabelSet.oxford102().class_ids)
    path = Path(job.base_data)
    if not path.is_dir():
        raise JobError(f"base data {job.base_data} is not a directory; set RETRAIN_BASE_DATA to an ImageFolder directory or flowers102")
    return list(LabelSet.from_path(path).class_ids)


def sabotage_mode(job: RetrainJob, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the job's sabotage mode when the environment allows it (FLOWERBOT_TESTING=1), else None."""
    if job.sabotage is None:
        return None
    environ = os.environ if environ is None else environ
    if environ.get(TESTING_ENV) != "1":
        logger.warning("ignoring sabotage=%s: %s is not 1", job.sabotage, TESTING_ENV)
        return None
    return job.sabotage


def apply_sabotage(bundle_dir: Path, mode: str) -> None:
    """Make the candidate worse on purpose (tests only), rewriting the bundle in place."""
    import torch

    from classifier.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    state = dict(bundle.state_dict())
    if mode == "negate_head":
        for key in HEAD_LINEAR_KEYS:
            state[key] = -state[key]
    bundle.metrics = {**bundle.metrics, "sabotage": mode}
    bundle.save(bundle_dir, state_dict={key: torch.as_tensor(value) for key, value in state.items()})
    logger.warning("sabotaged candidate %s with %s (test hook)", bundle.version, mode)


def export_like_serving(serving: Any, candidate_dir: Path, spec: Any, emit: EventSink) -> list[str]:
    """Give the candidate the ONNX export that the serving bundle has, so the same backend can serve it.

    A bot with BACKEND=onnx can only switch to a bundle with an ONNX export fit for
    serving. The export uses the serving export's opset and is checked against the
    candidate's own PyTorch outputs on a few base-data photos. Returns the formats written.
    """
    from training.export import export_bundle

    entry = serving.exports.get("onnx") or {}
    if not entry.get("fit_for_serving"):
        return []
    emit({"event": "phase", "phase": "export"})
    opset = int(entry.get("opset") or 18)
    written = export_bundle(candidate_dir, formats=["onnx"], data=spec, samples=EXPORT_CHECK_SAMPLES, opset=opset)
    logger.info("candidate exported to ONNX (opset %d): fit for serving %s", opset, written["onnx"]["fit_for_serving"])
    return list(written)


def run_job(job: RetrainJob, emit: EventSink, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Run one retraining job and return the `result` event; raises on failure."""
    from classifier.bundle import Bundle
    from training.data import DataSpec
    from training.engine import check_cancelled, resolve_device
    from training.gate import run_gate
    from training.recipe import Recipe
    from training.train import train

    emit({"event": "phase", "phase": "prepare"})
    # Checked here so an unusable device is reported by its setting, not by the --device flag of training.
    resolve_device(job.device, option="RETRAIN_DEVICE")
    serving = Bundle.load(job.serving_bundle)
    class_ids = base_class_ids(job)
    if list(serving.labels.class_ids) != class_ids:
        raise JobError(
            f"the base data {job.base_data} has classes {', '.join(class_ids[:8])}{'…' if len(class_ids) > 8 else ''}, "
            f"but serving model {serving.version} predicts {', '.join(serving.labels.class_ids[:8])}"
            f"{'…' if len(serving.labels) > 8 else ''}; set RETRAIN_BASE_DATA to the data the serving model was trained on"
        )
    data = split_corrections(
        job.examples,
        job.not_flower,
        class_ids,
        fraction=job.holdout_fraction,
        seed=job.seed,
        unknown_species=job.unknown_species,
    )
    emit({"event": "data", "base_data": job.base_data, **data.counts()})
    logger.info("run %d: data %s", job.run_id, data.counts())

    spec = DataSpec(source=job.base_data, root=job.base_data_root)
    recipe = Recipe.from_mapping({"seed": job.seed, **dict(job.recipe)})
    check_cancelled(should_stop)

    def forward(event: dict[str, Any]) -> None:
        # Training's "done" only means the candidate is written; the job's own end is "result".
        emit({**event, "event": "trained"} if event.get("event") == "done" else event)

    candidate = train(
        recipe,
        spec,
        weights=job.serving_bundle,
        out=job.candidate_dir,
        progress=forward,
        extra_examples=data.train,
        should_stop=should_stop,
        non_flower_examples=data.ood_negatives,
        device=job.device,
        show_progress_bar=False,
    )
    check_cancelled(should_stop)

    sabotage = sabotage_mode(job)
    if sabotage is not None:
        apply_sabotage(job.candidate_dir, sabotage)

    emit({"event": "phase", "phase": "gate"})
    gate = run_gate(
        job.candidate_dir,
        job.serving_bundle,
        base_data=spec,
        holdout=data.holdout,
        out=job.gate_dir,
        tolerance=job.gate_tolerance,
        device=job.device,
        batch_size=recipe.eval_batch_size,
        workers=recipe.workers,
    )
    emit({"event": "gate", "decision": gate.decision.to_dict()})
    if gate.decision.promote:
        export_like_serving(serving, job.candidate_dir, spec, emit)
    return {
        "event": "result",
        "version": candidate.version,
        "bundle": str(job.candidate_dir),
        "serving_version": serving.version,
        "confusion_png": gate.confusion_png,
        "gate": gate.decision.to_dict(),
        "data": data.counts(),
        "metrics": {
            "val_top1": candidate.metrics.get("val_top1"),
            "val_top5": candidate.metrics.get("val_top5"),
            "epochs_run": candidate.metrics.get("epochs_run"),
            "best_epoch": candidate.metrics.get("best_epoch"),
            "train_samples": candidate.metrics.get("train_samples"),
            "val_samples": candidate.metrics.get("val_samples"),
        },
    }


# ---------------------------------------------------------------------------
# Process entry


class StopFlag:
    """Set by SIGTERM, SIGINT or the supervisor's pipe closing; polled by training between batches."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            logger.warning("stopping: %s", reason)
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


class EventWriter:
    """Writes events as JSON lines to the supervisor's pipe; a closed pipe sets the stop flag instead of raising.

    The pipe closes when the bot process dies (SIGKILL, say) during a run. The first
    write after that raises BrokenPipeError, which stops the job as cancelled. The
    stream is then pointed at /dev/null, so later events and the flush at exit are dropped.
    """

    def __init__(self, stream: TextIO, flag: StopFlag) -> None:
        self.stream = stream
        self.flag = flag

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self.stream.write(json.dumps(event, ensure_ascii=False, allow_nan=False, default=str) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
            self.flag.set("the event pipe to the bot process is closed (BrokenPipeError)")


def install_stop_handlers(flag: StopFlag, *, watch_stdin: bool) -> None:
    def on_signal(signum: int, frame: Any) -> None:
        flag.set(f"received {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if watch_stdin:

        def watch() -> None:
            # The supervisor never writes to our stdin; EOF means its end of the pipe closed.
            # A raw os.read holds no lock of sys.stdin, which a daemon thread blocked at
            # interpreter shutdown would otherwise still own (a fatal error at exit).
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            flag.set("the supervisor closed stdin (the bot process is gone)")

        threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def open_event_stream() -> TextIO:
    """Return a stream on the original stdout for events, and point fd 1 at stderr.

    Anything else that prints (a library, a warning to stdout) then lands in
    the log, and stdout stays pure JSON lines for the supervisor.
    """
    sys.stdout.flush()
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    return events


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.retrain",
        description="Run one retraining job written by the bot: train from the serving bundle, then gate the candidate.",
    )
    parser.add_argument("--job", required=True, metavar="FILE", help="job file (JSON) written by the bot's retrain supervisor")
    parser.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="stop (exit status 3) when stdin reaches end of file; the supervisor keeps it open while it lives",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr log level (default: INFO)")
    return parser


def error_detail(error: Exception) -> str:
    """Return the `message` of an error event: the text alone for invalid input, else prefixed with the class name."""
    from training.errors import InputError

    if isinstance(error, InputError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    events = open_event_stream()
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    flag = StopFlag()
    emit = EventWriter(events, flag)
    install_stop_handlers(flag, watch_stdin=args.stop_on_stdin_eof)
    try:
        job = RetrainJob.read(args.job)
        if job.nice:
            os.nice(job.nice)
        if job.threads is not None:
            import torch

            torch.set_num_threads(job.threads)
        logger.info(
            "retrain run %d started (pid %d): %d corrected photos, %d not-flower photos, %d unknown-species photos",
            job.run_id,
            os.getpid(),
            len(job.examples),
            len(job.not_flower),
            len(job.unknown_species),
        )
        emit({"event": "start", "run_id": job.run_id, "pid": os.getpid()})
        result = run_job(job, emit, flag)
    except Exception as error:
        from training.engine import TrainingCancelled

        if isinstance(error, TrainingCancelled) or flag():
            logger.warning("retrain job cancelled: %s", flag.reason or error)
            emit({"event": "cancelled", "reason": flag.reason or str(error)})
            return EXIT_CANCELLED
        expected = isinstance(error, (JobError, ValueError, FileNotFoundError))
        logger.error("retrain job failed: %s", error, exc_info=not expected)
        emit({"event": "error", "message": error_detail(error)})
        return EXIT_FAILED
    emit(result)
    logger.info("retrain run %d finished: candidate %s, promote=%s", job.run_id, result["version"], result["gate"]["promote"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

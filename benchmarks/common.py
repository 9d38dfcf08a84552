"""Parts shared by the benchmark scripts: the machine, photos, model bundles, timing and the report files."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DOC_PATH = REPO_ROOT / "docs" / "benchmarks.md"
# Bundles the benchmarks derive (exports, a random-init fallback) go here, never into a bundle they did not make.
WORK_DIR = REPO_ROOT / "build" / "benchmarks"
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "flowers5").resolve()
# The bundle that `python -m training train --data ../shared/data/flowers5 --weights none --out build/flowers5-none` writes.
TRAINED_BUNDLE_DIR = REPO_ROOT / "build" / "flowers5-none"
RANDOM_BUNDLE_SEED = 0

# One ConvNeXt-Tiny forward pass on a 224 x 224 image is 4.47 GMACs (torchvision's
# ConvNeXt_Tiny_Weights metadata), and a multiply-accumulate counts as 2 FLOP.
CONVNEXT_TINY_GFLOP = 8.9

# Below this 1-minute load average the 2-CPU machine counts as quiet enough to measure.
QUIET_LOAD = 1.5


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or platform.processor() elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def package_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """Describe the CPU, memory and library versions the numbers were measured with."""
    flags = cpu_flags()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "isa": sorted(flag for flag in flags if flag in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"}),
        "memory_gib": round(memory_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "onnxruntime": package_version("onnxruntime"),
        "numpy": package_version("numpy"),
        "pillow": package_version("pillow"),
    }


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['cpu_model']}, {info['usable_cpus']} of {info['cpus']} CPUs usable "
        f"({', '.join(info['isa'])}), {info['memory_gib']} GiB; Python {info['python']}, "
        f"torch {info['torch']}, onnxruntime {info['onnxruntime']}, Pillow {info['pillow']}"
    )


def uptime() -> str:
    """Return the `uptime` line (the load averages over 1, 5 and 15 minutes)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def busy_cpu_seconds() -> float:
    """Return the CPU seconds all processes have spent busy since boot (/proc/stat), or 0.0 without /proc."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest and guest_nice (fields 8 and 9) are already counted in user and nice.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """Return the CPU seconds of this process and of its children that have been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def wait_for_quiet(threshold: float = QUIET_LOAD, max_wait_s: float = 25 * 60, poll_s: float = 60) -> bool:
    """Wait until the 1-minute load average is below `threshold`; return False when `max_wait_s` passed first."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = os.getloadavg()[0]
        if load < threshold:
            logger.info("load average %.2f is below %.2f; measuring", load, threshold)
            return True
        if time.monotonic() >= deadline:
            logger.warning("load average is still %.2f after %.0f s; measuring on a loaded machine", load, max_wait_s)
            return False
        logger.info("load average %.2f, waiting for it to fall below %.2f", load, threshold)
        time.sleep(poll_s)


# ---------------------------------------------------------------- photos and bundles


def val_photos(data_dir: Path = DEFAULT_DATA_DIR, limit: int | None = None) -> list[Path]:
    """Return the sorted val photos of an ImageFolder root, spread evenly over the list when `limit` is set."""
    photos = sorted((data_dir / "val").glob("*/*.jpg"))
    if not photos:
        raise SystemExit(f"no val photos under {data_dir}/val; pass --data DIR (an ImageFolder root with val/<class>/*.jpg)")
    if limit is None or limit >= len(photos):
        return photos
    positions = np.linspace(0, len(photos) - 1, limit).round().astype(int)
    return [photos[position] for position in positions]


def resolve_bundle(model: Path | None) -> tuple[Path, str]:
    """Return the bundle to measure and a description of it.

    Without `--model`: the flowers5 bundle trained with `--weights none` when
    it exists, else a seeded random-init bundle made under build/benchmarks.
    """
    if model is not None:
        return model, describe_bundle(model)
    if (TRAINED_BUNDLE_DIR / "bundle.json").is_file():
        return TRAINED_BUNDLE_DIR, describe_bundle(TRAINED_BUNDLE_DIR)
    return random_bundle()


def random_bundle() -> tuple[Path, str]:
    """Return the seeded random-init flowers5 bundle under build/benchmarks, made on first use, and its description."""
    from classifier.bundle import new_random_bundle
    from classifier.labels import LabelSet

    out = WORK_DIR / "flowers5-random"
    if not (out / "bundle.json").is_file():
        new_random_bundle(LabelSet.from_path(DEFAULT_DATA_DIR), out, seed=RANDOM_BUNDLE_SEED)
    return out, f"{_display_path(out)} (random-init weights, seed {RANDOM_BUNDLE_SEED}, version {_bundle_version(out)})"


# Layer scale of every block in the "active blocks" bundle. A random-init ConvNeXt starts its layer
# scales at 1e-6, so its blocks barely change the residual stream and their rounding is hardly tested.
ACTIVE_LAYER_SCALE = 0.5


def active_random_bundle() -> tuple[Path, str]:
    """Return the random-init bundle with every layer scale set to 0.5, made once under build/benchmarks."""
    import torch

    from classifier.bundle import Bundle, new_version_id

    source, _ = random_bundle()
    out = WORK_DIR / "flowers5-random-active"
    if not (out / "bundle.json").is_file():
        bundle = Bundle.load(source).copy()
        state = {key: value.clone() for key, value in bundle.state_dict().items()}
        for key in state:
            if key.endswith("layer_scale"):
                state[key] = torch.full_like(state[key], ACTIVE_LAYER_SCALE)
        bundle.set_state_dict(state)
        bundle.version = new_version_id()
        bundle.save(out)
    return out, f"{_display_path(out)} (random-init weights, seed {RANDOM_BUNDLE_SEED}, every layer scale set to {ACTIVE_LAYER_SCALE})"


def describe_bundle(directory: Path) -> str:
    """Name a bundle with its version, the weights it was trained from, and its val top-1."""
    from classifier.bundle import Bundle

    bundle = Bundle.load(directory)
    weights = (bundle.recipe or {}).get("weights") or {}
    kind = weights.get("kind") if isinstance(weights, dict) else weights
    top1 = (bundle.metrics or {}).get("val_top1")
    parts = [f"version {bundle.version}"]
    if kind:
        parts.append(f"trained with --weights {kind}" + (" (random-init backbone, trained head)" if kind == "none" else ""))
    if top1 is not None:
        parts.append(f"val top-1 {top1:.2f}")
    return f"{_display_path(directory)} ({', '.join(parts)})"


def _bundle_version(directory: Path) -> str:
    from classifier.bundle import Bundle

    return Bundle.load(directory).version


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def bundle_with_onnx(bundle_dir: Path, data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    """Return a bundle directory with an ONNX export: `bundle_dir` itself, or an exported copy under build/benchmarks."""
    from classifier.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    if bundle.exports.get("onnx", {}).get("fit_for_serving") and bundle.export_path("onnx").is_file():
        return bundle_dir
    copy_dir = WORK_DIR / f"{bundle_dir.name}-exported"
    if (copy_dir / "bundle.json").is_file():
        copied = Bundle.load(copy_dir)
        if copied.version == bundle.version and copied.exports.get("onnx", {}).get("fit_for_serving"):
            return copy_dir
        shutil.rmtree(copy_dir)
    logger.info("exporting %s to ONNX and int8 in %s", bundle_dir, copy_dir)
    bundle.copy().save(copy_dir)
    from training.export import export_bundle

    export_bundle(copy_dir, formats=("onnx", "int8"), images=data_dir / "val", samples=32)
    return copy_dir


def onnx_int8_path(bundle_dir: Path) -> Path:
    """Return a dynamically quantized (int8 MatMul weights) copy of the bundle's ONNX model, made once under build/benchmarks."""
    from classifier.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    source = bundle.export_path("onnx")
    target = WORK_DIR / f"{bundle_dir.name}-{bundle.version}.int8.onnx"
    if not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        target.parent.mkdir(parents=True, exist_ok=True)
        # Pointwise layers (MatMul in the graph) carry about 90% of ConvNeXt's FLOPs; the
        # depthwise 7x7 convolutions stay fp32 because ConvInteger has no depthwise kernel.
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    return target


# ---------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds of repeated calls of one configuration."""

    seconds: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_interleaved(calls: dict[str, Callable[[], Any]], rounds: int, warmup: int = 2) -> dict[str, Timing]:
    """Time every call once per round, round after round, so load changes hit every configuration alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    timings = {name: Timing() for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            timings[name].seconds.append(time.perf_counter() - started)
    return timings


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# ---------------------------------------------------------------- reports


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    module = sys.modules["__main__"].__spec__
    program = f"-m {module.name}" if module is not None else sys.argv[0]
    return f".venv/bin/python {program} " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="bundle directory (default: build/flowers5-none when it exists, else a random-init bundle)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help=f"ImageFolder root with val/<class>/*.jpg (default: {DEFAULT_DATA_DIR})")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes; the numbers mean nothing and docs/benchmarks.md is not touched")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="MINUTES",
                        help=f"wait up to this many minutes for the 1-minute load average to fall below {QUIET_LOAD} (default: 0, measure at once)")


@dataclass
class Report:
    """One benchmark table with its context, written as JSON, as markdown and into docs/benchmarks.md."""

    name: str
    title: str
    quick: bool = False
    body: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    uptime_before: str = ""
    uptime_after: str = ""
    # CPUs that other processes kept busy on average during the run (busy CPU time minus this process's, over wall time).
    others_cpus: float = 0.0
    _busy_start: float = 0.0
    _own_start: float = 0.0
    _wall_start: float = 0.0
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def begin(self) -> None:
        self.uptime_before = uptime()
        self.started = dt.datetime.now(dt.timezone.utc)
        self._busy_start, self._own_start, self._wall_start = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()
        logger.info("%s: started (%s)", self.name, self.uptime_before)

    def end(self) -> None:
        self.uptime_after = uptime()
        wall = time.monotonic() - self._wall_start
        others = (busy_cpu_seconds() - self._busy_start) - (own_cpu_seconds() - self._own_start)
        self.others_cpus = max(0.0, others / wall) if wall > 0 else 0.0
        logger.info("%s: finished (%s); other processes used %.2f CPUs on average", self.name, self.uptime_after, self.others_cpus)

    def add(self, text: str) -> None:
        self.body.append(text.strip())

    def markdown(self) -> str:
        info = machine()
        loaded = _load_from_uptime(self.uptime_before) >= QUIET_LOAD or self.others_cpus >= 0.25
        lines = [
            f"## {self.title}",
            "",
            f"Measured {self.started:%Y-%m-%d %H:%M} UTC on {machine_line(info)}.",
            "",
            f"Command: `{command_line()}`",
            "",
            f"Load before: `{self.uptime_before}`  ",
            f"Load after: `{self.uptime_after}` (the after value includes this benchmark's own threads)  ",
            f"Other processes kept {self.others_cpus:.2f} of the {os.cpu_count()} CPUs busy on average during the run "
            "(busy time in /proc/stat minus this process's).",
        ]
        if loaded:
            lines += [
                "",
                "NOTE: other processes shared the CPUs during this run, so absolute times are inflated. "
                "Best-of-N times and ratios within the table are more reliable than medians.",
            ]
        lines += ["", *("\n\n".join(self.body).splitlines()), ""]
        return "\n".join(lines)

    def save(self) -> None:
        """Print the table, write the result files, and replace this table's section of docs/benchmarks.md."""
        text = self.markdown()
        print(text)
        if self.quick:
            logger.info("--quick: nothing written")
            return
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        document = {
            "name": self.name,
            "title": self.title,
            "measured_at": self.started.isoformat(timespec="seconds"),
            "command": command_line(),
            "machine": machine(),
            "uptime_before": self.uptime_before,
            "uptime_after": self.uptime_after,
            "others_cpus": self.others_cpus,
            **self.data,
        }
        (RESULTS_DIR / f"{self.name}.json").write_text(json.dumps(document, indent=2, default=_json_default) + "\n")
        (RESULTS_DIR / f"{self.name}.md").write_text(text)
        update_doc_section(self.name, text)
        logger.info("wrote %s and docs/benchmarks.md", RESULTS_DIR / f"{self.name}.json")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _load_from_uptime(line: str) -> float:
    try:
        return float(line.rsplit("load average:", 1)[1].split(",")[0])
    except (IndexError, ValueError):
        return 0.0


DOC_HEADER = """# flowerbot benchmarks

Measured numbers for flowerbot on the machine named in each section. Every section
gives the command that produced it, so it can be measured again.

Serving machine: {machine}.
"""


def update_doc_section(name: str, text: str) -> None:
    """Replace the section between this benchmark's markers in docs/benchmarks.md, or append it."""
    start = f"<!-- benchmark:{name}:start -->"
    end = f"<!-- benchmark:{name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if DOC_PATH.is_file():
        document = DOC_PATH.read_text(encoding="utf-8")
    else:
        document = DOC_HEADER.format(machine=machine_line(machine()))
    if start in document and end in document:
        before = document.split(start, 1)[0]
        after = document.split(end, 1)[1]
        document = before + block + after
    else:
        document = document.rstrip() + "\n\n" + block + "\n"
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(document, encoding="utf-8")


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "aiohttp.access", "telegram", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

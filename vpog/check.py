"""`python -m vpog.check [training overrides]`: the pre-flight check to run before a long training job.

    python -m vpog.check                                              # the default demo run
    python -m vpog.check preset=full data.data_root=/datasets/gigapose machine.device=cuda

Takes exactly the overrides of `python -m vpog.train` and checks, in one process, that the run they
describe would start cleanly:

1. config: it composes; every section builds (unknown keys and bad values named); the machine settings
   fit this machine (`machine.num_gpus`, `machine.gpus` / `machine.nodes`, device, precision); the run
   folder can be written (and which checkpoint a restart resumes from);
2. weights: the CroCo checkpoint `model.encoder.checkpoint` names exists and fits the encoder;
3. data, per training set: the root, `key_to_shard.json`, the shard folder and `models_info.json`
   exist; every shard is indexed (indexing now what is not cached yet, which training then reuses;
   broken shards are listed); every object of the shards that training uses has its template folder,
   its `object_poses/{obj_id:06d}.npy` ((V, 4, 4), finite, V >= data.num_positive_templates) and both
   files of every view, each a PNG of the template camera's size (`camera.json`, else GigaPose's) with an
   alpha channel (colour) or 16-bit grey (depth), read from their headers; one view per object is decoded
   fully; the object diameters resolve. The built-in synthetic set is created first when missing, as
   training would;
4. one batch from each training set, in this process: samples per second of one loader worker (cold
   template cache, an estimate of a worker's rate early in training) and bad samples met;
5. one forward and backward pass of the model on the selected device with the selected op backends
   (`ops.backend`, `model.attention_backend`, `pnp.backend`), twice: step time (the first includes
   one-time costs) and peak memory, and which backend each op actually ran with.

It prints a short report ending with every problem found and the file it concerns, then exits 0 only
when the run would start cleanly (notes, e.g. broken shards that training skips, do not count), 1 when
a problem was found, 2 for a bad command line. Under a minute on a 2-core CPU for the built-in set once
it exists (40 s with the cores shared, most of it the two model steps); rendering the set the first
time adds one to three minutes.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import resource
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger("vpog.check")

MAX_LISTED = 20  # problems listed per kind and training set; the rest are counted
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}


@dataclass
class Finding:
    """One thing the check found: a `problem` stops the run from starting cleanly, a `note` does not."""

    level: str
    where: str
    """The file or folder it concerns ("" when none)."""
    message: str

    def line(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


@dataclass
class Report:
    """The check's results: one summary line per stage, then the findings."""

    stages: list[tuple[str, bool, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def problem(self, where, message: str) -> None:
        self.findings.append(Finding("problem", str(where or ""), message))

    def note(self, where, message: str) -> None:
        self.findings.append(Finding("note", str(where or ""), message))

    def stage(self, name: str, ok: bool, summary: str) -> None:
        self.stages.append((name, ok, summary))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "problem"]

    def format(self) -> str:
        width = max([len(n) for n, _, _ in self.stages] + [8])
        lines = ["vpog pre-flight check"]
        lines += [f"  {name:<{width}}  {'ok  ' if ok else 'FAIL'}  {summary}" for name, ok, summary in self.stages]
        notes = [f for f in self.findings if f.level == "note"]
        for title, items in (("problems", self.problems), ("notes", notes)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  - {f.line()}" for f in items]
        verdict = ("the run would start cleanly" if not self.problems else
                   f"the run would NOT start cleanly: {len(self.problems)} problem(s) above")
        lines.append(f"result: {verdict}")
        return "\n".join(lines)


def _listed(report: Report, level: str, items: list[tuple[str, str]], what: str) -> None:
    """Report the first MAX_LISTED (where, message) items at `level`, then how many more of `what`."""
    add = report.problem if level == "problem" else report.note
    for where, message in items[:MAX_LISTED]:
        add(where, message)
    if len(items) > MAX_LISTED:
        add("", f"... and {len(items) - MAX_LISTED} more {what}")


# ------------------------------------------------------------------------------------------------
# Files


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR, reading its first 33 bytes; ValueError
    saying what is wrong (not a PNG, truncated, damaged header)."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise ValueError("not a PNG file (or truncated)")
    if zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise ValueError("damaged PNG header (IHDR checksum)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def _check_object(folder: Path, pose_file: Path, width: int, height: int, min_views: int,
                  decode_view: bool) -> list[tuple[str, str]]:
    """Problems (path, message) of one object's templates; see the module docstring, step 3."""
    import numpy as np

    try:
        poses = np.load(pose_file)
    except (OSError, ValueError) as exc:
        return [(str(pose_file), f"unreadable template poses ({exc})")]
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
        return [(str(pose_file), f"template poses must be finite (V, 4, 4), got shape {poses.shape}")]
    if len(poses) < min_views:
        return [(str(pose_file), f"{len(poses)} template views, fewer than data.num_positive_templates = "
                                 f"{min_views}")]
    problems = []
    for view in range(len(poses)):
        for suffix, want in ((".png", "colour"), ("_depth.png", "depth")):
            path = folder / f"{view:06d}{suffix}"
            try:
                w, h, depth, colour = png_header(path)
            except FileNotFoundError:
                problems.append((str(path), f"missing ({len(poses)} views in {pose_file.name})"))
                continue
            except (OSError, ValueError) as exc:
                problems.append((str(path), str(exc)))
                continue
            if (w, h) != (width, height):
                problems.append((str(path), f"{w} x {h} pixels, the template camera is {width} x {height}"))
            elif want == "colour" and colour not in (4, 6):
                problems.append((str(path), f"no alpha channel ({COLOUR_TYPES.get(colour, colour)}): the "
                                            f"template mask is its alpha"))
            elif want == "depth" and (colour != 0 or depth != 16):
                problems.append((str(path), f"depth must be 16-bit grey, got {depth}-bit "
                                            f"{COLOUR_TYPES.get(colour, colour)}"))
    if decode_view and not problems:
        from PIL import Image

        for path in (folder / "000000.png", folder / "000000_depth.png"):
            try:
                with Image.open(path) as im:
                    im.load()
            except (OSError, ValueError, SyntaxError) as exc:
                problems.append((str(path), f"does not decode: {exc}"))
    return problems


def check_templates(report: Report, source, objects: list[int], min_views: int, workers: int = 8) -> int:
    """Check the templates of `objects` of a TrainingSource (problems into `report`); returns how many
    objects are complete."""
    from tqdm import tqdm

    from vpog.data.templates import pose_path, template_dir

    root, name = source.template_root, source.name
    camera = root / name / "camera.json"
    if camera.exists():
        try:
            cam = json.loads(camera.read_text())
            if len(cam["cam_K"]) != 9 or int(cam["width"]) <= 0 or int(cam["height"]) <= 0:
                raise ValueError("cam_K must hold 9 numbers and width, height be positive")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.problem(camera, f"unreadable template camera ({type(exc).__name__}: {exc})")
            return 0
    width, height = source.template_width, source.template_height

    def one(obj: int) -> list[tuple[str, str]]:
        return _check_object(template_dir(root, name, obj), pose_path(root, name, obj), width, height, min_views,
                             decode_view=True)

    problems, complete = [], 0
    bar = tqdm(total=len(objects), desc=f"templates {name}", unit="object", disable=len(objects) < 50,
               file=sys.stderr)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for found in pool.map(one, objects):
            problems += found
            complete += not found
            bar.update(1)
    bar.close()
    _listed(report, "problem", problems, f"template problems in {root / name}")
    return complete


def check_training_set(report: Report, tcfg, dcfg):
    """Step 3 for one `data.train_datasets` entry; returns the TrainingSource, or None after a problem."""
    from vpog.data.shards import find_key_to_shard
    from vpog.data.sources import TrainingSource

    root, templates = Path(tcfg.root), Path(tcfg.templates)
    missing = []
    if not root.is_dir():
        missing.append((root, "training set root does not exist"))
    else:
        try:
            find_key_to_shard(root, tcfg.split)
        except FileNotFoundError as exc:
            missing.append((root / "key_to_shard.json", str(exc)))
        if not (root / tcfg.split).is_dir():
            missing.append((root / tcfg.split, "shard folder does not exist"))
        if not (root / "models_info.json").is_file() and not (root / "models" / "models_info.json").is_file():
            missing.append((root / "models_info.json", "missing (object ids and diameters)"))
    if not (templates / tcfg.name).is_dir():
        missing.append((templates / tcfg.name, f"template folder of set '{tcfg.name}' does not exist"))
    for where, message in missing:
        report.problem(where, message)
    if missing:
        report.stage(f"data {tcfg.name}", False, f"{len(missing)} missing file(s) or folder(s), listed below")
        return None
    t0 = time.perf_counter()
    try:
        source = TrainingSource(
            tcfg.name, root, templates, split=tcfg.split, min_visib_fract=dcfg.min_visib_fract,
            index_cache_dir=(f"{dcfg.index_cache_dir}/{tcfg.name}" if dcfg.index_cache_dir else None),
            index_workers=dcfg.index_workers, missing_templates=dcfg.missing_templates, progress=True,
            object_ids=tcfg.object_ids, exclude_object_ids=tcfg.exclude_object_ids, scale_factor=tcfg.scale_factor)
    except (OSError, ValueError, KeyError) as exc:
        report.problem(root, f"{type(exc).__name__}: {exc}")
        report.stage(f"data {tcfg.name}", False, "does not index or load, see below")
        return None
    index = source.index
    broken = [(str(index.shard_dir / n), f"broken shard ({reason}): only its images that passed every check "
                                         f"are used") for n, reason in index.broken_shards]
    _listed(report, "note", broken, f"broken shards in {index.shard_dir}")
    stats = source.stats
    if stats.get("no_templates"):
        report.note(source.template_dir, f"{stats['no_templates']} instances of objects without templates are "
                                         f"skipped (data.missing_templates=skip)")
    if stats.get("unknown_object"):
        report.note(root / "models_info.json", f"{stats['unknown_object']} instances of objects missing from it "
                                               f"are skipped")
    used = source.objects
    complete = check_templates(report, source, used, dcfg.num_positive_templates)
    report.stage(f"data {tcfg.name}", complete == len(used),
                 f"{len(index.shard_ids)} shards indexed ({len(index.broken_shards)} broken), {index.num_images} "
                 f"images, {len(source)} usable instances of {len(used)} objects; templates complete for "
                 f"{complete}/{len(used)} ({time.perf_counter() - t0:.1f} s)")
    return source


# ------------------------------------------------------------------------------------------------
# Batches, model step, backends


def _offsets(sizes: list[int]) -> list[int]:
    out = [0]
    for s in sizes[:-1]:
        out.append(out[-1] + s)
    return out


def load_batches(report: Report, dcfg, seed: int, num_workers: int) -> list:
    """One batch (data.batch_size samples drawn at random) from each training set, loaded in this process;
    returns the batches (VPOGBatch), [] after a problem."""
    import numpy as np

    from vpog.data.batch import collate_vpog
    from vpog.data.dataset import VPOGDataset

    try:
        dataset = VPOGDataset(dcfg, train=True, seed=seed)
    except (OSError, ValueError, KeyError) as exc:
        report.problem("", f"the training data does not load: {type(exc).__name__}: {exc}")
        return []
    rng = np.random.default_rng(seed)
    batches = []
    for source, base in zip(dataset.sources, _offsets(dataset.source_sizes)):
        n = len(source)
        picks = rng.choice(n, size=dcfg.batch_size, replace=n < dcfg.batch_size)
        dataset.skip_counts.clear()
        t0 = time.perf_counter()
        try:
            samples = [dataset[(int(base + p), int(rng.integers(2 ** 62)))] for p in picks]
        except (RuntimeError, OSError, ValueError) as exc:
            report.problem(source.root, f"loading a batch of set '{source.name}' failed: {exc}")
            report.stage(f"batch {source.name}", False, "failed")
            continue
        seconds = time.perf_counter() - t0
        batches.append(collate_vpog(samples))
        rate = len(samples) / max(seconds, 1e-9)
        skipped = dict(dataset.skip_counts)
        if skipped:
            report.note(source.root, f"set '{source.name}': {sum(skipped.values())} bad samples replaced while "
                                     f"loading {len(samples)} ({skipped}; training counts and replaces them too)")
        report.stage(f"batch {source.name}", True,
                     f"{len(samples)} samples in {seconds:.2f} s: {rate:.1f} samples/s per loader worker (cold "
                     f"template cache), about {rate * max(num_workers, 1):.0f}/s with machine.num_workers="
                     f"{num_workers}")
    return batches


@contextlib.contextmanager
def record_backends():
    """{op: {(backend, device type)}} of every `vpog._backend.select_backend` call made inside the block.

    The op modules import `select_backend` by name; their module attribute is wrapped for the block and
    restored after it (the ops' behaviour is unchanged)."""
    from vpog import _backend
    from vpog.info import OP_MODULES

    chosen: dict[str, set] = {}
    original = _backend.select_backend

    def recording(op, backend, device):
        choice = original(op, backend, device)
        chosen.setdefault(op, set()).add((choice, getattr(device, "type", str(device))))
        return choice

    patched = []
    for name in (*OP_MODULES, "vpog.pnp.loss"):
        module = importlib.import_module(name)
        if getattr(module, "select_backend", None) is original:
            module.select_backend = recording
            patched.append(module)
    try:
        yield chosen
    finally:
        for module in patched:
            module.select_backend = original


def _peak_memory_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def build_model(report: Report, cfg, task):
    """The task's model on the CPU, CroCo weights loaded (step 2); None after a problem."""
    import torch

    try:
        torch.manual_seed(int(cfg.get("seed", 0)))
        model = task.build_model()
    except ValueError as exc:  # a CroCo checkpoint that does not fit, a bad model config
        report.problem((cfg.model.get("encoder") or {}).get("checkpoint") or "", str(exc))
        report.stage("weights", False, "the model does not build")
        return None
    loaded = getattr(model, "checkpoint_report", None)
    if loaded is not None:
        report.stage("weights", True, loaded.summary())
    elif not (cfg.model.get("encoder") or {}).get("checkpoint"):
        report.stage("weights", True, "none: the encoder starts from random weights (model.encoder.checkpoint=null)")
    return model


def run_step(report: Report, cfg, task, model, batch, machine, steps: int = 2) -> None:
    """Step 5: `steps` forward + backward passes of `batch` through `model` on the selected device."""
    import torch

    from vpog import _backend
    from vpog.training.distributed import DistEnv, resolve_device, resolve_precision
    from vpog.training.task import StepContext

    try:
        device = resolve_device(machine, DistEnv())
        dtype = resolve_precision(machine, device)
    except ValueError as exc:
        report.problem("", str(exc))
        report.stage("step", False, "no device")
        return
    _backend.set_default_backend(str((cfg.get("ops") or {}).get("backend", "auto")))
    model = model.to(device).train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, finite = [], True
    with record_backends() as chosen:
        for k in range(steps):
            ctx = StepContext(device=device, autocast_dtype=dtype, step=k, training=True)
            t0 = time.perf_counter()
            try:
                loss = task.forward(model, batch.to(device), ctx, with_pose_loss=True)[2]["loss"]
                loss.float().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            except (RuntimeError, ValueError) as exc:
                report.problem("", f"the training step fails on {device}: {type(exc).__name__}: {exc}")
                report.stage("step", False, "failed")
                return
            times.append(time.perf_counter() - t0)
            if not torch.isfinite(loss.detach()).all():
                finite = False
                report.problem("", f"the loss of the check's batch is not finite ({float(loss)})")
            model.zero_grad(set_to_none=True)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    report.stage("step", finite,
                 f"{cfg.model.name} ({params:.1f}M parameters) on {device}, {precision}, batch {batch.batch_size}"
                 f" x (1 + {batch.num_templates}) images: forward + backward {times[-1]:.2f} s (first "
                 f"{times[0]:.2f} s), peak memory {_peak_memory_gib(device):.2f} GiB"
                 + (" (host RSS)" if device.type == "cpu" else ""))
    used = "; ".join(f"{op}: {', '.join(f'{b} ({d})' for b, d in sorted(v))}" for op, v in sorted(chosen.items()))
    idle = sorted(op for op in _backend.OPS if op not in chosen)
    report.stage("backends", True, used + (f"; not called in the step: {', '.join(idle)}" if idle else ""))


# ------------------------------------------------------------------------------------------------
# The command


def check_output(report: Report, trainer_cfg) -> None:
    """The run folder can be written; which checkpoint a restart resumes from."""
    from vpog.training.checkpoint import list_checkpoints

    run_dir = trainer_cfg.run_dir
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), None)
    try:
        if existing is None or not existing.is_dir():
            raise OSError(f"{existing} is not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".vpog_check_"):
            pass
    except OSError as exc:
        report.problem(run_dir, f"the run folder cannot be written ({exc})")
        report.stage("output", False, str(run_dir))
        return
    found = list_checkpoints(run_dir / "checkpoints")
    resume = (f"a restart resumes from {found[0][1].name} (step {found[0][0]})" if found and
              trainer_cfg.checkpoint.resume else "starts from step 0")
    report.stage("output", True, f"{run_dir} ({resume})")


def run_check(cfg, argv: Sequence[str] = ()) -> Report:
    """Every check on the composed training config `cfg` (`argv`: its overrides, for messages)."""
    from vpog.config_schema import from_mapping
    from vpog.data.dataset import DataConfig, prepare_train_data
    from vpog.launch import plan
    from vpog.model.croco_checkpoint import croco_checkpoint_problem
    from vpog.training.distributed import MachineConfig
    from vpog.training.step import VPOGTask
    from vpog.training.trainer import TrainerConfig

    report = Report()
    t_start = time.perf_counter()
    try:
        trainer_cfg = TrainerConfig.from_config(cfg)
        if trainer_cfg.task != "vpog":
            raise ValueError(f"task={trainer_cfg.task}: vpog.check checks VPOG runs (task=vpog)")
        machine = from_mapping(MachineConfig, cfg.get("machine"), "machine")
        dcfg = from_mapping(DataConfig, cfg.get("data"), "data")
        task = VPOGTask(cfg)
    except (ValueError, KeyError, TypeError) as exc:
        report.problem("", f"config: {exc}")
        report.stage("config", False, "does not build")
        return report
    machine_ok = True
    try:
        launch = plan(machine, overrides=argv)
        ranks = f"{launch.processes} ranks (machine.num_gpus)" if launch.processes > 1 else "1 rank"
        if launch.note:
            report.note("", launch.note)
    except ValueError as exc:
        report.problem("", str(exc))
        ranks, machine_ok = "machine settings do not fit", False
    report.stage("config", machine_ok, f"model {cfg.model.name}, data {dcfg.name} ({len(dcfg.train_datasets)} set(s)), "
                                 f"batch {dcfg.batch_size} per rank, {ranks}, ops.backend={trainer_cfg.ops_backend}")
    check_output(report, trainer_cfg)
    missing_weights = croco_checkpoint_problem(cfg.get("model"))
    model = None
    if missing_weights:
        report.problem("", missing_weights)
        report.stage("weights", False, "missing: the step below runs with a random encoder")
        task.model_cfg = replace(task.model_cfg, encoder=replace(task.model_cfg.encoder, checkpoint=None))
    model = build_model(report, cfg, task)

    if dcfg.synthesize:
        if not Path(str(dcfg.synthesize.get("out", ""))).joinpath("synthesis.json").is_file():
            log.info("creating the built-in synthetic set first, as training does on first use")
        try:
            prepare_train_data(dcfg)
        except (OSError, ValueError, RuntimeError) as exc:
            report.problem(dcfg.synthesize.get("out", ""), f"the synthetic set cannot be created: {exc}")
    sources = [check_training_set(report, t, dcfg) for t in dcfg.train_datasets]
    batches = load_batches(report, dcfg, trainer_cfg.seed, machine.num_workers) if all(sources) else []
    if batches and model is not None:
        run_step(report, cfg, task, model, batches[0], machine)
    report.stage("total", not report.problems, f"{time.perf_counter() - t_start:.1f} s")
    return report


def _main(cfg, argv: Sequence[str]) -> int:
    report = run_check(cfg, argv)
    print(report.format(), flush=True)
    return 0 if not report.problems else 1


def main(argv: Sequence[str] | None = None) -> int:
    from vpog.cli import parse_cli
    from vpog.training.logger import init_logger

    argv = list(sys.argv[1:] if argv is None else argv)
    init_logger()
    cfg = parse_cli("train", argv, description=__doc__.split("\n\n")[0])
    return _main(cfg, argv)


if __name__ == "__main__":
    sys.exit(main())

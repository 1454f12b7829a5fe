"""What `python -m vpog.evaluate` does, step by step (config in `vpog/config/evaluate.yaml`).

1. The data: the training set `data.train_datasets[eval.dataset]` (created on first use for the
   synthetic set), read by `vpog.data.VPOGDataset` without jitter or augmentation; its objects are
   split by `split:` and the queries of the evaluated objects (`eval.objects`) kept, at most
   `eval.max_queries_per_object` each, ordered by object.
2. The models: the checkpoint's (architecture from its saved config when present) and, as a
   baseline, the same architecture untrained (seeded).
3. The loop (`runner.evaluate_model`) and the report (`report.write_report`) in
   `<output_dir>/<name>/`: metrics.json, report.md, figures, and the resolved config.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch

from vpog.config_schema import from_mapping, to_plain
from vpog.evaluation.inference import InferenceConfig
from vpog.evaluation.objects import ObjectLibrary
from vpog.evaluation.report import write_report
from vpog.evaluation.runner import NEAREST_TEMPLATE, UNTRAINED, VPOG, evaluate_model, order_by_object
from vpog.evaluation.split import ObjectSubset, SplitConfig, dataset_objects, select_instances, split_objects

log = logging.getLogger(__name__)

BASELINES = ("nearest_template", "untrained")


def resolve_device(name: str) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"machine.device={name} but CUDA is not available")
    return torch.device(name)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder / checkpoints folder -> its newest checkpoint file."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for d in (p / "checkpoints", p):
            cands = sorted(d.glob("ckpt_*.pt"))
            if cands:
                return cands[-1]
    raise FileNotFoundError(f"checkpoint={path}: no such file, and no ckpt_*.pt in that folder or its checkpoints/")


def read_checkpoint(path: str | Path) -> tuple[dict, dict | None, Path]:
    """(model state dict, saved config or None, file) of a vpog training checkpoint or a plain state dict.

    A run folder resolves to its newest checkpoint that verifies (vpog.training.checkpoint), falling
    back to older ones like the trainer does.
    """
    p = Path(path)
    if p.is_dir():
        from vpog.training.checkpoint import find_latest_valid

        for d in (p / "checkpoints", p):
            if d.is_dir():
                found = find_latest_valid(d)
                if found is not None:
                    file, state = found
                    return state["model"], state.get("config"), file
        p = find_checkpoint(p)
    if p.with_suffix(".json").is_file() and p.name.startswith("ckpt_"):
        from vpog.training.checkpoint import load_checkpoint

        state = load_checkpoint(p)
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        return state["model"], state.get("config"), p
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state, None, p
    raise ValueError(f"checkpoint={path}: neither a vpog checkpoint ({{'model': ...}}) nor a state dict")


def data_from_checkpoint(cfg, saved: dict | None, argv: list[str]):
    """`cfg` with the checkpoint's `data` and `split` sections (what it was trained with and held out),
    then the command line's `data.*` / `split.*` overrides on top. Unchanged when the checkpoint saved
    no config, when `eval.data_from_checkpoint` is false, or when the command line picks `data=<option>`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not saved or not bool(cfg.eval.data_from_checkpoint) or not isinstance(saved.get("data"), dict):
        return cfg
    parsed = OverridesParser.create().parse_overrides(list(argv))
    if any(ov.key_or_group == "data" for ov in parsed):
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.data = saved["data"]
    if isinstance(saved.get("split"), dict):
        out.split = saved["split"]
    for ov in parsed:
        key = ov.key_or_group
        if key.startswith(("data.", "split.")) and not ov.is_delete():
            OmegaConf.update(out, key, ov.value(), force_add=True)
    log.info("data and split from the checkpoint's config (set eval.data_from_checkpoint=false to use data=...)")
    return out


def load_vpog(state: dict | None, saved: dict | None, model_cfg: dict | None, seed: int = 0,
              where: str = "checkpoint") -> torch.nn.Module:
    """A VPOG network on the CPU: the checkpoint's saved architecture when it has one (else `model_cfg`),
    its weights from `state` (None: seeded random weights). ValueError when the weights do not fit."""
    from vpog.model import VPOG as VPOGNet
    from vpog.model import vpog_config_from_dict

    model_dict = dict(model_cfg or {})
    if saved and isinstance(saved.get("model"), dict):
        if model_dict and saved["model"] != model_dict:
            log.info("using the checkpoint's model config (%s) instead of model=%s",
                     saved["model"].get("name"), model_dict.get("name"))
        model_dict = dict(saved["model"])
    if not model_dict:
        raise ValueError(f"{where}: saves no model config; give the architecture (model=...)")
    model_dict["encoder"] = dict(model_dict.get("encoder", {}), checkpoint=None)  # weights come from `state`
    mcfg = vpog_config_from_dict(model_dict)
    torch.manual_seed(int(seed))
    net = VPOGNet(mcfg)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{where} does not fit the model {mcfg.name}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return net


def build_models(cfg, device: torch.device, untrained: bool, checkpoint=None) -> tuple[dict[str, torch.nn.Module], str]:
    """{method: model} in eval mode on `device`, and a name for the run.

    checkpoint: `read_checkpoint(cfg.checkpoint)` when already read.
    """
    state, saved, file = (None, None, None)
    if checkpoint is not None:
        state, saved, file = checkpoint
    elif cfg.checkpoint is not None:
        state, saved, file = read_checkpoint(cfg.checkpoint)
    model_dict = dict(to_plain(cfg.model))
    models: dict[str, torch.nn.Module] = {}
    net = load_vpog(state, saved, model_dict, int(cfg.seed), where=f"checkpoint={cfg.checkpoint}")
    if state is not None:
        log.info("loaded %s", file)
    else:
        log.warning("checkpoint=null: evaluating an untrained model")
    models[VPOG] = net.to(device).eval()
    if untrained and state is not None:
        models[UNTRAINED] = load_vpog(None, saved, model_dict, int(cfg.seed) + 1).to(device).eval()
    name = cfg.name or (file.parent.parent.name + "_" + file.stem if file is not None and
                        file.parent.name == "checkpoints" else (file.stem if file is not None else "untrained"))
    return models, name


def build_eval_data(cfg, seed: int = 0):
    """(dataset restricted to the evaluated queries, ObjectLibrary, evaluated object ids, split dict)."""
    from vpog.data.dataset import DataConfig, VPOGDataset, prepare_train_data

    dcfg = from_mapping(DataConfig, cfg.data, "data")
    if dcfg.synthesize:
        prepare_train_data(dcfg)
    dataset = VPOGDataset(dcfg, train=False, seed=seed)
    e = cfg.eval
    s = int(e.dataset)
    if not 0 <= s < len(dataset.sources):
        raise ValueError(f"eval.dataset={s}: data.train_datasets has {len(dataset.sources)} entries")
    objs, offset = dataset_objects(dataset, s)
    train_ids, held_ids = split_objects(objs.tolist(), from_mapping(SplitConfig, cfg.split, "split"))
    chosen = {"heldout": held_ids, "train": train_ids, "all": train_ids + held_ids}.get(str(e.objects))
    if chosen is None:
        raise ValueError(f"eval.objects must be heldout, train or all, got {e.objects!r}")
    cap = None if e.max_queries_per_object is None else int(e.max_queries_per_object)
    # Restrict the data set itself, so a broken query's replacement draw stays inside the evaluated objects.
    dataset = dataset.restrict_objects(s, object_ids=sorted(chosen))
    objs, offset = dataset_objects(dataset, s)
    positions = order_by_object(objs, select_instances(objs, chosen, cap, seed))
    subset = ObjectSubset(dataset, positions + offset)
    library = ObjectLibrary(dataset.sources[s], crop_size=dcfg.crop_size, max_model_points=int(e.max_model_points),
                            seed=seed)
    split = {"train_objects": train_ids, "heldout_objects": held_ids, "evaluated_objects": sorted(chosen),
             "num_queries": len(subset)}
    return subset, library, sorted(chosen), split


def run_evaluation(cfg, argv: list[str] | None = None) -> dict:
    """Run the whole evaluation of a composed `evaluate` config; returns {method: summary}."""
    from omegaconf import OmegaConf

    from vpog._backend import set_default_backend
    from vpog.data.batch import collate_vpog

    set_default_backend(str(cfg.ops.backend))
    device = resolve_device(str(cfg.machine.device))
    icfg = from_mapping(InferenceConfig, cfg.inference, "inference")
    e = cfg.eval
    baselines = [str(b) for b in (e.baselines or [])]
    bad = sorted(set(baselines) - set(BASELINES))
    if bad:
        raise ValueError(f"eval.baselines: unknown {bad}; choose from {list(BASELINES)}")
    ckpt = read_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None
    cfg = data_from_checkpoint(cfg, ckpt[1] if ckpt else None, argv or [])
    models, name = build_models(cfg, device, untrained="untrained" in baselines, checkpoint=ckpt)
    subset, library, objects, split = build_eval_data(cfg, seed=int(cfg.seed))
    if len(subset) == 0:
        raise ValueError(f"no queries to evaluate for objects {objects} (eval.objects={e.objects})")
    log.info("evaluating %s on %d queries of objects %s (device %s)", list(models), len(subset), objects, device)
    loader = torch.utils.data.DataLoader(subset, batch_size=int(e.batch_size), shuffle=False,
                                         num_workers=int(e.num_workers), collate_fn=collate_vpog)
    progress = {"auto": sys.stderr.isatty(), "true": True, "false": False}.get(str(e.progress).lower(), False)
    t0 = time.perf_counter()
    result = evaluate_model(models, loader, library, icfg, device, image_width=float(e.image_width),
                            nearest_template="nearest_template" in baselines, num_overlays=int(e.num_overlays),
                            objects=objects, progress=progress)
    seconds = time.perf_counter() - t0
    order = [VPOG, NEAREST_TEMPLATE, UNTRAINED]
    tables = {m: result.tables[m] for m in order if m in result.tables}
    out = Path(cfg.output_dir) / name
    meta = {
        "checkpoint": str(cfg.checkpoint), "data": f"{cfg.data.name}/{cfg.data.train_datasets[int(e.dataset)].name}",
        "objects": objects, **split,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "command": "python -m vpog.evaluate " + " ".join(argv or []), "seconds": seconds,
        "seconds_per_query": seconds / max(len(subset), 1),
    }
    summaries = write_report(out, tables, meta, tiles=result.tiles if int(e.num_overlays) > 0 else None,
                             plots=bool(e.plots))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for m, s in summaries.items():
        o = s["overall"]
        log.info("%-16s AR %.3f (MSSD %.3f, MSPD %.3f)  ADD(-S) %.3f  rot med %.1f deg  retrieval acc15 %.3f%s",
                 m, o["ar"], o["ar_mssd"], o["ar_mspd"], o["add_s_recall"], o["rot_err_deg_median"],
                 o["retrieval_acc15"], "" if o["pnp_fallbacks"] != o["pnp_fallbacks"] else
                 f"  PnP fallbacks {o['pnp_fallbacks']:.0f}/{o['n']:.0f}")
    log.info("report: %s", out / "report.md")
    return summaries

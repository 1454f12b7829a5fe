"""`python -m vpog.bop.score dataset=DIR results=FILE.csv out=DIR [key=value ...]`: BOP 2019 scores of a results file.

Scores a BOP19 results CSV on a BOP dataset with ground truth as the BOP toolkit's `eval_bop19_pose.py` does
(see `vpog.bop.scoring`), writes `out/scores_bop19.json` (the toolkit's `bop19_average_recall*` keys, the
recalls per threshold, per-object recalls, counts, problems and every evaluated estimate's errors) and prints
a short summary.

keys:
  dataset=DIR         BOP dataset folder (models/, test/, test_targets_bop19.json)      required
  results=FILE.csv    BOP19 results: scene_id,im_id,obj_id,score,R,t,time                required
  out=DIR             where scores_bop19.json goes                                       required
  split=test          image folder of the dataset (test_primesense for T-LESS)
  targets=test_targets_bop19.json   targets file under dataset; `none`: every ground-truth object with
                      visib_fract >= 0.1 of every image
  models=models       model folder (the errors use models_eval/ when the dataset has it)
  visib_gt_min=-1     -1: the inst_count most visible instances count (the toolkit's default); or a fraction
  vsd_delta=auto      VSD visibility tolerance in mm (auto: 15, ITODD 5)
  pixels=toolkit      VSD render pixel convention: toolkit (the toolkit's renderer) or centre
  progress=true       tqdm bar over the images

A missing or malformed input stops with one line naming the file and what is wrong (exit code 2).
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("vpog.bop.score")

REQUIRED = ("dataset", "results", "out")
DEFAULTS = {"split": "test", "targets": "test_targets_bop19.json", "models": "models", "visib_gt_min": "-1",
            "vsd_delta": "auto", "pixels": "toolkit", "progress": "true"}
OUTPUT_NAME = "scores_bop19.json"


class UsageError(ValueError):
    """A bad command line."""


def parse_args(argv: list[str]) -> dict[str, str]:
    """key=value arguments -> {key: value} with the defaults filled in; UsageError on an unknown or missing key."""
    known = list(REQUIRED) + list(DEFAULTS)
    args = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise UsageError(f"unexpected argument {a!r}: give key=value (see --help)")
        if key not in known:
            near = difflib.get_close_matches(key, known, n=2)
            raise UsageError(f"unknown key {key!r}; valid: {', '.join(known)}"
                             + (f" (closest: {', '.join(near)})" if near else ""))
        args[key] = value
    missing = [k for k in REQUIRED if not args.get(k)]
    if missing:
        raise UsageError(f"missing {', '.join(k + '=...' for k in missing)} (see --help)")
    return args


def _config(args: dict[str, str]):
    from vpog.bop.scoring import Bop19Config

    try:
        visib = float(args["visib_gt_min"])
        delta = None if args["vsd_delta"] == "auto" else float(args["vsd_delta"])
    except ValueError:
        raise UsageError(f"visib_gt_min and vsd_delta must be numbers (vsd_delta may be 'auto'), got "
                         f"{args['visib_gt_min']!r} and {args['vsd_delta']!r}") from None
    if args["progress"].lower() not in ("true", "false", "1", "0"):
        raise UsageError(f"progress must be true or false, got {args['progress']!r}")
    return Bop19Config(visib_gt_min=visib, vsd_delta_mm=delta, pixels=args["pixels"])


def run(args: dict[str, str]) -> dict:
    """Score and write `out/scores_bop19.json`; returns its content."""
    from vpog.bop.dataset import BopDataset
    from vpog.bop.results import read_results
    from vpog.bop.scoring import evaluate_bop19

    config = _config(args)
    targets = None if args["targets"].lower() == "none" else args["targets"]
    dataset = BopDataset(args["dataset"], split=args["split"], models=args["models"], targets=targets)
    results = read_results(args["results"])
    scores = evaluate_bop19(dataset, results, config, progress=args["progress"].lower() in ("true", "1"))
    content = scores.to_json()
    content["dataset"] = str(dataset.root)
    content["split"] = dataset.split
    content["results_file"] = str(Path(args["results"]))
    made_by = Path(args["results"]).with_suffix(".summary.json")  # written next to the CSV by vpog.bop.predict
    if made_by.is_file():
        predicted = json.loads(made_by.read_text())
        content["detections"] = predicted.get("detections")
        content["oracle_detections"] = predicted.get("oracle_detections")
        if predicted.get("oracle_detections"):
            print("note: these estimates used oracle detections (ground-truth boxes and masks)")
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / OUTPUT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)
    print(scores.summary())
    print(f"wrote {path}")
    return content


def main(argv: list[str] | None = None) -> int:
    from vpog.data.render import RenderError

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(parse_args(argv))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:  # e.g. an image id missing from scene_camera.json; the message names the file
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except RenderError as exc:  # no headless OpenGL for the VSD renders
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`python -m vpog.evaluate checkpoint=PATH [key=value ...]`: pose estimation on held-out objects.

Estimates the pose of every query crop of the held-out objects (template-group scoring, flow,
correspondences, EPro-PnP hypotheses), scores the estimates with the BOP metrics and writes a report
(metrics.json, report.md, figures) next to the baselines "nearest template" (the retrieved template's
pose, no flow, no PnP) and "untrained vpog". Config: `vpog/config/evaluate.yaml`; see
`vpog.evaluation.command` for the steps.

    python -m vpog.evaluate checkpoint=outputs/vpog machine.device=cuda eval.max_queries_per_object=50
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("vpog.evaluate")


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import parse_cli
    from vpog.evaluation.command import run_evaluation

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_cli("evaluate", argv, description=__doc__)
    try:
        run_evaluation(cfg, argv)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

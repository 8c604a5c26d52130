"""What a finished pipeline leaves, printed: where each output is, then the evaluation's scores against
the baselines. One printer for ``main.py demo`` and ``main.py submit pipeline --wait``."""
from __future__ import annotations

import json

from core.config import Config


def print_outputs(cfg: Config, prefix: str = "") -> None:
    """The pipeline's outputs of ``cfg`` (its paths expanded on this machine: core.paths.expand_config),
    then the scores of ``evaluate``'s report, or why there are none."""
    from core.outputs import GIF_NAME, PLOT_NAME, REPORT_NAME, STRIP_NAME, eval_dir, png_dir, predictions_path
    from stages.evaluate import print_summary

    evaluation = eval_dir(cfg)
    best = cfg.run_dir / "best.pt"
    outputs = (
        ("checkpoint", f"{best}  (framecast inspect {best})"),
        ("loss curve", cfg.run_dir / "loss_curve.png"),
        ("predictions", predictions_path(cfg)),
        ("PNG frames", png_dir(cfg)),
        ("evaluation", evaluation / REPORT_NAME),
        ("metrics plot", evaluation / PLOT_NAME),
        ("sample strip", evaluation / STRIP_NAME),
        ("sample GIF", evaluation / GIF_NAME),
    )
    width = max(len(label) for label, _ in outputs) + 1
    for label, value in outputs:
        print(f"  {label + ':':{width}s} {value}", flush=True)
    report_file = evaluation / REPORT_NAME
    try:
        report = json.loads(report_file.read_text())
    except (OSError, ValueError) as exc:
        print(f"{prefix}no evaluation report to summarise ({report_file}: {exc})", flush=True)
        return
    print(f"{prefix}evaluation of {report.get('checkpoint')}:", flush=True)
    print_summary(report)

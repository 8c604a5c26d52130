"""A test stage that reports its config's path settings as the stage saw them (expanded, in the job)
and as it writes them out (config.yaml, as the train stage saves it: the text as written)."""
from __future__ import annotations

import os
import socket

from stages.registry import NO_GPU, Stage, register

PROBE = register(Stage("paths-probe", "report the path settings a stage sees (a test stage)",
                       "tests.paths_stage:run", NO_GPU))


def run(cfg) -> dict:
    from core.config import config_to_dict, save_config

    save_config(cfg, cfg.run_dir / "config.yaml")
    written = config_to_dict(cfg)
    return {
        "host": socket.gethostname(),
        "env": os.environ.get("FRAMECAST_TEST_ROOT"),
        "seen": {"data.root": cfg.data.root, "predict.out": cfg.predict.out, "evaluate.out": cfg.evaluate.out,
                 "run_dir": str(cfg.run_dir)},
        "written": {"data.root": written["data"]["root"], "predict.out": written["predict"]["out"],
                    "evaluate.out": written["evaluate"]["out"]},
    }

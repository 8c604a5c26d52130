"""framecast command line: a thin entry point over ``cli`` (the parser and the commands).

    python main.py make-data --kind shapes --out datasets/shapes
    python main.py pack --data datasets/shapes
    python main.py train --config configs/default.yaml train.lr=3e-4
    python main.py predict --checkpoint runs/default/best.pt --split hidden --out preds/hidden.npy
    python main.py convert --config configs/default.yaml
    python main.py evaluate --checkpoint runs/default/best.pt --split val
    python main.py submit pipeline --config configs/default.yaml --wait
    python main.py demo
    python main.py lr-find --config configs/default.yaml      # suggests train.lr
    python main.py runs [runs/]                                # one line per run: state, epochs, best loss
    python main.py config --config configs/default.yaml        # the resolved config, as jobs will see it

Installed (``pip install .``), the same commands are ``framecast <command>`` (framecast_cli.py).
"""
from __future__ import annotations

import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main())

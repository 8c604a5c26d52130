#!/usr/bin/env bash
# One-time set-up on a fresh machine: the Python virtualenv in .venv with the packages of requirements.txt
# and requirements-test.txt at the exact versions tested (constraints.txt: requirements.txt only gives
# ranges, and pip would otherwise take the newest torch in range, a CUDA build), the `framecast` command
# (.venv/bin/framecast), plus (when run as root or with sudo on Debian/Ubuntu) the Fashion-MNIST package
# the Moving-MNIST tests read and rsync. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"

# rsync: submitit's RsyncSnapshot copies the code each job runs (jobs/snapshot.py).
APT_PACKAGES="dataset-fashion-mnist rsync"
if command -v apt-get >/dev/null 2>&1 && ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
    if $SUDO true 2>/dev/null; then
        echo "setup: installing Debian packages $APT_PACKAGES"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES >/dev/null
    else
        echo "setup: no root or sudo; skipping $APT_PACKAGES (the Fashion-MNIST tests will be skipped; without"
        echo "       rsync, job code snapshots copy the .py files only)"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q -c constraints.txt -r requirements.txt -r requirements-test.txt
# The `framecast` command (.venv/bin/framecast = python main.py), installed from this checkout in
# editable mode (edits count at once; the dependencies are those above). Optional: main.py works
# without it, so a machine that cannot build it (no setuptools to be had) still gets a working .venv.
if ! .venv/bin/python -m pip install -q --no-deps -e . 2>/tmp/framecast-setup-$$.log \
        && ! .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2>>/tmp/framecast-setup-$$.log; then
    echo "setup: could not install the framecast command ($(tail -n 1 /tmp/framecast-setup-$$.log)); use python main.py"
fi
rm -f /tmp/framecast-setup-$$.log
.venv/bin/python -c "import torch, h5py, submitit; print(f'setup: torch {torch.__version__}, h5py {h5py.__version__}, submitit {submitit.__version__}; CUDA available: {torch.cuda.is_available()}')"

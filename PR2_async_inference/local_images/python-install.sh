#!/bin/sh
# The local Python image's one build step: Debian's Python 3.11 with the project's requirements installed from the
# wheelhouse container_images.py made on the host. It runs in a container of the Debian root file system with
# the wheelhouse mounted read-only at /wheels and no network; the container is then committed as the image (no
# wheel ever becomes a layer). PR2's Dockerfile builds on the image (PYTHON_IMAGE): its pip steps find everything
# installed, and pip there reads only /opt/wheels, the build tools of `pip install -e .`.
set -eu
python3 -m venv /opt/venv
pip="/opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels"
$pip --upgrade pip setuptools
$pip -r /wheels/requirements.txt -c /wheels/constraints.txt
mkdir -p /opt/wheels
cp /wheels/setuptools-*.whl /opt/wheels/

# Ray node for docker-compose.yml (head and workers): this project with its pinned Ray, Torch,
# Optuna and MLflow, plus Ray's dashboard (`ray[default]`). The driver runs here too
# (`docker-compose exec ray-head python -m study run ...`): Ray needs the same Ray and Python
# versions on the driver and every node. Built by `docker-compose up --build` (~5 min, ~7 GB:
# the index's torch wheel is the CUDA build).
FROM python:3.11.7-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# /results is the shared volume; created here so a new volume is owned by the ray user.
RUN useradd --create-home --uid 1000 ray && mkdir /results && chown ray /results

WORKDIR /app
COPY pyproject.toml README.md ./
COPY transinv transinv
COPY study study
COPY search_spaces search_spaces
RUN pip install . "ray[default]==2.60.0"

USER ray
EXPOSE 6379 8265

# One image for the three services (and the CLI): `docker compose` runs it with
# `anting serve ingest|enrich|notify`, and once as the init job (topics, catalog).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The pinned dependencies first, in a layer that changes only with the lock file:
# install the project's runtime dependencies (constrained by requirements.lock)
# from its metadata alone, with empty packages standing in for the code.
COPY pyproject.toml requirements.lock README.md LICENSE ./
RUN mkdir -p shared services \
 && touch shared/__init__.py services/__init__.py \
 && pip install -c requirements.lock . \
 && pip uninstall -y anting \
 && rm -rf shared services build *.egg-info

# Then the code, installed in place so the data files beside it (the catalog,
# the sample events) are where the code looks for them. Not devtools/ (`anting run`,
# the local broker, the test helpers): the commands run here never import it.
COPY shared/ shared/
COPY services/ services/
RUN pip install --no-deps -c requirements.lock -e . \
 && useradd --system --uid 10001 --home-dir /app anting

USER anting
EXPOSE 8001 8002 8003
# compose sets the command per service; the host must be 0.0.0.0 inside a container
ENV ANTING_INGEST_HOST=0.0.0.0 ANTING_ENRICH_HOST=0.0.0.0 ANTING_NOTIFY_HOST=0.0.0.0 ANTING_INSIGHTS_HOST=0.0.0.0
CMD ["anting", "serve", "ingest"]

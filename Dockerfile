# One image for the api, worker, flower and migrate services: `autopack <subcommand>`.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 autopack \
    && mkdir -p /data && chown autopack /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY workers ./workers
COPY shared ./shared
COPY cli ./cli
COPY migrations ./migrations
RUN pip install --no-cache-dir .

USER autopack
ENV AUTOPACK_DATA_DIR=/data \
    AUTOPACK_LOG_JSON=true \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["autopack"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

# One image for every Lading service: `lading serve`, `lading worker`, `lading beat`, and
# `celery -A lading.celery_app flower`. The configuration is mounted at
# /etc/lading/config.yml ($LADING_CONFIG); REGISTRY_* variables override any key.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LADING_CONFIG=/etc/lading/config.yml

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY api ./api
COPY lading ./lading
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/lading --shell /usr/sbin/nologin lading \
    && mkdir -p /var/lib/lading/data /var/lib/lading/beat /etc/lading \
    && chown -R lading /var/lib/lading
COPY deploy/config.yml /etc/lading/config.yml

USER lading
WORKDIR /var/lib/lading
EXPOSE 5000
CMD ["lading", "serve", "/etc/lading/config.yml"]

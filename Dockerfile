# The erp-router proxy. The registry, the fitted predictors and the encoder cache are mounted, not baked in:
# see docker-compose.yml.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    LITELLM_LOCAL_MODEL_COST_MAP=True \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    ERP_CACHE_DIR=/cache

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY predictors ./predictors
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install .

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["erp", "serve", "--registry", "/config/model_registry.yaml", "--host", "0.0.0.0", "--port", "8000"]

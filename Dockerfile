# Pusa Studio on an NVIDIA GPU: docker build -t pusa-studio .
# Real weights live on the /weights volume (fill it with `python -m pusa_core.download`); the image
# carries only the small demo model, so it starts and answers without them.
FROM nvidia/cuda:13.0.0-runtime-ubuntu22.04

# CUDA build of torch, installed before requirements.txt so pip keeps it. PyPI's Linux wheel of
# torch==2.13.0 is a CUDA 13.0 build too; the explicit index makes the choice visible and lets an
# older driver pick another build: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

COPY requirements.txt /tmp/requirements.txt
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0 \
    && pip install -r /tmp/requirements.txt

# The app runs as the unprivileged user pusa (uid 1000), also the uid Hugging Face Spaces use.
RUN useradd --create-home --uid 1000 pusa \
    && install -d -o pusa -g pusa /app /app/outputs /weights /hf-cache
WORKDIR /app
# The code and the small model; .dockerignore keeps out real weights, the venv, git and tests.
COPY --chown=pusa:pusa . .

# Served on all interfaces, so: bounded queue and uploads (the app's defaults), and finished videos
# kept on the /app/outputs volume for 30 days. Set PUSA_AUTH=user:password to ask for a login.
ENV PUSA_HOST=0.0.0.0 \
    PUSA_PORT=7860 \
    PUSA_WEIGHTS_DIR=/weights \
    PUSA_OUTPUT_DIR=/app/outputs \
    PUSA_KEEP_DAYS=30 \
    HF_HOME=/hf-cache \
    GRADIO_ANALYTICS_ENABLED=False
VOLUME ["/weights", "/hf-cache", "/app/outputs"]
EXPOSE 7860
USER 1000:1000

HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/', timeout=8)"]
CMD ["python", "app.py"]

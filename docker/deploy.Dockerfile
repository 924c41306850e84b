# syntax=docker/dockerfile:1
# The deploy image: robopolicy with the ROS 2 wheels (rclpy, Fast DDS, the message packages
# from PyPI; no ROS install), running the controller node on the robot's computer:
#   docker build -f docker/deploy.Dockerfile -t robopolicy-deploy .
#   docker run --net=host --ipc=host --gpus all -v /path/to/checkpoint:/checkpoint:ro \
#       robopolicy-deploy /checkpoint --robot configs/robots/panda_real.yaml
# Host networking and IPC let DDS discover the robot's ros2_control nodes and use shared
# memory. A robot PC without a GPU builds with the CPU torch:
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu
FROM python:3.11-slim-bookworm

# offscreen MuJoCo rendering, for the simulated robot (deploy --sim) and camera tasks
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
        libosmesa6 libegl1 libegl-mesa0 libgl1 \
    && rm -rf /var/lib/apt/lists/*
ENV MUJOCO_GL=egl PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

ARG TORCH_INDEX=https://pypi.org/simple
RUN pip install --index-url "$TORCH_INDEX" torch==2.13.0
WORKDIR /opt/robopolicy
COPY . .
# editable: the bundled robot configs (configs/robots) are read from the source tree
RUN pip install -e ".[ros]"
ENTRYPOINT ["robopolicy", "deploy"]

"""The Docker images, checked statically (this machine has a Docker client but no daemon, so
nothing is built here): each Dockerfile parses into known instructions, pins torch as the
Makefile does, copies the repository with its own ignore file, and installs what its job
needs; the compose file builds those Dockerfiles and gives DDS the host's network."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
DOCKER = ROOT / "docker"
INSTRUCTIONS = {"FROM", "RUN", "ENV", "ARG", "WORKDIR", "COPY", "CMD", "ENTRYPOINT"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0], line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def makefile_torch_pin() -> str:
    return re.search(r"^TORCH_PIN := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


@pytest.mark.parametrize("image", ["train", "deploy"])
def test_dockerfile_parses_pins_torch_and_copies_the_repository(image):
    dockerfile = DOCKER / f"{image}.Dockerfile"
    steps = instructions(dockerfile)
    assert {name for name, _ in steps} <= INSTRUCTIONS
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")  # the platform CI tests on
    runs = " ".join(args for name, args in steps if name == "RUN")
    assert re.search(rf"pip install (--index-url \S+ )?{re.escape(makefile_torch_pin())}",
                     runs)
    assert "libosmesa6 libegl1 libegl-mesa0 libgl1" in runs  # the Makefile's render libs
    assert ("COPY", ". .") in steps and ("WORKDIR", "/opt/robopolicy") in steps
    ignored = (DOCKER / f"{image}.Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "runs"} <= set(ignored)
    torch_step = next(i for i, (_, a) in enumerate(steps) if "torch==" in a)
    install_step = next(i for i, (_, a) in enumerate(steps) if "pip install -e" in a)
    assert torch_step < install_step  # torch first: an unpinned one would come with robopolicy


def test_deploy_image_installs_the_ros_wheels_and_runs_robopolicy_deploy():
    steps = dict(instructions(DOCKER / "deploy.Dockerfile"))
    assert steps["ENTRYPOINT"] == '["robopolicy", "deploy"]'
    runs = " ".join(a for n, a in instructions(DOCKER / "deploy.Dockerfile") if n == "RUN")
    assert 'pip install -e ".[ros]"' in runs


def test_compose_builds_the_images_and_gives_dds_the_host_network():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert set(services) == {"train", "deploy", "sim-deploy"}
    for name, service in services.items():
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
    for name in ("deploy", "sim-deploy"):
        assert services[name]["network_mode"] == "host" and services[name]["ipc"] == "host"
    gpu = services["train"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    sim = services["sim-deploy"]["command"]
    assert sim[sim.index("--robot") + 1] == "panda_sim" and "--sim" in sim
    robot = services["deploy"]["command"][2]
    assert (ROOT / re.search(r":-(.+)}", robot).group(1)).is_file()  # its default config

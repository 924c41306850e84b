"""The ament_python package (real/ros2/robopolicy_ros), checked statically: launch tooling and
colcon are not on PyPI, so the launch file is read as code, not run. Its node is the
executable setup.py installs, its arguments parse as `robopolicy deploy`'s, and its default
robot config is one the package installs."""

import ast
import glob
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib

from robopolicy.cli import build_parser

ROOT = Path(__file__).parents[2]
PACKAGE_DIR = ROOT / "real" / "ros2" / "robopolicy_ros"
LAUNCH = PACKAGE_DIR / "launch" / "deploy.launch.py"


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == name]


def keywords(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords}


def constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f"no constant {name}")


def test_package_xml_names_the_package_and_every_message_package_the_node_uses():
    root = ET.parse(PACKAGE_DIR / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "robopolicy_ros"
    assert root.find("export/build_type").text == "ament_python"
    depends = {e.text for e in root.findall("exec_depend")}
    ros_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["ros"]
    # ros-sensor-msgs==5.5.1 -> sensor_msgs; ros-rclpy[fastrtps]==9.1.2 -> rclpy
    wheels = {req.split("==")[0].split("[")[0].removeprefix("ros-").replace("-", "_")
              for req in ros_extra}
    assert wheels <= depends and {"launch", "launch_ros", "lifecycle_msgs"} <= depends


def test_setup_installs_the_launch_file_the_configs_and_the_deploy_executable():
    setup = ast.parse((PACKAGE_DIR / "setup.py").read_text())
    assert constant(setup, "PACKAGE") == "robopolicy_ros"
    assert (PACKAGE_DIR / "resource" / "robopolicy_ros").exists()  # the ament index marker
    entry = ast.unparse(keywords(calls(setup, "setup")[0])["entry_points"])
    assert entry == "{'console_scripts': [f'deploy = {PACKAGE}.deploy:main']}"
    configs = sorted(Path(p).name for p in glob.glob(
        str(PACKAGE_DIR / "../../../configs/robots/*.yaml")))
    assert {"panda_sim.yaml", "panda_real.yaml", "ur5e_real.yaml"} <= set(configs)
    assert glob.glob(str(PACKAGE_DIR / "launch/*.launch.py")) == [str(LAUNCH)]


def test_launch_file_starts_the_deploy_executable_with_arguments_deploy_accepts():
    launch = ast.parse(LAUNCH.read_text())
    assert constant(launch, "PACKAGE") == "robopolicy_ros"
    declared = {ast.literal_eval(c.args[0]): keywords(c)
                for c in calls(launch, "DeclareLaunchArgument")}
    assert set(declared) == {"checkpoint", "robot", "backend", "inpaint"}
    assert "default_value" not in declared["checkpoint"]  # required
    default_robot = ast.unparse(declared["robot"]["default_value"])
    assert "'config', 'panda_sim.yaml'" in default_robot
    nodes = calls(launch, "Node")
    assert len(nodes) == 2  # with and without real-time chunking
    for node in nodes:
        kw = keywords(node)
        assert ast.unparse(kw["package"]) == "PACKAGE"
        assert ast.literal_eval(kw["executable"]) == "deploy"
    # each node's arguments, with the launch configurations filled in, parse as robopolicy
    # deploy's own
    values = {"checkpoint": "runs/flow/checkpoint", "robot": "panda_sim.yaml",
              "backend": "compile"}
    assigned = {n.targets[0].id: n.value for n in ast.walk(launch)
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}

    def filled(expr: ast.expr) -> list[str]:
        if isinstance(expr, ast.Name) and expr.id in values:
            return [values[expr.id]]
        if isinstance(expr, ast.Name):
            return filled(assigned[expr.id])
        if isinstance(expr, ast.Starred):
            return filled(expr.value)
        if isinstance(expr, ast.List):
            return [arg for item in expr.elts for arg in filled(item)]
        return [ast.literal_eval(expr)]

    parsed = [build_parser().parse_args(["deploy", *filled(keywords(n)["arguments"])])
              for n in nodes]
    for args in parsed:
        assert (args.checkpoint, args.robot, args.backend) == (
            values["checkpoint"], values["robot"], "compile")
    assert [args.no_inpaint for args in parsed] == [False, True]


def test_the_executable_drops_ros_arguments_and_ends_bad_input_in_one_line(
        monkeypatch, capsys, tmp_path):
    monkeypatch.syspath_prepend(str(PACKAGE_DIR))
    from robopolicy_ros.deploy import main

    missing = tmp_path / "nothing"
    monkeypatch.setattr(sys, "argv", ["deploy", str(missing), "--robot", "panda_sim",
                                      "--ros-args", "-r", "__node:=other"])
    assert main() == 2
    err = capsys.readouterr().err.strip()
    assert err == f"robopolicy deploy: error: {missing}: no such checkpoint directory"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "robots").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_robot_config_loads(path):
    from robopolicy.real.robot_config import load_robot_config

    config = load_robot_config(path)
    assert len(config.joints) == config.robot_spec().dof

"""The ament_python package: the launch file, the bundled robot configs and a `deploy`
executable over the pip-installed robopolicy (`pip install robopolicy[ros]` or the repository
editable; this package adds no Python code of its own besides that entry point)."""

from glob import glob

from setuptools import setup

PACKAGE = "robopolicy_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        # the repository's robot configs (configs/robots), installed as the package's config
        (f"share/{PACKAGE}/config", glob("../../../configs/robots/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    entry_points={"console_scripts": [f"deploy = {PACKAGE}.deploy:main"]},
)

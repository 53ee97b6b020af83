"""The package layout of the soraflow distribution (the metadata is in pyproject.toml).

The repository keeps its top-level folders (the design card's names); the wheel installs each of them as a
subpackage of `soraflow`, so `pip install soraflow` adds one import name only (tests/test_namespace.py).
"""

from setuptools import find_packages, setup

FOLDERS = ("cli", "common", "components", "inference", "models", "monitoring", "pipelines", "training",)

packages = ["soraflow"] + [f"soraflow.{p}" for p in find_packages(include=[f"{t}*" for t in FOLDERS])
                           if p.split(".")[0] in FOLDERS]
setup(packages=packages, package_dir={"soraflow": "soraflow", **{f"soraflow.{t}": t for t in FOLDERS}})

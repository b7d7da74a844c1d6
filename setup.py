"""Package discovery lives here because pyproject's `packages.find` ignores our package-dir mapping.

`verifiers/` and `rewards/` sit at the top of the repo (where users look for them) but install as
`posttrain.verifiers` and `posttrain.rewards`: PyPI already has a popular top-level `verifiers`.
All metadata is in pyproject.toml.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["posttrain", "posttrain.*"]) + ["posttrain.verifiers", "posttrain.rewards"])

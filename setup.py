"""Packaging beyond pyproject.toml: the repository's conf/ installs as the package data ``shaping/conf``.

conf/ stays the one copy in git (Hydra composes it in experiments/, the tests read it in place); the wheel
carries it as ``shaping.conf``, so an installed FedShape finds its scenarios and default configs without
the source tree (shaping.sim.scenarios.conf_dir). pyproject.toml cannot map a package to another
directory while it also discovers the packages, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["shaping*", "fed_client*", "fed_server*", "experiments*"]), "shaping.conf"],
    package_dir={"shaping.conf": "conf"},
    package_data={"shaping": ["py.typed"], "shaping.conf": ["**/*.yaml", "**/*.json", "**/*.npz"]},
)

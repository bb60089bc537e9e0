# The project's metadata and build settings are in pyproject.toml; this shim lets tools that call setup.py work.
from setuptools import setup

setup()

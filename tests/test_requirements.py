"""The declared dependencies: requirements.txt and setup.cfg agree, and every one is installed."""

import configparser
import importlib.metadata
import pathlib
import re

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirements_txt() -> list[str]:
  lines = (_ROOT / "requirements.txt").read_text().splitlines()
  return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _install_requires() -> list[str]:
  config = configparser.ConfigParser()
  config.read(_ROOT / "setup.cfg")
  lines = config["options"]["install_requires"].splitlines()
  return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_requirements_txt_is_install_requires():
  assert _requirements_txt() == _install_requires()


def test_every_runtime_dependency_is_installed():
  names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in _install_requires()]
  missing = []
  for name in names:
    try:
      importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      missing.append(name)
  assert not missing, f"not installed: {missing}; run `pip install -e .`"

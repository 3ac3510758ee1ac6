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


def _python_requires() -> tuple[str, str]:
  """setup.cfg's `python_requires` as (lowest admitted minor, first excluded minor)."""
  config = configparser.ConfigParser()
  config.read(_ROOT / "setup.cfg")
  spec = config["options"]["python_requires"]
  (low,) = re.findall(r">=\s*(3\.\d+)", spec)
  (high,) = re.findall(r"<\s*(3\.\d+)", spec)
  return low, high


def test_python_requires_the_readme_and_ci_agree():
  low, high = _python_requires()
  newest = f"3.{int(high.split('.')[1]) - 1}"
  readme = (_ROOT / "README.md").read_text()
  assert f"Python {low}-{newest}" in readme, "the README's install line names other Pythons"
  ci = (_ROOT / ".ci" / "run").read_text()
  stacks = dict(re.findall(r"^setup (\w+) (3\.\d+)\.\d+", ci, flags=re.M))
  # CI tests the oldest admitted Python on the pinned lower bounds, and a newer one on pip's newest.
  assert stacks["oldest"] == low, stacks
  minor = lambda v: int(v.split(".")[1])
  assert minor(low) < minor(stacks["newest"]) <= minor(newest), stacks
  assert 'setup oldest 3.11.7 -c "$lowest"' in ci


def test_ci_pins_exactly_the_lower_bounds_of_requirements_txt():
  ci = (_ROOT / ".ci" / "run").read_text()
  assert "grep -v '^#' requirements.txt | grep . | sed 's/>=/==/'" in ci
  # Every requirement has a lower bound that the pin turns into `==`, and nothing else to pin.
  for line in _requirements_txt():
    assert re.fullmatch(r"[\w.-]+>=[\w.]+", line), line

"""tfds's real download_and_prepare path, with only the HTTP request mocked; incres's messages."""

import errno

import pytest
import requests
import tensorflow_datasets as tfds

from incres import configs, data

# The files tfds fetches first for each dataset (from its registered checksums).
_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "imagenette": "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
}


@pytest.fixture
def requested(monkeypatch):
  """URLs that reach the HTTP layer; every request fails as on a machine without network."""
  urls = []

  def send(self, request, *args, **kwargs):
    urls.append(request.url)
    raise requests.ConnectionError(f"Failed to resolve host (test has no network): {request.url}")

  # The transport adapter under every requests.Session: below tfds's downloader and retries.
  monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
  return urls


@pytest.mark.parametrize("name", sorted(_URLS))
def test_download_and_prepare_reaches_the_download(name, tmp_path, requested):
  # Fails with ModuleNotFoundError, before any request, when a module tfds needs is missing
  # (tensorflow-datasets 4.9.10 with etils 1.15 and no importlib_resources).
  with pytest.raises(requests.ConnectionError):
    tfds.builder(name, data_dir=str(tmp_path)).download_and_prepare()
  assert _URLS[name] in requested


def _config(name, tmp_path):
  c = configs.base_config()
  c.update(dataset=name, data_dir=str(tmp_path))
  return c


def test_network_failure_is_named(tmp_path, requested):
  with pytest.raises(data.DatasetError) as e:
    data.dataset_info(_config("cifar10", tmp_path))
  message = str(e.value)
  assert "network" in message and "tfds build cifar10" in message and "digits" in message
  assert _URLS["cifar10"] in requested and "\n" not in message


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            ModuleNotFoundError(
                "No module named 'importlib_resources'", name="importlib_resources"
            ),
            r"module 'importlib_resources', which is not installed.*pip install -r requirements",
        ),
        (
            tfds.core.download.download_manager.NonMatchingChecksumError("http://x/a.tgz", "/t"),
            r"checksum.*Delete that file",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), r"disk problem.*Free disk space"),
    ],
    ids=["missing-module", "checksum", "disk-full"],
)
def test_prepare_failure_names_its_cause(tmp_path, monkeypatch, error, expected):
  def fail(self, *args, **kwargs):
    try:  # Raised as tfds raises its own: from inside its code, as the cause of a wrapper.
      raise error
    except Exception as cause:
      raise RuntimeError("Failed to prepare the dataset") from cause

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
  with pytest.raises(data.DatasetError, match=expected) as e:
    data.dataset_info(_config("cifar10", tmp_path))
  assert "network" not in str(e.value)

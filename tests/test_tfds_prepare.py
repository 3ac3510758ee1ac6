"""tfds's real download_and_prepare path, with only the HTTP request mocked; incres's messages."""

import errno
import io
import tarfile

import numpy as np
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


def test_an_unreachable_host_fails_at_once_without_tfds_retries(tmp_path, requested, monkeypatch):
  # Without network tfds retried for 3 min 43 s (progress bars and retry warnings) before failing.
  prepared = []
  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "download_and_prepare", lambda *a, **k: prepared.append(a)
  )
  with pytest.raises(data.DatasetError, match=r"network problem \(ConnectionError") as e:
    data.dataset_info(_config("cifar10", tmp_path))
  assert requested == [_URLS["cifar10"]]  # One probe of the host, no retry.
  assert prepared == []  # tfds's download (and its retries) never started.
  assert "Check this machine's network access" in str(e.value)


def test_a_host_that_answers_goes_on_to_the_download(tmp_path, monkeypatch):
  # Any HTTP answer, an error status included, means the network works: tfds decides the rest.
  probed, prepared = [], []

  def send(self, request, *args, **kwargs):
    probed.append((request.method, request.url, kwargs.get("timeout")))
    if len(probed) == 2:
      raise requests.ReadTimeout("connected, no answer within the timeout")
    response = requests.Response()
    response.status_code, response.url, response.raw = 405, request.url, io.BytesIO(b"")
    return response

  def full_disk(self, *args, **kwargs):
    prepared.append(self)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", full_disk)
  for _ in range(2):  # An error status, then a connection slow to answer.
    with pytest.raises(data.DatasetError, match="disk problem"):
      data.dataset_info(_config("cifar10", tmp_path))
  assert probed == [("HEAD", _URLS["cifar10"], data.PROBE_TIMEOUT_S)] * 2 and len(prepared) == 2


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
  monkeypatch.setattr(
      data.tfds_errors, "probe_download_hosts", lambda builder: None
  )  # No real request.
  with pytest.raises(data.DatasetError, match=expected) as e:
    data.dataset_info(_config("cifar10", tmp_path))
  assert "network" not in str(e.value)


def _cifar10_archive(per_file: int) -> bytes:
  """A cifar-10-binary.tar.gz in CIFAR's format: records of a label byte and 32×32×3 CHW pixels."""
  rng = np.random.default_rng(0)
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    files = {f"data_batch_{i}.bin": None for i in range(1, 6)} | {"test_batch.bin": None}
    for name in files:
      labels = np.arange(per_file, dtype=np.uint8)[:, None] % 10
      pixels = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
      files[name] = np.concatenate([labels, pixels], axis=1).tobytes()
    files["batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode()
    for name, content in files.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def test_cifar10_prepares_from_a_served_archive(tmp_path, monkeypatch):
  # The whole prepare path after the download (extract, read, encode, write) and incres's reading
  # of the result: a module it needs that is missing fails here. Only the HTTP response and the
  # registered checksums are replaced.
  archive = _cifar10_archive(per_file=4)
  served = []

  def send(self, request, *args, **kwargs):
    served.append(request.url)
    response = requests.Response()
    response.status_code, response.url, response.raw = 200, request.url, io.BytesIO(archive)
    response.headers["Content-Length"] = str(len(archive))
    return response

  monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
  # The served file is not CIFAR's: tfds must not hold it to the registered checksums.
  monkeypatch.setattr(tfds.image_classification.Cifar10, "url_infos", None)
  monkeypatch.setattr(tfds.core.download.checksums, "get_all_url_infos", dict)
  config = _config("cifar10", tmp_path)
  info = data.dataset_info(config)
  assert served == [_URLS["cifar10"]]
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 20, 4)
  batch = next(data.create_eval_iter(config))
  assert batch["mask"].sum() == 4 and sorted(batch["label"][:4].tolist()) == [0, 1, 2, 3]

"""Why preparing a tfds dataset failed, and a quick probe of its download hosts beforehand."""

from __future__ import annotations

import errno
import os
import socket
import urllib.error
import urllib.parse

import requests
import tensorflow_datasets as tfds

# Seconds a download host has to accept a connection (and to answer a HEAD request) before tfds's
# download starts. tfds retries an unreachable host 10 times with backoff: without network,
# dataset=cifar10 took 3 min 43 s of retries and progress bars to fail.
PROBE_TIMEOUT_S = 10.0


def probe_download_hosts(builder) -> None:
  """Raises requests' error at once if a host the dataset downloads from cannot be reached.

  One HEAD request per host of the builder's registered URLs, without retries, through the proxy
  the environment names, as tfds's download would go. Any HTTP answer (an error status included),
  or a connection slow to answer, means the network works and tfds goes ahead; builders without
  registered URLs are not probed.
  """
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (no checksums registered: tfds finds out)
    return
  first_per_host = {}
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
      first_per_host.setdefault((parts.scheme, parts.hostname, parts.port), url)
  with requests.Session() as session:
    for url in first_per_host.values():
      try:
        session.head(url, timeout=PROBE_TIMEOUT_S, allow_redirects=False).close()
      except requests.ReadTimeout:
        pass  # Connected, but slow to answer: the network works; tfds's download may too.


# What `download_and_prepare` raises, by cause (tfds downloads with requests, FTP with urllib).
_CORRUPT_DOWNLOAD = (
    tfds.core.download.download_manager.NonMatchingChecksumError,
    tfds.core.download.extractor.ExtractError,
)
_NETWORK_ERRORS = (
    requests.RequestException,
    tfds.download.DownloadError,  # An HTTP error status.
    ConnectionError,
    TimeoutError,
    socket.gaierror,
    urllib.error.URLError,
)
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def prepare_failure(error: BaseException, name: str, data_dir: str) -> str:
  """What `download_and_prepare`'s error means and what to do, from its chain of causes."""
  chain, e = [], error
  while e is not None and len(chain) < 20:
    chain.append(e)
    e = e.__cause__ or e.__context__

  def line(e: BaseException) -> str:
    # urllib3 repeats the whole cause chain in one line after "(Caused by": the root says it.
    text = (str(e).strip().splitlines() or ["no message"])[0].split(" (Caused by ")[0]
    return f"{type(e).__name__}: {text[:200]}"

  root = f"; cause: {line(chain[-1])}" if len(chain) > 1 else ""
  what = f"({line(error)}{root})"
  build = f"`tfds build {name} --data_dir=...`"
  for e in chain:
    if isinstance(e, ImportError):
      state = "is not installed" if isinstance(e, ModuleNotFoundError) else "does not import"
      return (
          f"tensorflow-datasets needs the Python module {e.name or '?'!r}, which {state} "
          f"{what}. Reinstall incres's requirements in this environment (`pip install -e .` in the "
          "incres checkout, or `pip install -r requirements.txt`) and run again."
      )
    if isinstance(e, _CORRUPT_DOWNLOAD):
      return (
          f"a downloaded file is damaged or does not match its recorded checksum {what}: the "
          "download was cut short or the source changed. Delete that file (under "
          f"{os.path.join(data_dir, 'downloads')}) and run again."
      )
    if isinstance(e, _NETWORK_ERRORS):
      return (
          f"the download failed: a network problem {what}. Check this machine's network access "
          f"(and proxy), or prepare the dataset on a machine with network access ({build}) and "
          "copy it into data_dir."
      )
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return (
          f"writing under {data_dir} failed: a disk problem {what}. Free disk space or make it "
          "writable, or set data_dir to a directory with room for the dataset."
      )
  return f"{what}. Prepare it elsewhere ({build}) and copy it into data_dir, or set data_dir."

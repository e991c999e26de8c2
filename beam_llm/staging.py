"""Model staging: a model directory on any Beam filesystem (gs://, s3://,
hdfs://, ...) is copied once per worker machine to a local cache, then loaded
from there like any local directory.

Several worker processes may ask for the same model at once: a file lock
makes one of them copy while the others wait, and a marker file written last
means a half-copied directory (a worker killed mid-copy) is never used.
"""
import fcntl
import hashlib
import logging
import os
import shutil
import time
from typing import Optional

_LOG = logging.getLogger('beam_llm.staging')
_COMPLETE = '.beam_llm_complete'
CACHE_ENV = 'BEAM_LLM_MODEL_CACHE'


def is_remote(path: str) -> bool:
  scheme = path.split('://', 1)[0] if '://' in path else ''
  # hf:// and kaggle:// presets are fetched by the model libraries themselves.
  return bool(scheme) and scheme not in ('file', 'hf', 'kaggle')


def cache_root() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'beam_llm', 'models')


def local_copy(path: str, cache_dir: Optional[str] = None) -> str:
  """A local directory holding the files under `path` (copied if remote)."""
  if not is_remote(path):
    return path[len('file://'):] if path.startswith('file://') else path
  root = cache_dir or cache_root()
  name = hashlib.sha256(path.rstrip('/').encode()).hexdigest()[:16]
  target = os.path.join(root, name)
  if os.path.exists(os.path.join(target, _COMPLETE)):
    return target
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, name + '.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not os.path.exists(os.path.join(target, _COMPLETE)):
      _copy_tree(path.rstrip('/'), target)
  return target


def _copy_tree(source: str, target: str) -> None:
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  start = time.monotonic()
  shutil.rmtree(target, ignore_errors=True)  # A partial earlier attempt.
  matches = FileSystems.match([source + '/**'])[0].metadata_list
  if not matches:
    raise FileNotFoundError(f'no files under model path {source!r}')
  total = 0
  for meta in matches:
    relative = meta.path[len(source):].lstrip('/')
    local = os.path.join(target, relative)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    # UNCOMPRESSED: copy bytes as they are, even for files named *.gz.
    with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED
                          ) as src, open(local, 'wb') as dst:
      shutil.copyfileobj(src, dst, length=16 << 20)
    total += meta.size_in_bytes
  with open(os.path.join(target, _COMPLETE), 'w') as f:
    f.write(source)
  _LOG.info('Staged %s (%d files, %.1f MB) to %s in %.1fs', source,
            len(matches), total / 1e6, target, time.monotonic() - start)

"""Identical requests are paid for once: an in-memory and on-disk answer cache.

The key is a hash of everything that decides the answer: the backend, where
it sends (base URL, endpoint), and the full request (model, prompt,
generation parameters). Only answers are cached, never failures.

- In memory, per worker process (every batch and thread of the process), with
  "single flight": while a request is in flight, an identical one waits for
  its answer instead of being sent again.
- Optionally on disk (`cache_dir`): one small JSON file per key, written
  atomically, so a re-run after a crash, or another process or worker
  sharing the directory, does not pay again for answers already received.
  Any Beam filesystem works (a local directory, gs://, s3://); a file that
  cannot be read is a miss, never an error.
"""
import concurrent.futures
import hashlib
import json
import logging
import os
import threading
import uuid
from typing import Any, Optional, Tuple

_LOG = logging.getLogger('beam_llm.GenerateText')

# Per-process bound on the in-memory cache; past it the oldest entries go.
_MAX_MEMORY_ENTRIES = 20_000


def cache_key(*parts: Any) -> str:
  text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


class ResponseCache:
  def __init__(self, cache_dir: Optional[str] = None):
    self._dir = cache_dir
    self._lock = threading.Lock()
    self._memory: dict = {}
    self._in_flight: dict = {}
    self._warned = False

  def claim(self, key: str) -> Tuple[Any, Optional[concurrent.futures.Future], bool]:
    """Looks `key` up in memory: (value, None, False) on a hit.

    On a miss, (None, future, owner). The first caller to miss owns `future`
    and must `settle` it once its request ends (after trying `read` and, on
    success, `write`: file I/O is left to the caller so that it can run on
    the request threads, not the DoFn's). Later callers get the same future
    (owner False) and wait on it: `future.result()` is (value, ok).
    """
    with self._lock:
      if key in self._memory:
        return self._memory[key], None, False
      if key in self._in_flight:
        return None, self._in_flight[key], False
      future = concurrent.futures.Future()
      self._in_flight[key] = future
      return None, future, True

  def settle(self, key: str, future, value: Any, ok: bool) -> None:
    """Publishes the owner's result; remembers `value` if `ok`."""
    with self._lock:
      if ok:
        self._remember(key, value)
      self._in_flight.pop(key, None)
    future.set_result((value, ok))

  def _remember(self, key, value):
    if len(self._memory) >= _MAX_MEMORY_ENTRIES:
      self._memory.pop(next(iter(self._memory)))
    self._memory[key] = value

  def _path(self, key: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(self._dir, key[:2], key + '.json')

  def read(self, key: str) -> Any:
    """The answer kept in cache_dir for `key`, or None."""
    if not self._dir:
      return None
    from apache_beam.io.filesystems import FileSystems
    try:
      with FileSystems.open(self._path(key)) as f:
        return json.loads(f.read().decode('utf-8'))
    except Exception:  # pylint: disable=broad-except
      return None  # Missing, half-written by a crashed run, unreadable.

  def write(self, key: str, value: Any) -> None:
    """Keeps an answer in cache_dir (if set); never raises."""
    if not self._dir:
      return
    from apache_beam.io.filesystems import FileSystems
    data = json.dumps(value, ensure_ascii=False).encode('utf-8')
    path = self._path(key)
    try:
      if FileSystems.get_scheme(path) in (None, 'file'):
        # Write then rename: readers never see half a file, even when
        # several processes answer the same key at once.
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.{uuid.uuid4().hex}.tmp'
        with open(tmp, 'wb') as f:
          f.write(data)
        os.replace(tmp, path)
      else:  # Object stores make an object visible only once it is complete.
        with FileSystems.create(path) as f:
          f.write(data)
    except Exception as exn:  # pylint: disable=broad-except
      # A cache that cannot be written costs money, not rows: say so once.
      if not self._warned:
        self._warned = True
        _LOG.warning('GenerateText: cannot write the response cache at %s '
                     '(%s); answers will not be kept', self._dir, exn)

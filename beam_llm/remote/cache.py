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

Used from the process's remote event loop only (caller.py), so it needs no
lock; file I/O goes to a thread, not the loop.
"""
import asyncio
import hashlib
import json
import logging
import os
import uuid
from typing import Any, Awaitable, Callable, Optional, Tuple

from beam_llm.remote.caller import in_thread

_LOG = logging.getLogger('beam_llm.remote')

# Per-process bound on the in-memory cache; past it the oldest entries go.
_MAX_MEMORY_ENTRIES = 20_000


def cache_key(*parts: Any) -> str:
  text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


class ResponseCache:
  def __init__(self, cache_dir: Optional[str] = None):
    self._dir = cache_dir
    self._memory: dict = {}
    self._in_flight: dict = {}  # key -> asyncio.Future of (value, ok)
    self._warned = False

  def claim(self, key: str):
    """Looks `key` up in memory: (value, None, False) on a hit; (None,
    future, False) while an identical request is in flight (await
    `future`: (value, ok)); (None, future, True) to the first to miss, which
    must `settle` it (after trying `read`, and `write` on success)."""
    if key in self._memory:
      return self._memory[key], None, False
    if key in self._in_flight:
      return None, self._in_flight[key], False
    future = asyncio.get_running_loop().create_future()
    self._in_flight[key] = future
    return None, future, True

  def settle(self, key: str, value: Any, ok: bool) -> None:
    """Publishes the owner's result; remembers `value` if `ok`."""
    if ok:
      if len(self._memory) >= _MAX_MEMORY_ENTRIES:
        self._memory.pop(next(iter(self._memory)))
      self._memory[key] = value
    self._in_flight.pop(key).set_result((value, ok))

  async def read(self, key: str) -> Any:
    """The answer kept in cache_dir for `key`, or None."""
    return await in_thread(self._read, key) if self._dir else None

  async def write(self, key: str, value: Any) -> bool:
    """Keeps an answer (JSON) in cache_dir, if there is one; never raises.
    True once it is there (the Batch API deletes a result file only then)."""
    return bool(self._dir) and await in_thread(self._write, key, value)

  async def get(
      self, key: str,
      make: Callable[[], Awaitable[Tuple[Any, bool, Any]]],
      encode: Callable[[Any], Any] = lambda value: value,
      decode: Callable[[Any], Any] = lambda kept: kept,
  ) -> Tuple[Any, bool, Any]:
    """(value, ok, made): the answer for `key` from memory, from an
    identical request in flight, from cache_dir, or else `make()`.

    `make()` returns (value, ok, made); only its caller gets `made` back (an
    Outcome: what was paid for), the others None. `encode` turns an answer
    into JSON for cache_dir, `decode` back (None: the file is no answer).
    """
    value, future, owner = self.claim(key)
    if future is None:
      return value, True, None
    if not owner:
      value, ok = await asyncio.shield(future)
      return value, ok, None
    value, ok, made = None, False, None
    try:
      kept = await self.read(key)
      value = decode(kept) if kept is not None else None
      if value is not None:
        ok = True
      else:
        value, ok, made = await make()
        if ok:
          await self.write(key, encode(value))
      return value, ok, made
    finally:  # Also when `make` raises: those waiting get a failed answer.
      self.settle(key, value, ok)

  def _path(self, key: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(self._dir, key[:2], key + '.json')

  def _read(self, key: str) -> Any:
    from apache_beam.io.filesystems import FileSystems
    try:
      with FileSystems.open(self._path(key)) as f:
        return json.loads(f.read().decode('utf-8'))
    except Exception:  # pylint: disable=broad-except
      return None  # Missing, half-written by a crashed run, unreadable.

  def _write(self, key: str, value: Any) -> bool:
    try:
      write_json(self._path(key), value)
      return True
    except Exception as exn:  # pylint: disable=broad-except
      # A cache that cannot be written costs money, not rows: say so once.
      if not self._warned:
        self._warned = True
        _LOG.warning('cannot write the response cache at %s (%s); answers '
                     'will not be kept', self._dir, exn)
      return False


def write_json(path: str, value: Any) -> None:
  """Writes `value` as JSON at `path` (any Beam filesystem) so that a
  reader never sees half a file, even when several processes write the
  same path at once."""
  from apache_beam.io.filesystems import FileSystems
  data = json.dumps(value, ensure_ascii=False).encode('utf-8')
  if FileSystems.get_scheme(path) in (None, 'file'):  # Write, then rename.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.{uuid.uuid4().hex}.tmp'
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  else:  # Object stores make an object visible only once it is complete.
    with FileSystems.create(path) as f:
      f.write(data)

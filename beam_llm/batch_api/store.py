"""Which batches hold which rows: remembered per worker process, and kept in
`cache_dir` (`batch_api/TARGET_HASH/BATCH_ID.json`: batch ids are unique
per service, not across services) as soon as a batch is submitted,
before anything waits on it.

A file's record is kept before its upload (`pending`, with a tag), then
replaced by its batch's record once the batch exists: a crash in between
leaves the tag, by which a rerun finds the batch among the provider's. A
record holds the batch id, its endpoint, when it was submitted, the
`custom_id`s of its lines (a hash of each request: the response cache's
key, the same in every run), and once the batch has ended its status and
result file ids. Statuses are client.py's, whatever the provider. Rows are found by custom_id, not by the file they were
sent in, so a rerun that groups rows differently (or another worker)
still finds the open batches that hold them and waits for those instead of
submitting again; finished ones have their result files read again.
Records hold ids and statuses only: never a prompt, an answer or a key.

Answers read from a batch go into the response cache; refused lines (an
error row each) are kept here too, one small file per custom_id
(`refused/CUSTOM_ID.json`: the error type and the provider's redacted
message), so that once both are kept the provider's result files can be
deleted (rounds.py) and a rerun still finds every settled row.
"""
import hashlib
import json
import logging
import os
import threading
import urllib.parse
from typing import Dict, Iterable, List, Optional

from beam_llm.remote import cache

_LOG = logging.getLogger('beam_llm.GenerateText')
_FOLDER = 'batch_api'
# `gone`: the provider no longer knows the batch (deleted, or past retention).
FINAL = ('completed', 'failed', 'expired', 'cancelled', 'gone')
# A file about to be submitted, kept before the upload with the tag its
# batch will carry (OpenAI: its metadata; Gemini: its display name), by
# which a rerun finds it (rounds.Batches._submit / _resolve).
PENDING = 'pending'

# One store per cache_dir (None: memory only) and service per worker process.
_STORES: Dict[tuple, 'BatchStore'] = {}
_STORES_LOCK = threading.Lock()


def store_for(cache_dir: Optional[str], target: str) -> 'BatchStore':
  with _STORES_LOCK:
    if (cache_dir, target) not in _STORES:
      _STORES[cache_dir, target] = BatchStore(cache_dir, target)
    return _STORES[cache_dir, target]


class BatchStore:
  def __init__(self, cache_dir: Optional[str], target: str):
    self._dir = cache_dir
    self._folder = hashlib.sha256(target.encode('utf-8')).hexdigest()[:16]
    self._lock = threading.RLock()
    self._records: Dict[str, dict] = {}
    self._by_id: Dict[str, List[str]] = {}  # custom_id -> batch ids
    self._warned = False

  def refresh(self) -> None:
    """Loads the records other runs and workers have kept in cache_dir."""
    if not self._dir:
      return
    from apache_beam.io.filesystems import FileSystems
    pattern = FileSystems.join(self._dir, _FOLDER, self._folder, '*.json')
    try:
      paths = [m.path for r in FileSystems.match([pattern])
               for m in r.metadata_list]
    except Exception:  # pylint: disable=broad-except
      return  # No folder yet.
    for path in paths:
      batch_id = urllib.parse.unquote(os.path.basename(path)[:-len('.json')])
      with self._lock:
        known = self._records.get(batch_id)
      if known is not None and known.get('status') in FINAL:
        continue
      try:
        with FileSystems.open(path) as f:
          record = json.loads(f.read().decode('utf-8'))
      except Exception:  # pylint: disable=broad-except
        continue  # Half-written by a crashed run: as if never kept.
      if isinstance(record, dict) and record.get('batch_id') == batch_id:
        self._remember(record)

  def _remember(self, record: dict) -> None:
    with self._lock:
      new = record['batch_id'] not in self._records
      self._records[record['batch_id']] = record
      if new:
        for custom_id in record['custom_ids']:
          self._by_id.setdefault(custom_id, []).append(record['batch_id'])

  def records_with(self, custom_ids: Iterable[str]) -> List[dict]:
    """Records of the batches that hold any of these custom_ids."""
    with self._lock:
      ids = {b for c in custom_ids for b in self._by_id.get(c, ())}
      return [self._records[b] for b in sorted(ids)]

  def records(self) -> List[dict]:
    """Every record known (kept by any run, once `refresh`ed)."""
    with self._lock:
      return list(self._records.values())

  def rounds(self, custom_id: str) -> List[dict]:
    """The batches this custom_id went in, in any run that kept them."""
    with self._lock:
      return [self._records[b] for b in self._by_id.get(custom_id, ())]

  def discard(self, record: dict) -> None:
    """Forgets a record (a pending file's, once replaced or never sent)."""
    batch_id = record['batch_id']
    with self._lock:
      if self._records.pop(batch_id, None) is not None:
        for custom_id in record['custom_ids']:
          ids = self._by_id.get(custom_id, [])
          if batch_id in ids:
            ids.remove(batch_id)
    if self._dir:
      from apache_beam.io.filesystems import FileSystems
      try:
        FileSystems.delete([self._path(batch_id)])
      except Exception:  # pylint: disable=broad-except
        pass  # Left behind, it resolves to its batch again (harmless).

  def _path(self, batch_id: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    # Quoted: a Gemini batch id is `batches/ID`.
    return FileSystems.join(self._dir, _FOLDER, self._folder,
                            urllib.parse.quote(batch_id, safe='') + '.json')

  def save(self, record: dict) -> bool:
    """Remembers a record and keeps it in cache_dir (if set); True once
    it is there."""
    self._remember(record)
    return bool(self._dir) and self._write(self._path(record['batch_id']),
                                           record)

  def keep_refused(self, refused: Dict[str, dict]) -> bool:
    """Keeps refused lines (custom_id -> {error_type, msg}) in cache_dir;
    True once all are there."""
    return bool(self._dir) and all([
        self._write(self._refused_path(c), failure)
        for c, failure in refused.items()])

  def refused(self, custom_id: str) -> Optional[dict]:
    """A refused line kept by `keep_refused` (by any run), or None."""
    if not self._dir:
      return None
    from apache_beam.io.filesystems import FileSystems
    try:
      with FileSystems.open(self._refused_path(custom_id)) as f:
        kept = json.loads(f.read().decode('utf-8'))
    except Exception:  # pylint: disable=broad-except
      return None  # Never kept, or half-written by a crashed run.
    return kept if isinstance(kept, dict) and 'msg' in kept else None

  def _refused_path(self, custom_id: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(self._dir, _FOLDER, self._folder, 'refused',
                            custom_id + '.json')

  def _write(self, path: str, value: dict) -> bool:
    try:
      cache.write_json(path, value)
      return True
    except Exception as exn:  # pylint: disable=broad-except
      # Rows still come out; only a rerun's resume is lost. Say so once.
      if not self._warned:
        self._warned = True
        _LOG.warning('GenerateText: cannot keep Batch API state in %s (%s); '
                     'a rerun will submit these rows again', self._dir, exn)
      return False

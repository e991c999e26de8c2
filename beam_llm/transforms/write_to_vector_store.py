"""WriteToVectorStore: upsert rows with vectors into a vector store."""
import json
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows
from beam_llm import stores
from beam_llm.stores import calls
from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import Record

_OWNER = 'WriteToVectorStore'


class WriteToVectorStore(beam.PTransform):
  """Writes each row's vector, text and ids to a vector store (upsert).

  The `store` string picks the store: a file path ending in `.db` is a
  Milvus Lite file (embedded, no server; one process at a time, so for
  FnApiRunner / DirectRunner), `http://host:port` a Milvus server (its
  credentials, if any, from MILVUS_TOKEN on the workers), and
  `postgresql://...` PostgreSQL with pgvector (the Unix-socket form
  `postgresql://user@/db?host=/socket/dir` too; the password comes from
  PGPASSWORD, never from the pipeline). The store is checked when the
  pipeline is built: one that cannot be reached fails then, naming it.

  The collection (Milvus) or table (PostgreSQL) is created on first write,
  with a cosine-similarity index, sized to the first vector. Rows are
  upserted by `id`, so writing the same chunks again replaces them: no
  duplicates. The written rows come out on the main output. A row the store
  cannot take (no id or vector, a vector of another size than the
  collection's, a value the store refuses) goes to the error output
  (`bad_record`). A store that is down or restarting is retried, with a
  reconnect, for about half a minute (the remote-call policy's defaults,
  docs/remote.md); an outage that lasts longer fails the bundle (and so the
  run, unless the runner retries it) rather than turning rows into errors.

  Args:
    store: Where to write: a Milvus Lite path, a Milvus URI or a PostgreSQL
      URI (see above).
    collection: Collection or table name. Defaults to `documents`.
    id: Field with each entry's unique id (the primary key). Defaults to
      `chunk_id`, as ChunkText makes it.
    vector: Field with the vector. Defaults to `embedding`.
    text: Field with the text stored beside the vector. Defaults to `text`.
    doc_id: Field with the id of the source document, stored so a search can
      say where a hit came from. Defaults to `id`.
    metadata: Further fields to store as metadata (a JSON object), which
      SearchVectorStore can `filter` on and returns with each hit.
    index: Vector index to create with a new collection. Milvus: an index
      type (`AUTOINDEX`, the default, `FLAT`, `HNSW`, ...); PostgreSQL:
      `hnsw` (default) or `none` (exact scans).
    batch_size: Rows per upsert. Defaults to 64.
    error_handling: `{output: <name>}` sends rows that cannot be written to
      that output as Beam YAML error rows instead of failing the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      store: str,
      collection: str = 'documents',
      id: str = 'chunk_id',  # pylint: disable=redefined-builtin
      vector: str = 'embedding',
      text: str = 'text',
      doc_id: str = 'id',
      metadata: Optional[Sequence[str]] = None,
      index: Optional[str] = None,
      batch_size: int = 64,
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    if batch_size < 1:
      _config.fail(_OWNER, 'batch_size', f'must be at least 1, got {batch_size}')
    self._store = stores.create_store(_OWNER, store, collection, index=index)
    self._fields = dict(id=id, vector=vector, text=text, doc_id=doc_id)
    self._metadata = list(metadata or [])
    self._batch_size = batch_size
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    for key, field in self._fields.items():
      _rows.require_field(_OWNER, key, field, fields)
    for field in self._metadata:
      _rows.require_field(_OWNER, 'metadata', field, fields)
    batches = pcoll | 'Batch' >> beam.BatchElements(
        min_batch_size=1, max_batch_size=self._batch_size)
    return _rows.split_outputs(
        batches,
        'Upsert',
        _UpsertDoFn(self._store, self._fields, self._metadata),
        pcoll.element_type,
        self._error_output,
        element_type=pcoll.element_type)


def _record(row, fields: dict, metadata: list) -> Record:
  values = _rows.as_dict(row)
  vector = values.get(fields['vector'])
  if vector is None or len(vector) == 0:
    raise BadRecord(f'field {fields["vector"]!r} holds no vector')
  try:
    vector = [float(x) for x in vector]
  except (TypeError, ValueError):
    raise BadRecord(f'field {fields["vector"]!r} is not a list of numbers') from None
  for key in ('id', 'doc_id'):
    value = values.get(fields[key])
    if value is None or (isinstance(value, str) and not value.strip()):
      raise BadRecord(f'field {fields[key]!r} ({key}) is empty')
  text = values.get(fields['text'])
  if not isinstance(text, str):
    raise BadRecord(f'field {fields["text"]!r} holds no text')
  meta = json.loads(json.dumps(
      {name: values.get(name) for name in metadata}, default=str))
  return Record(id=str(values[fields['id']]), vector=vector, text=text,
                doc_id=str(values[fields['doc_id']]), metadata=meta)


class _UpsertDoFn(beam.DoFn):
  def __init__(self, store, fields: dict, metadata: list):
    self._store = store
    self._fields = fields
    self._metadata = metadata
    self._written = Metrics.counter('beam_llm.WriteToVectorStore', 'written')
    self._failed = Metrics.counter('beam_llm.WriteToVectorStore', 'failed')

  def setup(self):
    self._calls = calls.StoreCaller(self._store)
    self._calls.call('connect', self._store.connect)
    self._dims = set()  # Vector sizes already checked against the collection.

  def teardown(self):
    self._store.close()

  def process(self, batch):
    ready = []
    for row in batch:
      try:
        record = _record(row, self._fields, self._metadata)
        dim = len(record.vector)
        if dim not in self._dims:
          self._calls.call('create collection',
                           lambda: self._store.ensure_collection(dim))
          self._dims.add(dim)
        ready.append((row, record))
      except BadRecord as exn:
        yield from self._error(row, str(exn), 'bad_record')
    yield from self._upsert(ready)

  def _upsert(self, ready: list):
    """Upserts, retried through outages (stores/calls.py: one that outlasts
    the retries fails the bundle); a batch the store refuses for a row's
    sake is split to find that row."""
    if not ready:
      return
    records = [record for _, record in ready]
    try:
      self._calls.call('upsert', lambda: self._store.upsert(records))
    except BadRecord as exn:
      if len(ready) == 1:
        yield from self._error(ready[0][0], str(exn), 'bad_record')
        return
      for one in ready:
        yield from self._upsert([one])
      return
    self._written.inc(len(ready))
    for row, _ in ready:
      yield row

  def _error(self, row, msg: str, error_type: str):
    self._failed.inc()
    yield from _rows.tag_error(_rows.error_row(
        row, f'{_OWNER} ({self._store.describe()}): {msg}', error_type))

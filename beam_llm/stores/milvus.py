"""Milvus: a Milvus Lite file (embedded, no server) or a Milvus server
(standalone, cluster, Zilliz Cloud), through the same pymilvus MilvusClient
Beam's apache_beam.ml.rag Milvus writer and search handler use.

Milvus Lite locks its file to one process: use it with runners that keep the
pipeline in one worker process (FnApiRunner, DirectRunner with one worker);
with more processes, use a Milvus server (`python -m milvus_lite server
--data-dir D --port P` serves one from the same package).
"""
import json
import os
import threading
from typing import Any, List, Mapping, Optional, Sequence

from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import Hit
from beam_llm.stores.base import Record
from beam_llm.stores.base import StoreUnavailable
from beam_llm.stores.base import VectorStore

_MAX_ID = 512
_MAX_TEXT = 65535
_CONNECT_TIMEOUT_SECS = 30  # A loaded or just-started server can be slow to answer.
TOKEN_ENV = 'MILVUS_TOKEN'

# One client per store URI per process: a Milvus Lite file admits one
# process, and every DoFn instance of that process shares its client.
_CLIENTS: dict = {}
_CLIENTS_LOCK = threading.Lock()


def _is_lite(uri: str) -> bool:
  return '://' not in uri or uri.startswith('file://')


# pymilvus pings every 10 s even on an idle channel; a server that enforces
# gRPC's default ping policy (milvus_lite's server mode does) answers with
# GOAWAY "too many pings", and the next call on the shared channel fails
# UNAVAILABLE. Ping only while a call is in flight.
GRPC_OPTIONS = {'grpc.keepalive_permit_without_calls': False}


def _lite_path(uri: str) -> str:
  return os.path.abspath(uri[len('file://'):] if uri.startswith('file://') else uri)


def _client(uri: str):
  with _CLIENTS_LOCK:
    if uri not in _CLIENTS:
      from pymilvus import MilvusClient
      if _is_lite(uri):
        path = _lite_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _CLIENTS[uri] = MilvusClient(path)
      else:
        _CLIENTS[uri] = MilvusClient(
            uri=uri, token=os.environ.get(TOKEN_ENV, ''),
            timeout=_CONNECT_TIMEOUT_SECS, grpc_options=GRPC_OPTIONS)
    return _CLIENTS[uri]


def _expr_value(value: Any) -> str:
  if isinstance(value, bool):
    return 'true' if value else 'false'
  return json.dumps(value)  # Numbers as they are; strings double-quoted.


def filter_expression(filter_: Optional[Mapping[str, Any]]) -> str:
  parts = []
  for key, value in (filter_ or {}).items():
    field = 'doc_id' if key == 'doc_id' else f'metadata[{json.dumps(key)}]'
    parts.append(f'{field} == {_expr_value(value)}')
  return ' and '.join(parts)


class MilvusStore(VectorStore):
  kind = 'Milvus'

  def __init__(self, uri: str, collection: str, index: Optional[str] = None):
    super().__init__(uri, collection, index or 'AUTOINDEX')
    if _is_lite(uri):
      self.kind = 'Milvus Lite'
    self._client = None
    self._loaded = False

  def check_at_build(self, must_exist: bool) -> None:
    if _is_lite(self.uri):
      path = _lite_path(self.uri)
      if not path.endswith('.db'):
        raise StoreUnavailable(
            f'{self.describe()}: a Milvus Lite file name must end in .db')
      if must_exist and not os.path.exists(path):
        raise StoreUnavailable(
            f'{self.describe()}: no such file (run the ingest pipeline first)')
      # Not opened here: the file admits one process, and it is the worker's.
      return
    try:
      from pymilvus import MilvusClient
      client = MilvusClient(uri=self.uri, token=os.environ.get(TOKEN_ENV, ''),
                            timeout=_CONNECT_TIMEOUT_SECS, grpc_options=GRPC_OPTIONS)
      try:
        exists = client.has_collection(self.collection)
      finally:
        client.close()
    except Exception as exn:  # pylint: disable=broad-except
      raise StoreUnavailable(
          f'{self.describe()}: cannot connect ({type(exn).__name__}: '
          f'{_short(exn)})') from None
    if must_exist and not exists:
      raise StoreUnavailable(
          f'{self.describe()}: the collection does not exist (run the ingest '
          'pipeline first)')

  def connect(self) -> None:
    try:
      self._client = _client(self.uri)
    except Exception as exn:  # pylint: disable=broad-except
      raise StoreUnavailable(
          f'{self.describe()}: cannot open ({type(exn).__name__}: '
          f'{_short(exn)})') from exn

  def is_transient(self, exn: BaseException) -> bool:
    from pymilvus.exceptions import MilvusException
    from pymilvus.exceptions import MilvusUnavailableException
    if isinstance(exn, MilvusUnavailableException):
      return True
    code = getattr(exn, 'code', None)
    if callable(code):  # grpc.RpcError.code()
      code = code()
    name = getattr(code, 'name', str(code))
    if name in ('UNAVAILABLE', 'DEADLINE_EXCEEDED'):  # grpc.RpcError.
      return True
    text = str(exn).lower()
    return (isinstance(exn, MilvusException) and any(
        w in text for w in ('unavailable', 'connect', 'deadline', 'timeout')
    )) or super().is_transient(exn)

  def dimension(self) -> Optional[int]:
    if not self._client.has_collection(self.collection):
      return None
    for field in self._client.describe_collection(self.collection)['fields']:
      if field['name'] == 'vector':
        return int(field['params']['dim'])
    raise StoreUnavailable(
        f'{self.describe()}: the collection has no field named vector '
        '(not made by beam-llm?)')

  def ensure_collection(self, dim: int) -> None:
    existing = self.dimension()
    if existing is None:
      from pymilvus import DataType
      from pymilvus import MilvusClient
      schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
      schema.add_field('id', DataType.VARCHAR, is_primary=True, max_length=_MAX_ID)
      schema.add_field('vector', DataType.FLOAT_VECTOR, dim=dim)
      schema.add_field('text', DataType.VARCHAR, max_length=_MAX_TEXT)
      schema.add_field('doc_id', DataType.VARCHAR, max_length=_MAX_ID)
      schema.add_field('metadata', DataType.JSON)
      index = self._client.prepare_index_params()
      index.add_index(
          field_name='vector', index_type=self.index, metric_type='COSINE')
      try:
        self._client.create_collection(self.collection, schema=schema)
      except Exception:  # Another worker may have made it meanwhile.
        if self.dimension() is None:
          raise
      if not self._client.list_indexes(self.collection, field_name='vector'):
        # Not waited for (sync=False): Milvus Lite lacks the call the wait
        # uses, and loading the collection for search waits anyway.
        self._client.create_index(self.collection, index, sync=False)
      existing = self.dimension()
    if existing != dim:
      raise BadRecord(
          f'the vector has {dim} dimensions but collection '
          f'{self.collection!r} holds {existing}-dimensional vectors (another '
          'embedding model?)')

  def upsert(self, records: List[Record]) -> None:
    rows = []
    for r in records:
      if len(r.id.encode()) > _MAX_ID or len(r.doc_id.encode()) > _MAX_ID:
        raise BadRecord(f'ids longer than {_MAX_ID} bytes do not fit Milvus')
      if len(r.text.encode()) > _MAX_TEXT:
        raise BadRecord(f'text longer than {_MAX_TEXT} bytes does not fit '
                        'Milvus (chunk it smaller)')
      rows.append({'id': r.id, 'vector': [float(x) for x in r.vector],
                   'text': r.text, 'doc_id': r.doc_id,
                   'metadata': dict(r.metadata)})
    self._client.upsert(self.collection, rows)

  def search(
      self,
      vectors: List[Sequence[float]],
      top_k: int,
      filter_: Optional[Mapping[str, Any]] = None) -> List[List[Hit]]:
    if not self._loaded:  # A server keeps collections released until loaded.
      self._client.load_collection(self.collection)
      self._loaded = True
    results = self._client.search(
        self.collection,
        data=[[float(x) for x in v] for v in vectors],
        limit=top_k,
        filter=filter_expression(filter_),
        output_fields=['text', 'doc_id', 'metadata'],
        search_params={'metric_type': 'COSINE'})
    return [[
        Hit(chunk_id=str(h['id']),
            doc_id=h['entity']['doc_id'],
            text=h['entity']['text'],
            score=float(h['distance']),
            metadata=h['entity'].get('metadata') or {}) for h in hits
    ] for hits in results]

def _short(exn: BaseException) -> str:
  text = str(exn).strip().splitlines()
  return (text[0] if text else '')[:300]

"""Vector stores, chosen by the `store` string of WriteToVectorStore and
SearchVectorStore: a path is a Milvus Lite file, http(s)://host:port a Milvus
server, postgresql://... PostgreSQL with pgvector.

Each store is one module behind `base.VectorStore`; its client library is
imported only when a pipeline uses it.
"""
import importlib

from beam_llm import _config
from beam_llm.stores.base import Hit
from beam_llm.stores.base import Record
from beam_llm.stores.base import StoreUnavailable
from beam_llm.stores.base import VectorStore

_MILVUS = 'beam_llm.stores.milvus:MilvusStore'
_PGVECTOR = 'beam_llm.stores.pgvector:PgVectorStore'
# What each store's client needs (all in the [rag] extra), checked at build
# time whatever the reachability setting: a missing library is one message
# naming the extra, not a StoreUnavailable mid-run.
_MODULES = {
    'Milvus Lite': ('pymilvus', 'milvus_lite'),
    'Milvus': ('pymilvus',),
    'PostgreSQL': ('psycopg', 'pgvector'),
}


def store_class(owner: str, store: str) -> type:
  """The VectorStore class that serves the `store` string."""
  if not isinstance(store, str) or not store.strip():
    _config.fail(owner, 'store',
                 'must be a Milvus Lite file path (kb.db), a Milvus server '
                 'URI (http://host:19530) or a postgresql:// URI')
  scheme = store.split('://', 1)[0].lower() if '://' in store else ''
  if scheme in ('', 'file', 'http', 'https', 'tcp', 'grpc'):
    target = _MILVUS
  elif scheme in ('postgresql', 'postgres'):
    target = _PGVECTOR
  else:
    _config.fail(owner, 'store',
                 f'has an unknown scheme {scheme!r}; use a file path (Milvus '
                 'Lite), http://host:port (Milvus) or postgresql://... '
                 '(pgvector)')
  module, cls = target.split(':')
  return getattr(importlib.import_module(module), cls)


def create_store(
    owner: str,
    store: str,
    collection: str,
    index=None,
    must_exist: bool = False) -> VectorStore:
  """The store for a transform's options, checked now (at pipeline build):
  a store that cannot be reached, or a collection a search needs that does
  not exist, is a StoreUnavailable error naming the transform and the store.
  """
  from beam_llm.stores.base import check_collection_name
  problem = check_collection_name(collection)
  if problem:
    _config.fail(owner, 'collection', problem)
  try:
    instance = store_class(owner, store)(store, collection, index=index)
  except ValueError as exn:
    _config.fail(owner, 'index', str(exn))
  _config.require_extra(owner, f'the {instance.kind} store', 'rag',
                        _MODULES.get(instance.kind, ()))
  if not _config.reachability_checks():
    return instance  # `beam-llm validate` offline: the store is not contacted.
  try:
    instance.check_at_build(must_exist=must_exist)
  except StoreUnavailable as exn:
    raise StoreUnavailable(f'{owner}: store {exn}') from None
  return instance


__all__ = ['Hit', 'Record', 'StoreUnavailable', 'VectorStore', 'create_store',
           'store_class']

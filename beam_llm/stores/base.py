"""The one small interface every vector store implements.

A store is built at pipeline construction (plain, picklable options only),
checked there (`check_at_build`: reachable, collection present when it must
be), then connected once per worker process (`connect`). Vectors are compared
by cosine similarity everywhere, and a hit's `score` is that similarity, so
results are comparable across stores.
"""
import dataclasses
import re
from typing import Any, List, Mapping, Optional, Sequence

from beam_llm.row_failures import ServiceOutage

# Identifiers every store accepts as a collection / table name.
_NAME = re.compile(r'^[A-Za-z_][A-Za-z0-9_]{0,62}$')


class StoreUnavailable(ServiceOutage):
  """The store cannot be reached or used at all: fails the pipeline."""


class BadRecord(ValueError):
  """One record this store cannot take (becomes an error row)."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One chunk to upsert: `id` is its primary key."""
  id: str
  vector: Sequence[float]
  text: str
  doc_id: str
  metadata: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Hit:
  """One search result, best first; `score` is the cosine similarity."""
  chunk_id: str
  doc_id: str
  text: str
  score: float
  metadata: Mapping[str, Any]


def check_collection_name(name: str) -> Optional[str]:
  if not isinstance(name, str) or not _NAME.match(name):
    return ('must be a name of letters, digits and underscores starting with '
            f'a letter or underscore (at most 63), got {name!r}')
  return None


def check_filter(filter_: Optional[Mapping[str, Any]]) -> Optional[str]:
  """Why a metadata filter cannot be used, or None.

  Filters are equality tests, ANDed: `{category: hours, doc_id: f3}`;
  `doc_id` tests the document id, any other key a metadata field.
  """
  if filter_ is None:
    return None
  if not isinstance(filter_, Mapping):
    return 'must be a mapping of field: value'
  for key, value in filter_.items():
    if not isinstance(key, str) or not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', key):
      return f'has a key {key!r} that is not a plain field name'
    if not isinstance(value, (str, int, float, bool)):
      return f'has a value for {key!r} that is not a string, number or boolean'
  return None


def redact_uri(uri: str) -> str:
  """The store URI with any password replaced, for messages and logs."""
  return re.sub(r'(://[^:/@?]*:)[^@/?]*@', r'\1***@', uri)


class VectorStore:
  """A collection of (id, vector, text, doc_id, metadata) records.

  Subclasses implement the methods below; the transforms own batching,
  error rows and when to connect.
  """
  kind = 'store'

  def __init__(self, uri: str, collection: str, index: Optional[str] = None):
    self.uri = uri
    self.collection = collection
    self.index = index

  def describe(self) -> str:
    return f'{self.kind} {redact_uri(self.uri)!r}, collection {self.collection!r}'

  # -- to implement -------------------------------------------------------
  def check_at_build(self, must_exist: bool) -> None:
    """Raise StoreUnavailable if the store cannot be used (cheap, at build)."""

  def connect(self) -> None:
    """Open the client; called once per worker process (DoFn setup)."""

  def close(self) -> None:
    pass

  def is_transient(self, exn: BaseException) -> bool:
    """Whether `exn` means the store or the network failed (down,
    restarting, connection dropped, timed out): retried with a reconnect
    (stores/calls.py). Not for a row's problem (raise BadRecord) or a bug."""
    return isinstance(exn, (ConnectionError, TimeoutError))

  def ensure_collection(self, dim: int) -> None:
    """Create the collection and its vector index when missing; check `dim`
    against an existing one (raise BadRecord on a mismatch)."""
    raise NotImplementedError

  def dimension(self) -> Optional[int]:
    """The vector size of the existing collection, None if it is missing."""
    raise NotImplementedError

  def upsert(self, records: List[Record]) -> None:
    """Insert or replace the records by id. Visible to search on return."""
    raise NotImplementedError

  def search(
      self,
      vectors: List[Sequence[float]],
      top_k: int,
      filter_: Optional[Mapping[str, Any]] = None) -> List[List[Hit]]:
    """The top_k hits per query vector, best first."""
    raise NotImplementedError

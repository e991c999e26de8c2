"""PostgreSQL with the pgvector extension (Cloud SQL, AlloyDB, self-run),
through psycopg 3 and the pgvector package. Beam's own Postgres writer goes
through Java/JDBC expansion jars; this one is plain Python.

The URI is libpq's: postgresql://user@host:5432/db, or with a Unix socket
postgresql://user@/db?host=/run/postgresql. Keep passwords out of the
pipeline: libpq reads PGPASSWORD (or ~/.pgpass) from the worker's environment.
"""
import json
from typing import Any, List, Mapping, Optional, Sequence

from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import Hit
from beam_llm.stores.base import Record
from beam_llm.stores.base import StoreUnavailable
from beam_llm.stores.base import VectorStore

_CONNECT_TIMEOUT_SECS = 10
_INDEXES = ('hnsw', 'none')


def _connect(uri: str):
  import psycopg
  return psycopg.connect(uri, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECS)


class PgVectorStore(VectorStore):
  kind = 'PostgreSQL'

  def __init__(self, uri: str, collection: str, index: Optional[str] = None):
    super().__init__(uri, collection, (index or 'hnsw').lower())
    if self.index not in _INDEXES:
      raise ValueError(
          f'index {index!r} is not one pgvector takes here; choose one of '
          f'{", ".join(_INDEXES)}')
    self._conn = None

  def _table(self):
    from psycopg import sql
    return sql.Identifier(self.collection)

  def check_at_build(self, must_exist: bool) -> None:
    try:
      with _connect(self.uri) as conn:
        vector = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        exists = conn.execute(
            'SELECT to_regclass(%s) IS NOT NULL', (self.collection,)).fetchone()[0]
    except Exception as exn:  # pylint: disable=broad-except
      raise StoreUnavailable(
          f'{self.describe()}: cannot connect ({type(exn).__name__}: '
          f'{_short(exn)})') from None
    if not vector:
      raise StoreUnavailable(
          f'{self.describe()}: the server has no pgvector extension')
    if must_exist and not exists:
      raise StoreUnavailable(
          f'{self.describe()}: the table does not exist (run the ingest '
          'pipeline first)')

  def connect(self) -> None:
    from pgvector.psycopg import register_vector
    try:
      self._conn = _connect(self.uri)
      has = self._conn.execute(
          "SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
      if not has:
        self._conn.execute('CREATE EXTENSION IF NOT EXISTS vector')
      register_vector(self._conn)
    except Exception as exn:  # pylint: disable=broad-except
      raise StoreUnavailable(
          f'{self.describe()}: cannot open ({type(exn).__name__}: '
          f'{_short(exn)})') from exn

  def close(self) -> None:
    if self._conn is not None:
      self._conn.close()
      self._conn = None

  def is_transient(self, exn: BaseException) -> bool:
    import psycopg
    # OperationalError: the server went away, is shutting down or starting
    # up, or could not be reached; InterfaceError: the connection is closed.
    return (isinstance(exn, (psycopg.OperationalError, psycopg.InterfaceError))
            or super().is_transient(exn))

  def dimension(self) -> Optional[int]:
    row = self._conn.execute(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attname = 'embedding' AND NOT attisdropped",
        (self.collection,)).fetchone()
    return None if row is None else int(row[0])

  def ensure_collection(self, dim: int) -> None:
    from psycopg import sql
    existing = self.dimension()
    if existing is None:
      try:
        with self._conn.transaction():
          self._conn.execute(
              sql.SQL(
                  'CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, '
                  'embedding vector({}) NOT NULL, text text NOT NULL, '
                  'doc_id text NOT NULL, metadata jsonb NOT NULL)').format(
                      self._table(), sql.Literal(int(dim))))
          if self.index == 'hnsw':
            self._conn.execute(
                sql.SQL('CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw '
                        '(embedding vector_cosine_ops)').format(
                            sql.Identifier(f'{self.collection}_embedding_idx'),
                            self._table()))
      except Exception:  # Another worker may have made it meanwhile.
        if self.dimension() is None:
          raise
      existing = self.dimension()
    if existing != dim:
      raise BadRecord(
          f'the vector has {dim} dimensions but table {self.collection!r} '
          f'holds {existing}-dimensional vectors (another embedding model?)')

  def upsert(self, records: List[Record]) -> None:
    import numpy as np
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
    query = sql.SQL(
        'INSERT INTO {} (id, embedding, text, doc_id, metadata) '
        'VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET '
        'embedding = EXCLUDED.embedding, text = EXCLUDED.text, '
        'doc_id = EXCLUDED.doc_id, metadata = EXCLUDED.metadata').format(
            self._table())
    rows = [(r.id, np.asarray(r.vector, dtype=np.float32), r.text, r.doc_id,
             Jsonb(dict(r.metadata))) for r in records]
    try:
      with self._conn.transaction():
        with self._conn.cursor() as cur:
          cur.executemany(query, rows)
    except (psycopg.DataError, psycopg.IntegrityError) as exn:
      raise BadRecord(f'{type(exn).__name__}: {_short(exn)}') from exn

  def search(
      self,
      vectors: List[Sequence[float]],
      top_k: int,
      filter_: Optional[Mapping[str, Any]] = None) -> List[List[Hit]]:
    import numpy as np
    import psycopg
    from psycopg import sql
    from psycopg.types.json import Jsonb
    where, params = [], []
    meta = {k: v for k, v in (filter_ or {}).items() if k != 'doc_id'}
    if 'doc_id' in (filter_ or {}):
      where.append(sql.SQL('doc_id = %s'))
      params.append(str(filter_['doc_id']))
    if meta:
      where.append(sql.SQL('metadata @> %s'))
      params.append(Jsonb(meta))
    query = sql.SQL(
        'SELECT id, doc_id, text, metadata, 1 - (embedding <=> %s) AS score '
        'FROM {} {} ORDER BY embedding <=> %s LIMIT %s').format(
            self._table(),
            sql.SQL('WHERE ') + sql.SQL(' AND ').join(where) if where else sql.SQL(''))
    results = []
    for v in vectors:
      q = np.asarray(v, dtype=np.float32)
      try:
        rows = self._conn.execute(query, [q, *params, q, top_k]).fetchall()
      except psycopg.DataError as exn:  # E.g. a vector of another size.
        raise BadRecord(f'{type(exn).__name__}: {_short(exn)}') from exn
      results.append([
          Hit(chunk_id=r[0], doc_id=r[1], text=r[2], score=float(r[4]),
              metadata=r[3] if isinstance(r[3], dict) else json.loads(r[3]))
          for r in rows
      ])
    return results

def _short(exn: BaseException) -> str:
  text = str(exn).strip().splitlines()
  return (text[0] if text else '')[:300]

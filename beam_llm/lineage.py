"""Lineage: which run, model, prompt template and schema produced a row.

The one place for the policy; RenderPrompt, GenerateText and ParseJSON map
onto it when given `lineage: true` (docs/lineage.md).

- Layout: one nested field `lineage` per row, of type `LINEAGE` (below), every
  field nullable. Each transform keeps what an earlier one put there and fills
  in its own part, so a row that went through RenderPrompt -> GenerateText ->
  ParseJSON carries the template hash, the model and both schema hashes.
- Hashes: sha256, first 12 hex digits (`HASH_CHARS`), of the source text (a
  template) or of canonical JSON (sorted keys, no spaces, UTF-8) of a schema or
  of a chat's `[{role, content}, ...]` message templates. So a reader can
  recompute them from the files.
- Run id: one per pipeline, made when the first transform with lineage is
  applied to it and shared by the others; the environment variable
  `BEAM_LLM_RUN_ID` (read when the pipeline is built) overrides it, so a user
  can tie a run to a job id of their own.
- Endpoints are written without user info, query string or fragment, so an API
  key put in a URL never reaches an output row.
"""
import hashlib
import json
import os
import urllib.parse
import uuid
from typing import Any, Mapping, Optional

from apache_beam.typehints import row_type

RUN_ID_ENV = 'BEAM_LLM_RUN_ID'
FIELD = 'lineage'
HASH_CHARS = 12
_PIPELINE_ATTR = '_beam_llm_run_id'

KEYS = ('run_id', 'template_hash', 'backend', 'model', 'revision', 'endpoint',
        'response_schema_hash', 'schema_hash')

LINEAGE = row_type.RowTypeConstraint.from_fields(
    [(k, Optional[str]) for k in KEYS])


def text_hash(text: str) -> str:
  return hashlib.sha256(text.encode('utf-8')).hexdigest()[:HASH_CHARS]


def json_hash(value: Any) -> str:
  return text_hash(
      json.dumps(value, sort_keys=True, separators=(',', ':'),
                 ensure_ascii=False))


def template_hash(sources) -> str:
  """`sources`: RenderPrompt's [(role or None, template source), ...]."""
  if len(sources) == 1 and sources[0][0] is None:
    return text_hash(sources[0][1])
  return json_hash([{'role': role, 'content': text} for role, text in sources])


def run_id(pipeline) -> str:
  """The run id of `pipeline`: BEAM_LLM_RUN_ID, or one made for it once."""
  given = os.environ.get(RUN_ID_ENV, '').strip()
  if given:
    return given
  made = getattr(pipeline, _PIPELINE_ATTR, None)
  if made is None:
    made = uuid.uuid4().hex[:HASH_CHARS]
    setattr(pipeline, _PIPELINE_ATTR, made)
  return made


def safe_endpoint(url: Optional[str]) -> Optional[str]:
  """`url` without user:password@, ?query or #fragment (where keys hide)."""
  if not url:
    return None
  parts = urllib.parse.urlsplit(url)
  if not parts.scheme or not parts.netloc:
    return url.split('?')[0].split('#')[0]
  host = parts.hostname or ''
  if parts.port:
    host = f'{host}:{parts.port}'
  return urllib.parse.urlunsplit((parts.scheme, host, parts.path, '', ''))


def merged(row, mine: Mapping[str, Optional[str]]):
  """The row's `lineage` (if any) with the non-null values of `mine` set."""
  import apache_beam as beam
  earlier = getattr(row, FIELD, None) if not isinstance(row, dict) else row.get(
      FIELD)
  if earlier is not None and not isinstance(earlier, dict):
    earlier = earlier._asdict() if hasattr(earlier, '_asdict') else {}
  unknown = set(mine) - set(KEYS)
  if unknown:
    raise ValueError(f'not lineage keys: {sorted(unknown)}')
  values = {k: (earlier or {}).get(k) for k in KEYS}
  values.update({k: v for k, v in mine.items() if v is not None})
  return beam.Row(**{k: values[k] for k in KEYS})

"""What a run read and wrote, counted from the files themselves.

The run summary reports rows out and error rows per reason *as written to
the files*: counted here after the run, from the shards the pipeline's
Write* transforms wrote (local paths), not from Beam metrics, which count
events inside steps (a ParseJSON failure that Classify rescues is an event,
not an error row). Files on remote filesystems (gs://, s3://) are named but
not read back.
"""
import collections
import dataclasses
import glob
import json
import os
import re
from typing import Dict, List, Optional

import yaml

# Beam's default shard name template: PREFIX-00000-of-00001[SUFFIX].
_SHARD = r'-\d{5}-of-\d{5}'
# Transforms whose rows are lines of a file (a CSV file adds a header line).
_LINE_READS = ('ReadFromJson', 'ReadFromText', 'ReadFromCsv')
_LINE_WRITES = ('WriteToJson', 'WriteToText', 'WriteToCsv')


@dataclasses.dataclass
class Written:
  prefix: str  # The `path` the pipeline gave.
  kind: str  # The Write* transform.
  files: List[str] = dataclasses.field(default_factory=list)
  rows: Optional[int] = None  # None: not counted (remote, or not line-based).
  # Error rows (rows with `error_type` and `msg`) by reason; empty if none.
  reasons: Dict[str, int] = dataclasses.field(default_factory=dict)


def pipeline_spec(yaml_main, argv) -> Optional[dict]:
  """The pipeline file after Jinja expansion, as apache_beam.yaml.main sees
  it ({} for an empty file), or None if it does not expand or parse."""
  try:
    _, _, _, pipeline_yaml = yaml_main._build_pipeline_yaml_from_argv(argv)
    return yaml.safe_load(pipeline_yaml) or {}
  except Exception:  # pylint: disable=broad-except
    return None  # The run itself reports a broken file, with Beam's words.


def transforms(spec: dict) -> list:
  """Every transform of the pipeline, composites' inner ones included."""
  found = []

  def walk(items):
    for t in items or []:
      if isinstance(t, dict):
        found.append(t)
        walk(t.get('transforms'))

  pipeline = spec.get('pipeline') if isinstance(spec, dict) else None
  walk(pipeline.get('transforms') if isinstance(pipeline, dict) else pipeline)
  return found


def output_paths(spec: dict) -> List[tuple]:
  """(path, transform type) of every Write* transform with a `path`."""
  out = []
  for t in transforms(spec):
    path = (t.get('config') or {}).get('path')
    if str(t.get('type', '')).startswith('Write') and isinstance(path, str):
      out.append((path, t['type']))
  return out


def local_input_rows(spec: dict) -> Optional[int]:
  """Rows read by Beam's own line-based reads of local files (None if none).

  beam-llm's ReadJsonLines counts its rows itself (Beam metrics, any
  filesystem); this covers ReadFromJson / ReadFromText / ReadFromCsv.
  """
  total, seen = 0, False
  for t in transforms(spec):
    kind, path = t.get('type'), (t.get('config') or {}).get('path')
    if kind not in _LINE_READS or not isinstance(path, str) or '://' in path:
      continue
    for name in sorted(glob.glob(path)):
      seen = True
      rows = _count_lines(name)
      total += rows - 1 if kind == 'ReadFromCsv' and rows else rows
  return total if seen else None


def written(spec: dict, since: float) -> List[Written]:
  """What each Write* transform wrote in this run (files modified since
  `since`, so shards of an earlier run beside them are not counted)."""
  results = []
  for prefix, kind in output_paths(spec):
    out = Written(prefix, kind)
    results.append(out)
    if '://' in prefix:
      continue
    pattern = re.compile(re.escape(os.path.basename(prefix)) + _SHARD + '.*$')
    folder = os.path.dirname(prefix) or '.'
    out.files = sorted(
        f for f in glob.glob(os.path.join(glob.escape(folder), '*'))
        if pattern.match(os.path.basename(f)) and os.path.isfile(f)
        and os.path.getmtime(f) >= since - 1)
    if kind not in _LINE_WRITES:
      continue
    out.rows = 0
    reasons = collections.Counter()
    for name in out.files:
      rows, file_reasons = _count_rows(name, kind)
      out.rows += rows
      reasons.update(file_reasons)
    out.reasons = dict(reasons)
  return results


def _count_lines(name: str) -> int:
  with open(name, 'rb') as f:
    return sum(1 for line in f if line.strip())


def _count_rows(name: str, kind: str):
  """Rows of one shard, and error rows in it by reason (`error_type`)."""
  rows, reasons = 0, collections.Counter()
  with open(name, encoding='utf-8', errors='replace') as f:
    for line in f:
      if not line.strip():
        continue
      rows += 1
      if kind == 'WriteToJson':
        try:
          value = json.loads(line)
        except ValueError:
          continue
        if isinstance(value, dict) and 'error_type' in value and 'msg' in value:
          reasons[str(value['error_type'])] += 1
  if kind == 'WriteToCsv' and rows:
    rows -= 1  # The header.
  return rows, reasons

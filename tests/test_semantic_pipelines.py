"""The bundled pipelines of the round-two semantic operators
(top_complaints.yaml: SemanticTopK + SemanticReduce; chat_cases.yaml:
Resolve), run for real through `apache_beam.yaml.main` on a tiny
random-weight model (constrained decoding keeps its answers typed), with
lines that are not valid chats in the input. Random weights decide nothing
meaningful, so the checks are the invariants: places, cases, counts, every
chat accounted for."""
import collections

import pytest

from tests.conftest import read_json_lines, run_yaml_in_one_process
from tests.test_pipelines import BAD_CHAT_LINES, assert_bad_lines_are_error_rows, write_with_bad_lines

PIPELINES = ('pipelines/top_complaints.yaml', 'pipelines/chat_cases.yaml')


@pytest.fixture(scope='module')
def runs(tiny_causal_lm, tmp_path_factory, chats):
  tmp_path = tmp_path_factory.mktemp('semantic-pipelines')
  data = write_with_bad_lines(tmp_path / 'chats.jsonl', chats, BAD_CHAT_LINES)
  places = {p: str(tmp_path / p.split('/')[-1].split('.')[0]) for p in PIPELINES}
  results = run_yaml_in_one_process([
      (p, [], {'model': tiny_causal_lm, 'input': data, 'output': places[p], 'k': 2,
               'max_new_tokens': 48, 'max_input_tokens': 1024})
      for p in PIPELINES])
  return {p: (r, places[p], data) for p, r in zip(PIPELINES, results)}


def test_top_complaints_places_and_overview(runs, chats):
  result, prefix, data = runs['pipelines/top_complaints.yaml']
  assert result.returncode == 0, result.stderr[-3000:]
  errors = assert_bad_lines_are_error_rows(
      read_json_lines(prefix + '-errors'), data, BAD_CHAT_LINES)
  per_day = collections.Counter(c['day'] for c in chats)
  failed_days = {e['day'] for e in errors if e.get('chat_id') is not None}
  top = read_json_lines(prefix + '-top')
  by_day = collections.defaultdict(list)
  for row in top:
    by_day[row['day']].append(row)
  ids = {c['chat_id']: c for c in chats}
  for day, size in per_day.items():
    if day in failed_days:  # A failed ranking: each of its chats is an error row.
      assert sorted(e['chat_id'] for e in errors if e.get('day') == day) == sorted(
          c['chat_id'] for c in chats if c['day'] == day)
      continue
    rows = by_day[day]
    assert sorted(r['rank'] for r in rows) == list(range(1, min(2, size) + 1))
    assert all(ids[r['chat_id']]['day'] == day for r in rows)
  overview = read_json_lines(prefix + '-overview')
  overview_errors = [e for e in errors if e.get('chat_id') is None]
  assert len(overview) + len(overview_errors) == 1
  if overview:
    assert overview[0]['count'] == len(chats)
    assert isinstance(overview[0]['unhappy_chats'], int)


def test_chat_cases_give_every_chat_one_case(runs, chats):
  result, prefix, data = runs['pipelines/chat_cases.yaml']
  assert result.returncode == 0, result.stderr[-3000:]
  assert_bad_lines_are_error_rows(read_json_lines(prefix + '-errors'), data,
                                  BAD_CHAT_LINES)
  rows = read_json_lines(prefix)
  assert sorted(r['chat_id'] for r in rows) == sorted(c['chat_id'] for c in chats)
  day_of = {c['chat_id']: c['day'] for c in chats}
  for row in rows:  # A case is named by its smallest chat, of the same day.
    assert row['case_id'] <= row['chat_id']
    assert day_of[row['case_id']] == row['day']

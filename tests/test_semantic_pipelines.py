"""The bundled pipelines of the round-two semantic operators
(top_complaints.yaml: SemanticTopK + SemanticReduce; chat_cases.yaml:
Resolve; faq_links.yaml: SemanticJoin + SemanticMap), run for real through `apache_beam.yaml.main` on a tiny
random-weight model (constrained decoding keeps its answers typed), with
lines that are not valid chats in the input. Random weights decide nothing
meaningful, so the checks are the invariants: places, cases, counts, every
chat accounted for."""
import collections
import json
import os

import pytest

from tests.conftest import ROOT, read_json_lines, run_yaml_in_one_process
from tests.test_pipelines import BAD_CHAT_LINES, assert_bad_lines_are_error_rows, write_with_bad_lines

PIPELINES = ('pipelines/top_complaints.yaml', 'pipelines/chat_cases.yaml',
             'pipelines/faq_links.yaml')


@pytest.fixture(scope='module')
def runs(tiny_causal_lm, embedding_model, tmp_path_factory, chats):
  tmp_path = tmp_path_factory.mktemp('semantic-pipelines')
  data = write_with_bad_lines(tmp_path / 'chats.jsonl', chats, BAD_CHAT_LINES)
  places = {p: str(tmp_path / p.split('/')[-1].split('.')[0]) for p in PIPELINES}
  # The sample questions and one with no text (it cannot be embedded).
  questions = tmp_path / 'questions.jsonl'
  with open(os.path.join(ROOT, 'pipelines/data/questions.jsonl')) as f:
    questions.write_text(f.read() + json.dumps(
        {'id': 'q-empty', 'question': ''}) + '\n')
  variables = {
      'pipelines/top_complaints.yaml': {'input': data, 'k': 2,
                                        'max_input_tokens': 1024},
      'pipelines/chat_cases.yaml': {'input': data},
      'pipelines/faq_links.yaml': {'embedding_model': embedding_model,
                                   'block_top_k': 2, 'input': str(questions)}}
  results = run_yaml_in_one_process([
      (p, [], {'model': tiny_causal_lm, 'output': places[p],
               'max_new_tokens': 48, **variables[p]})
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


def test_faq_links_ask_only_about_each_questions_nearest_facts(runs):
  result, prefix, _ = runs['pipelines/faq_links.yaml']
  assert result.returncode == 0, result.stderr[-3000:]
  questions = [json.loads(l) for l in open(os.path.join(ROOT, 'pipelines/data/questions.jsonl'))]
  facts = {json.loads(l)['id'] for l in open(os.path.join(ROOT, 'pipelines/data/kb.jsonl'))}
  links = read_json_lines(prefix)
  errors = read_json_lines(prefix + '-errors')
  per_question = collections.Counter(l['question_id'] for l in links)
  assert set(per_question) <= {q['id'] for q in questions}
  assert max(per_question.values(), default=0) <= 2  # block_top_k
  assert all(l['fact_id'] in facts and isinstance(l['answer'], str)
             and len(l['answer']) <= 300 for l in links)
  # Pairs the model could not decide, or answers cut off, are error rows;
  # so is the question with no text to embed, and it is asked about nothing.
  assert all(e['error_type'] for e in errors)
  assert [e['error_type'] for e in errors if e.get('id') == 'q-empty'] == [
      'bad_text']
  assert 'q-empty' not in per_question

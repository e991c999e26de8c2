"""The main pipeline reads input line by line (a bad line costs one row, not
the run) and can redrive a previous run's errors file (issue 14)."""
import json

from tests.conftest import read_json_lines, run_yaml_in_one_process

PIPELINE = 'pipelines/chat_sentiment.yaml'
BAD_LINES = ['{"chat_id": 99, "user_id": 1, "history": "cut o',  # truncated
             'not json',
             '{"chat_id": "x", "user_id": 1, "history": "typed wrong"}']


def test_bad_lines_cost_one_row_each_then_a_redrive_completes_the_failures(
    tiny_causal_lm, tmp_path, chats):
  good = chats[:3]
  data = tmp_path / 'chats.jsonl'
  data.write_text('\n'.join([json.dumps(c) for c in good] + BAD_LINES) + '\n')
  first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
  # Two runs of `apache_beam.yaml.main`, one after the other (in one process:
  # one Beam YAML start-up). Run 1: too few new tokens, so every chat's
  # answer is cut off (the injected failure); the bad lines are error rows
  # of their own. Run 2: the same pipeline, fed run 1's errors file, with
  # enough tokens.
  results = run_yaml_in_one_process([
      (PIPELINE, [], {'model': tiny_causal_lm, 'input': str(data), 'output': first,
                      'max_new_tokens': 6}),
      (PIPELINE, [], {'model': tiny_causal_lm, 'redrive': first + '-errors-*',
                      'output': second, 'max_new_tokens': 700})])
  for result in results:
    assert result.returncode == 0, result.stderr[-3000:]
  assert read_json_lines(first) == []
  errors = read_json_lines(first + '-errors')
  assert sorted(e['error_type'] for e in errors) == sorted(
      ['truncated'] * 3 + ['invalid_json', 'invalid_json', 'schema'])
  assert sorted(e['element']['line'] for e in errors if e['element'].get('line')
                ) == sorted(BAD_LINES)
  done = read_json_lines(first) + read_json_lines(second)
  assert sorted(r['chat_id'] for r in done) == sorted(c['chat_id'] for c in good)
  # The bad lines cannot be completed: they are error rows again, once each,
  # with their own reason, file and line (not nested in the error row).
  again = read_json_lines(second + '-errors')
  assert sorted((e['error_type'], e['element']['file'], e['element']['line'])
                for e in again) == sorted(
                    (e['error_type'], e['element']['file'], e['element']['line'])
                    for e in errors if e['element'].get('line'))
  assert {e['element']['file'] for e in again} == {str(data)}

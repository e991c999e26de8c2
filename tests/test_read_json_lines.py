"""ReadJsonLines: a bad input line costs one row, not the run (issue 14)."""
import json

from tests.conftest import read_json_lines, run_yaml

GOOD = [{'chat_id': 1, 'user_id': 10, 'history': 'hi'},
        {'chat_id': 2, 'user_id': 11, 'history': 'late pizza', 'extra': 'dropped'}]
BAD = [
    ('{"chat_id": 3, "user_id": 12, "history": "cut o', 'invalid_json'),
    ('this is not json', 'invalid_json'),
    ('[1, 2, 3]', 'not_an_object'),
    ('{"chat_id": "four", "user_id": 13, "history": "x"}', 'schema'),
    ('{"chat_id": 5, "history": "no user"}', 'schema'),
]


def test_good_lines_are_read_and_each_bad_line_is_one_error_row(tmp_path):
  path = tmp_path / 'chats.jsonl'
  lines = [json.dumps(GOOD[0]), BAD[0][0], '', BAD[1][0], json.dumps(GOOD[1]),
           BAD[2][0], BAD[3][0], '   ', BAD[4][0]]
  path.write_text('\n'.join(lines) + '\n')
  out = str(tmp_path / 'out')
  result = run_yaml('tests/pipelines/read_lines.yaml',
                    jinja_variables={'input': str(path), 'output': out})
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(read_json_lines(out), key=lambda r: r['chat_id']) == [
      {'chat_id': 1, 'user_id': 10, 'history': 'hi', 'day': None},
      {'chat_id': 2, 'user_id': 11, 'history': 'late pizza', 'day': None}]
  errors = read_json_lines(out + '-errors')
  assert sorted((e['element']['line'], e['error_type']) for e in errors) == sorted(BAD)
  assert all(e['element']['file'] == str(path) for e in errors)
  by_line = {e['element']['line']: e['msg'] for e in errors}
  assert by_line[BAD[3][0]] == "ReadJsonLines (schema): chat_id: 'four' is not of type 'integer'"
  assert by_line[BAD[4][0]] == "ReadJsonLines (schema): (root): 'user_id' is a required property"


def test_record_field_reads_the_rows_of_an_errors_file(tmp_path):
  path = tmp_path / 'errors.jsonl'
  path.write_text('\n'.join(json.dumps(
      {'chat_id': c['chat_id'], 'error_type': 'rate_limited', 'msg': 'x',
       'element': {**c, 'prompt': 'p'}, 'stack': ''}) for c in GOOD) + '\n')
  out = str(tmp_path / 'out')
  result = run_yaml('tests/pipelines/read_lines.yaml', jinja_variables={
      'input': str(path), 'output': out, 'record_field': 'element'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(r['chat_id'] for r in read_json_lines(out)) == [1, 2]
  assert read_json_lines(out + '-errors') == []

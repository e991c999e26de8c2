"""Every pipeline in pipelines/, run for real through
`python -m apache_beam.yaml.main` on tiny local models, and under --tests."""
import glob
import json
import os

import pytest

from tests.conftest import CHATS, ROOT, read_json_lines, run_yaml, run_yaml_in_one_process

PIPELINES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'pipelines', '*.yaml')))

# pipeline -> the output files (suffixes of `output`) that together hold every chat.
OUTPUTS = {
    'pipelines/chat_sentiment.yaml': ['', '-errors'],
    'pipelines/chat_sentiment_building_blocks.yaml': ['', '-errors'],
    'pipelines/chat_sentiment_gemma.yaml': ['', '-errors'],
    'pipelines/summarize.yaml': ['', '-errors'],
    'pipelines/apology.yaml': ['', '-not_needed', '-errors'],
    'pipelines/chat_sentiment_remote.yaml': ['', '-errors'],
    'pipelines/unhappy_digest.yaml': None,  # One row per day: checked below.
}
# The RAG pipelines need a vector store: tests/test_rag.py runs them on each.
RAG = {'pipelines/rag_ingest.yaml', 'pipelines/rag_answer.yaml'}
# Pipelines on a remote backend run against a local fake server instead.
REMOTE = {'pipelines/chat_sentiment_remote.yaml'}
# Streaming pipelines run in tests/test_streaming.py (and their tests: here).
STREAMING = {'pipelines/chat_sentiment_streaming.yaml'}
# Pipelines whose outputs are not one row per chat (top k, cases, an
# overview) run in tests/test_semantic_pipelines.py.
SEMANTIC = {'pipelines/top_complaints.yaml', 'pipelines/chat_cases.yaml',
            'pipelines/faq_links.yaml'}


def test_every_pipeline_is_covered():
  assert sorted(set(OUTPUTS) | STREAMING | RAG | SEMANTIC) == PIPELINES


# Input lines no pipeline can read, mixed into the input of every run: each
# must cost one error row (its line, the file and the reason), not the run.
# (line, error_type, what the reason says)
BAD_CHAT_LINES = [
    ('{"chat_id": 9001, "user_id": 1, "history": "cut o', 'invalid_json', 'not valid JSON'),
    ('this is not json', 'invalid_json', 'not valid JSON'),
    ('{"chat_id": "9002", "user_id": 1, "history": "typed wrong"}', 'schema',
     "chat_id: '9002' is not of type 'integer'"),
    ('{"chat_id": 9003, "history": "no user_id"}', 'schema',
     "'user_id' is a required property"),
]


def write_with_bad_lines(path, good, bad_lines):
  """Writes the `good` records as JSON lines with the bad lines (and a blank
  line, which is skipped) in between them."""
  lines = [json.dumps(record) for record in good]
  for i, (line, _, _) in enumerate(bad_lines):
    lines.insert(i * (len(lines) // len(bad_lines) + 1), line)
  lines.insert(len(lines) // 2, '')
  path.write_text('\n'.join(lines) + '\n')
  return str(path)


def is_bad_line(error):
  """An error row of ReadJsonLines: the failed element is a line of a file."""
  return isinstance(error['element'], dict) and error['element'].get('line') is not None


def assert_bad_lines_are_error_rows(errors, path, bad_lines):
  """Each of `bad_lines` is exactly one error row, with the file, the line and
  the reason; returns the other error rows."""
  read = [e for e in errors if is_bad_line(e)]
  assert sorted((e['element']['line'], e['error_type']) for e in read) == sorted(
      (line, error_type) for line, error_type, _ in bad_lines)
  reasons = {line: reason for line, _, reason in bad_lines}
  for error in read:
    assert error['element']['file'] == path
    assert error['msg'].startswith(f"ReadJsonLines ({error['error_type']}): ")
    assert reasons[error['element']['line']] in error['msg']
  return [e for e in errors if not is_bad_line(e)]


def assert_every_chat_exactly_once(prefix, suffixes, chats, path):
  """Every good chat of the input at `path` is in exactly one of the outputs,
  and every bad line is one error row."""
  seen = []
  for suffix in suffixes:
    rows = read_json_lines(prefix + suffix)
    if suffix == '-errors':
      rows = assert_bad_lines_are_error_rows(rows, path, BAD_CHAT_LINES)
    seen += [row['chat_id'] for row in rows]
  assert sorted(seen) == sorted(c['chat_id'] for c in chats)


@pytest.fixture(scope='module')
def pipeline_runs(tiny_causal_lm, tiny_gemma, tiny_seq2seq_lm, tmp_path_factory, chats):
  """Every pipeline of OUTPUTS run on the bundled chats, with lines that are
  not valid chats among them, each as `python -m apache_beam.yaml.main`
  runs it, all in one process (one Beam YAML start-up, not one per
  pipeline). Returns pipeline -> (result, output prefix, input file); and
  under 't5', summarize.yaml on a T5 model with other input."""
  from beam_llm.testing.fake_llm_server import FakeLLMServer, Faults, sentiment_reply
  # The remote pipeline's server answers with sentiment JSON, after a 429, a
  # 503, an answer it garbles (retried) and one request it refuses (that
  # chat must land in the errors file).
  server = FakeLLMServer(
      faults=Faults(script=['429', '503', 'malformed', '400'], retry_after=0.2),
      reply=sentiment_reply).start()
  runs, places = [], []
  for pipeline in sorted(OUTPUTS):
    tmp_path = tmp_path_factory.mktemp('run')
    prefix = str(tmp_path / 'out')
    data = write_with_bad_lines(tmp_path / 'chats.jsonl', chats, BAD_CHAT_LINES)
    variables = {'model': tiny_gemma if 'gemma' in pipeline else tiny_causal_lm,
                 'input': data, 'output': prefix, 'max_new_tokens': 8}
    if pipeline in REMOTE:
      variables.update(base_url=server.url + '/v1', max_new_tokens=256)
    if pipeline == 'pipelines/unhappy_digest.yaml':
      variables.update(max_sentiment=1, max_input_tokens=400)  # Digest every chat.
    runs.append((pipeline, [], variables))
    places.append((prefix, data))
  tmp_path = tmp_path_factory.mktemp('t5')
  data = tmp_path / 'two.jsonl'
  data.write_text(''.join(open(CHATS).readlines()[:2]))
  prefix = str(tmp_path / 'sum')
  runs.append(('pipelines/summarize.yaml', [], {
      'model': tiny_seq2seq_lm, 'input': str(data), 'output': prefix,
      'use_chat_template': False, 'max_new_tokens': 5}))
  places.append((prefix, str(data)))
  try:
    results = run_yaml_in_one_process(runs)
  finally:
    server.stop()
  names = sorted(OUTPUTS) + ['t5']
  return {name: (result, *place) for name, result, place in zip(names, results, places)}


@pytest.mark.parametrize('pipeline', sorted(OUTPUTS))
def test_pipeline_runs_on_a_tiny_model_and_accounts_for_every_chat(
    pipeline, pipeline_runs, chats):
  result, prefix, data = pipeline_runs[pipeline]
  assert result.returncode == 0, result.stderr[-3000:]
  if OUTPUTS[pipeline] is None:
    digests = read_json_lines(prefix)
    errors = assert_bad_lines_are_error_rows(
        read_json_lines(prefix + '-errors'), data, BAD_CHAT_LINES)
    assert digests and sum(d['count'] for d in digests) + len(errors) <= len(chats)
    assert len({d['day'] for d in digests}) == len(digests)
    assert all(isinstance(d['digest'], str) for d in digests)
    return
  assert_every_chat_exactly_once(prefix, OUTPUTS[pipeline], chats, data)
  errors = [e for e in read_json_lines(prefix + '-errors') if not is_bad_line(e)]
  if pipeline in REMOTE:
    assert [e['error_type'] for e in errors] == ['client_error']
    assert len(read_json_lines(prefix)) == len(chats) - 1
  for error in errors:  # Error rows a person can read: why, and which chat.
    assert error['msg'] and error['error_type']
    assert error['element']['chat_id'] == error['chat_id']


def test_summaries_from_a_t5_model_with_other_input(pipeline_runs, chats):
  result, prefix, _ = pipeline_runs['t5']
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_json_lines(prefix)
  assert sorted(r['chat_id'] for r in rows) == [c['chat_id'] for c in chats[:2]]
  assert all(isinstance(r['summary'], str) for r in rows)


def test_unreachable_default_model_fails_fast_with_guidance(tmp_path):
  # No cache and a hub that refuses connections: the build must stop at once
  # and say how to use a local model, before anything runs.
  result = run_yaml(
      'pipelines/chat_sentiment.yaml',
      jinja_variables={'output': str(tmp_path / 'out')},
      env={'HF_HOME': str(tmp_path / 'hf'), 'HF_ENDPOINT': 'http://127.0.0.1:9',
           'HF_HUB_OFFLINE': '0'},
      timeout=180)
  assert result.returncode != 0
  assert "HuggingFace model 'Qwen/Qwen2.5-0.5B-Instruct' is not available" in result.stderr
  assert '--jinja_variables=\'{"model": "/path/to/DIR"}\'' in result.stderr
  assert 'Running pipeline' not in result.stdout


def test_one_line_providers_include(tiny_causal_lm, tmp_path):
  pipeline = tmp_path / 'p.yaml'
  pipeline.write_text('''
pipeline:
  transforms:
    - type: Create
      config: {elements: [{q: "hello"}]}
    - type: RenderPrompt
      input: Create
      config: {template: "{% raw %}Q: {{ q }}{% endraw %}"}
    - type: WriteToJson
      input: RenderPrompt
      config: {path: "''' + str(tmp_path / 'out') + '''"}
providers:
{% include 'beam_llm/provider/providers.yaml' %}
''')
  result = run_yaml(str(pipeline))
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_json_lines(str(tmp_path / 'out')) == [{'q': 'hello', 'prompt': 'Q: hello'}]


def test_remote_pipeline_rerun_with_cache_dir_sends_nothing_again(
    llm_server, tmp_path, chats):
  from beam_llm.testing.fake_llm_server import sentiment_reply
  server = llm_server(reply=sentiment_reply)
  variables = {'base_url': server.url + '/v1', 'cache_dir': str(tmp_path / 'cache'),
               'api_key_env': 'FAKE_SERVER_KEY'}
  for run in ('first', 'again'):
    variables['output'] = str(tmp_path / run)
    result = run_yaml('pipelines/chat_sentiment_remote.yaml',
                      jinja_variables=variables, env={'FAKE_SERVER_KEY': 'sk-fake-1234'})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(read_json_lines(str(tmp_path / run))) == len(chats)
  # Another process, the same answers, no new requests.
  assert len(server.log) == len(chats)
  assert {r.auth for r in server.log} == {'Bearer sk-fake-1234'}

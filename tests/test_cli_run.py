"""`beam-llm run` (python -m beam_llm run): Beam YAML's runner, quietly."""
import os
import subprocess
import sys

from tests.conftest import ROOT, read_json_lines

NOISE = ('apitools not found', 'Could not load ML transform module',
         'absl::InitializeLog', 'oneDNN custom operations', 'cuda drivers',
         'No shards found to finalize', 'Resource module is not available',
         'Loading weights', 'failed call to cuInit', 'INFO:',
         'No semi_persistent_directory')


def _beam_llm(*args):
  return subprocess.run([sys.executable, '-m', 'beam_llm', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_run_is_quiet_accounts_for_every_chat_and_leaves_no_temp_dirs(
    tiny_causal_lm, tmp_path, chats):
  import json
  out = tmp_path / 'out'
  out.mkdir()
  # Few new tokens: every chat is cut off, so the main output is empty --
  # the case in which Beam's sink leaves an empty .temp folder behind.
  result = _beam_llm(
      'run', 'pipelines/chat_sentiment.yaml', '--jinja_variables=' + json.dumps(
          {'model': tiny_causal_lm, 'output': str(out / 'sentiment'),
           'max_new_tokens': 4}))
  assert result.returncode == 0, result.stderr[-3000:]
  noise = [n for n in NOISE if n in result.stderr + result.stdout]
  assert noise == []
  rows = read_json_lines(str(out / 'sentiment'))
  errors = read_json_lines(str(out / 'sentiment-errors'))
  assert sorted([r['chat_id'] for r in rows + errors]) == sorted(
      c['chat_id'] for c in chats)
  # The failed row is a JSON object with its field names.
  assert errors[0]['element']['chat_id'] == errors[0]['chat_id']
  assert sorted(os.listdir(out)) == ['sentiment-errors-00000-of-00001']
  # The summary: every chat went to the errors file, cut off.
  n = len(chats)
  assert f'rows in: {n}\n' in result.stdout
  assert f'{out}/sentiment: no rows, no file written' in result.stdout
  assert (f'wrote {out}/sentiment-errors-00000-of-00001: {n} error rows '
          f'(truncated {n})') in result.stdout
  assert f'model: {n} rows (0 failed)' in result.stdout


def test_summary_counts_rows_as_written_not_failures_a_step_rescued(
    tmp_path, chats):
  """The model answers a bare label, not JSON: ParseJSON fails on every
  answer and Classify rescues each one. Those are no error rows; the one
  input line that is not JSON is."""
  import json
  from beam_llm.testing.fake_llm_server import FakeLLMServer
  chats_file = tmp_path / 'chats.jsonl'
  chats_file.write_text(
      ''.join(json.dumps(c) + '\n' for c in chats[:3]) + 'not json\n')
  out = tmp_path / 'out'
  with FakeLLMServer(reply=lambda prompt: 'unhappy') as server:
    result = _beam_llm(
        'run', 'tests/pipelines/classify_rescued.yaml',
        '--jinja_variables=' + json.dumps({
            'input': str(chats_file), 'output': str(out),
            'base_url': server.url + '/v1'}))
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r['label'] for r in read_json_lines(str(out))] == ['unhappy'] * 3
  assert [e['error_type'] for e in read_json_lines(f'{out}-errors')] == [
      'invalid_json']
  summary = result.stdout[result.stdout.index('beam-llm summary'):]
  assert 'rows in: 4\n' in summary
  assert f'wrote {tmp_path}/out-00000-of-00001: 3 rows\n' in summary
  assert (f'wrote {tmp_path}/out-errors-00000-of-00001: 1 error row '
          '(invalid_json 1)\n') in summary
  assert 'Classify: output_rows 3, rescued_answers 3' in summary
  assert 'failed 3' not in summary and 'invalid_json 4' not in summary


def test_run_passes_tests_flag_and_reports_usage():
  result = _beam_llm('run', 'pipelines/apology.yaml', '--tests')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK' in result.stderr
  result = _beam_llm('launch')
  assert result.returncode == 2
  assert "unknown command 'launch'" in result.stderr


def test_a_build_time_mistake_is_one_line_with_file_and_line(tmp_path):
  """A misspelt option: one line naming the file, the line as written (the
  leading comment block counted), the step and the fix; exit status 1; the
  traceback only with --verbose."""
  with open(os.path.join(ROOT, 'pipelines', 'chat_sentiment.yaml')) as f:
    source = f.read()
  typo = tmp_path / 'typo.yaml'
  typo.write_text(source.replace('max_new_tokens:', 'max_new_token:', 1))
  line = next(i for i, l in enumerate(source.splitlines(), 1)
              if 'type: Extract' in l)
  result = _beam_llm('run', str(typo))
  assert result.returncode == 1
  assert result.stderr.splitlines() == [
      f"{typo}: line {line}: Extract: option 'max_new_token' is unknown (did "
      "you mean 'max_new_tokens'?); known options: " +
      result.stderr.split('known options: ', 1)[1].splitlines()[0],
      '(run with --verbose for the traceback)']
  verbose = _beam_llm('run', str(typo), '--verbose')
  assert verbose.returncode == 1
  assert 'Traceback' in verbose.stderr
  assert "option 'max_new_token' is unknown" in verbose.stderr
  # A missing input file, and a hub model on a machine without the hub: the
  # step and the line (the model's step in the file, Beam's line counted in
  # the expanded text).
  import json
  for variables, line, said in [
      ({'input': '/nope/chats.jsonl'}, 20,
       'ReadJsonLines: No files found based on the file pattern '
       '/nope/chats.jsonl'),
      ({}, 37, "Summarize (GenerateText): HuggingFace model "
       "'Qwen/Qwen2.5-0.5B-Instruct' is not available: it is not in the "
       "local cache and HF_HUB_OFFLINE is set.")]:
    pipeline = 'pipelines/chat_sentiment.yaml' if variables else 'pipelines/summarize.yaml'
    result = subprocess.run(
        [sys.executable, '-m', 'beam_llm', 'run', pipeline,
         '--jinja_variables=' + json.dumps(variables)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'HF_HUB_OFFLINE': '1',
             'HF_HOME': str(tmp_path / 'empty-hf-home')})
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 2, result.stderr
    assert result.stderr.startswith(f'{pipeline}: line {line}: {said}')


def test_help_empty_file_and_fake_server_flags(tmp_path):
  """The small things a first run trips over."""
  result = _beam_llm('run', '--help')
  assert result.returncode == 0
  assert result.stdout.startswith('usage:\n  beam-llm run PIPELINE.yaml')
  assert '__main__.py' not in result.stdout + result.stderr
  empty = tmp_path / 'empty.yaml'
  empty.write_text('# nothing yet\n')
  result = _beam_llm('run', str(empty))
  assert result.returncode == 1
  assert result.stderr.splitlines()[0] == (
      f'{empty}: the file has no pipeline: section (see the pipelines/ '
      'folder for examples)')
  assert 'AttributeError' not in result.stderr
  server = [sys.executable, '-m', 'beam_llm.testing.fake_llm_server']
  result = subprocess.run(server + ['--help'], capture_output=True, text=True)
  assert '429 Too Many Requests' in ' '.join(result.stdout.split())
  result = subprocess.run(server + ['--rate_limited', '5'], capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  assert '5 is not a probability' in result.stderr


def test_progress_lines_while_rows_wait_on_a_slow_rate_limited_server(
    tmp_path, chats):
  """Rows waiting (429 + Retry-After, then a slow answer) still get a
  progress line every BEAM_LLM_PROGRESS_SECS (10 s by default; 1 s here to
  keep the test short), before the summary."""
  import json
  from beam_llm.testing.fake_llm_server import FakeLLMServer, Faults
  chats_file = tmp_path / 'chats.jsonl'
  chats_file.write_text(''.join(json.dumps(c) + '\n' for c in chats[:2]))
  out = tmp_path / 'out'
  with FakeLLMServer(faults=Faults(script=['429', '429'], retry_after=2),
                     latency_secs=2, reply=lambda prompt: 'happy') as server:
    result = subprocess.run(
        [sys.executable, '-m', 'beam_llm', 'run',
         'tests/pipelines/classify_rescued.yaml', '--jinja_variables=' +
         json.dumps({'input': str(chats_file), 'output': str(out),
                     'base_url': server.url + '/v1'})],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'BEAM_LLM_PROGRESS_SECS': '1'})
  assert result.returncode == 0, result.stderr[-3000:]
  progress = [l for l in result.stderr.splitlines()
              if 'GenerateText [OpenAICompatible' in l and 'in flight' in l]
  assert progress, result.stderr[-3000:]
  assert ' 2 in flight' in progress[0]
  assert 'wrote ' in result.stdout and 'rows in: 2' in result.stdout


def test_nothing_to_ignore_from_worker_processes_or_the_tiny_gemma(
    tmp_path, chats):
  """Beam's worker processes (multi_processing mode) log their start-up at
  INFO on descriptor 2; the tiny Gemma's tokenizer trainer prints its spec
  and TensorFlow its banners. None of it reaches the screen."""
  import json
  from beam_llm.testing.fake_llm_server import FakeLLMServer
  chats_file = tmp_path / 'chats.jsonl'
  chats_file.write_text(''.join(json.dumps(c) + '\n' for c in chats[:2]))
  with FakeLLMServer(reply=lambda prompt: 'happy') as server:
    result = _beam_llm(
        'run', 'tests/pipelines/classify_rescued.yaml',
        '--direct_running_mode=multi_processing', '--direct_num_workers=2',
        '--jinja_variables=' + json.dumps({
            'input': str(chats_file), 'output': str(tmp_path / 'out'),
            'base_url': server.url + '/v1'}))
  assert result.returncode == 0, result.stderr[-3000:]
  said = [l for l in result.stderr.splitlines()
          if l.strip() and 'GenerateText [' not in l]
  assert said == []
  assert 'rows in: 2' in result.stdout
  gemma = subprocess.run(
      [sys.executable, '-m', 'beam_llm.testing.tiny_models',
       str(tmp_path / 'gemma'), '--gemma'], cwd=ROOT, capture_output=True,
      text=True, timeout=600, env={**os.environ, 'KERAS_BACKEND': 'torch'})
  assert gemma.returncode == 0, gemma.stderr[-3000:]
  assert (gemma.stdout + gemma.stderr).strip().splitlines() == [
      'Saved a tiny RANDOM-WEIGHT model (its output is gibberish) to '
      f'{tmp_path / "gemma"}']

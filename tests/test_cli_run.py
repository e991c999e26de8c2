"""`beam-llm run` (python -m beam_llm run): Beam YAML's runner, quietly."""
import os
import subprocess
import sys

from tests.conftest import ROOT, read_json_lines

NOISE = ('apitools not found', 'Could not load ML transform module',
         'absl::InitializeLog', 'oneDNN custom operations', 'cuda drivers',
         'No shards found to finalize', 'Resource module is not available')


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
  # The summary, from the run's metrics: every chat went to errors, cut off.
  assert f'error rows by reason: truncated {len(chats)}' in result.stdout
  assert f'model rows: {len(chats)} (0 failed)' in result.stdout


def test_run_passes_tests_flag_and_reports_usage():
  result = _beam_llm('run', 'pipelines/apology.yaml', '--tests')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK' in result.stderr
  result = _beam_llm('launch')
  assert result.returncode == 2
  assert "unknown command 'launch'" in result.stderr

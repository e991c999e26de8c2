"""Cost in the run summary: `beam-llm run --prices=TABLE` prices the tokens
GenerateText counted per model and mode (synchronous, or Batch API at its
discount)."""
import json
import subprocess
import sys

import pytest

from beam_llm.cli import costs
from beam_llm.testing.fake_batch_api import BatchFaults
from beam_llm.testing.fake_llm_server import sentiment_reply
from tests.conftest import CHATS
from tests.conftest import ROOT

PRICES = {'gpt-4o-mini': {'input': 0.15, 'output': 0.60, 'batch_discount': 0.5}}


def test_the_price_table_from_json_or_a_yaml_file(tmp_path):
  assert costs.load_prices(json.dumps(PRICES)) == PRICES
  path = tmp_path / 'prices.yaml'
  path.write_text('m:\n  input: 3\n  output: 15\n')
  assert costs.load_prices(str(path)) == {
      'm': {'input': 3, 'output': 15, 'batch_discount': 0.5}}


@pytest.mark.parametrize('table, message', [
    ('{"m": {"input": 1}}', "'m' needs input and output"),
    ('{"m": {"input": 1, "output": -2}}', 'm.output must be a number >= 0'),
    ('{"m": {"input": 1, "output": 2, "discount": 0.5}}', "unknown keys"),
    ('{"m": {"input": 1, "output": 2, "batch_discount": 50}}', 'share from 0 to 1'),
    ('no-such-file.yaml', "no file 'no-such-file.yaml'"),
])
def test_a_price_table_that_makes_no_sense_is_refused(table, message):
  with pytest.raises(costs.PriceError, match=message):
    costs.load_prices(table)


def test_tokens_are_priced_per_model_and_mode():
  from beam_llm.handlers.base import TOKENS_NAMESPACE
  assert costs.NAMESPACE == TOKENS_NAMESPACE
  counters = {costs.NAMESPACE: {
      'sync|gpt-4o-mini|input': 1_000_000, 'sync|gpt-4o-mini|output': 500_000,
      'batch|gpt-4o-mini|input': 2_000_000, 'batch|gpt-4o-mini|output': 0,
      'sync|local/qwen|input': 10, 'sync|local/qwen|output': 5}}
  lines = costs.spent_lines(counters, PRICES)
  assert lines == [
      '  tokens gpt-4o-mini (batch): in 2000000, out 0; cost 0.1500 '
      '(0.3000 at the synchronous price)',
      '  tokens gpt-4o-mini (sync): in 1000000, out 500000; cost 0.4500',
      "  tokens local/qwen (sync): in 10, out 5; no price for 'local/qwen' "
      'in --prices',
      '  cost in all: 0.6000']
  assert costs.spent_lines(counters, None)[2] == (
      '  tokens local/qwen (sync): in 10, out 5')


def test_run_summary_reports_tokens_and_cost_of_a_batch_run(
    llm_server, tmp_path):
  server = llm_server(reply=sentiment_reply, batch_faults=BatchFaults())
  result = subprocess.run(
      [sys.executable, '-m', 'beam_llm', 'run',
       'pipelines/chat_sentiment_remote.yaml', '--prices=' + json.dumps(PRICES),
       '--jinja_variables=' + json.dumps({
           'input': CHATS, 'output': str(tmp_path / 'out'),
           'base_url': server.url + '/v1', 'model': 'gpt-4o-mini',
           'batch': {'batch_api': True, 'batch_poll_secs': 0.1}})],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # The fake server counts words: each answer's usage is known.
  lines = server.batch_api.lines
  assert lines == 12 and not server.log
  [line] = [l for l in result.stdout.splitlines() if 'tokens gpt-4o-mini' in l]
  tin, tout = [int(n) for n in line.split(': in ')[1].split(';')[0].replace(
      'out ', '').split(', ')]
  assert line.startswith('  tokens gpt-4o-mini (batch):') and tin > 0 < tout
  expected = 0.5 * (tin * 0.15 + tout * 0.60) / 1e6
  assert f'cost {costs.money(expected)} (' in line


def _validate(*args):
  return subprocess.run([sys.executable, '-m', 'beam_llm', 'validate', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_estimate_counts_prompts_without_calling_the_model_or_writing(
    llm_server, tmp_path):
  server = llm_server()
  result = _validate(
      'pipelines/chat_sentiment_remote.yaml', '--estimate',
      '--prices=' + json.dumps(PRICES), '--jinja_variables=' + json.dumps({
          'output': str(tmp_path / 'out'), 'base_url': server.url + '/v1',
          'model': 'gpt-4o-mini', 'max_new_tokens': 100}))
  assert result.returncode == 0, result.stderr[-3000:]
  [line] = [l for l in result.stdout.splitlines() if 'estimate' in l]
  assert 'estimate gpt-4o-mini: 12 rows, ~' in line
  assert 'at most 1200 output tokens' in line
  tokens = int(line.split(', ~')[1].split(' ')[0])
  sync = (tokens * 0.15 + 1200 * 0.60) / 1e6
  assert f'to {costs.money(sync)}, with batch_api' in line
  assert f'to {costs.money(sync / 2)} (prompts alone' in line
  assert not server.log and not list(tmp_path.iterdir())


def test_estimate_counts_with_the_model_tokenizer_where_known(
    tiny_causal_lm, tmp_path):
  result = _validate(
      'pipelines/chat_sentiment.yaml', '--estimate',
      '--jinja_variables=' + json.dumps({
          'model': tiny_causal_lm, 'output': str(tmp_path / 'out')}))
  assert result.returncode == 0, result.stderr[-3000:]
  [line] = [l for l in result.stdout.splitlines() if 'estimate' in l]
  assert f'estimate {tiny_causal_lm}: 12 rows, ' in line
  tokens = line.split(' rows, ')[1].split(' ')[0]
  assert tokens.isdigit() and int(tokens) > 12, line  # Exact: no `~`.
  assert not list(tmp_path.iterdir())

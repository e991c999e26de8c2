"""`batch_api: true`: GenerateText through the OpenAI Batch API, on the real
`openai` client against the fake Batch API (beam_llm/testing/fake_batch_api.py),
and what no provider does differently: files within both limits, the same
rows (usage, lineage) as synchronous mode, structured output in the lines,
a batch the provider no longer has, sampling without a seed, looks that
checkpoint instead of holding a bundle, options refused at build time. The
scenarios every provider shares (follow-ups, error rows, resume, crashes,
outages, file cleanup) are in tests/test_batch_api_scenarios.py and
test_batch_api_cleanup.py, run on OpenAI, the Gemini API and Vertex AI."""
import glob
import json
import os
import time

import apache_beam as beam
import pytest

from beam_llm import GenerateText
from beam_llm import remote
from beam_llm._config import ConfigError
from beam_llm.batch_api import lines
from beam_llm.batch_api import openai_batches
from beam_llm.handlers.base import Generation
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.beam_helpers import run_transform

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}


def run(base_url, prompts, config=None, **options):
  """GenerateText over `prompts` on the FnApiRunner: (rows, error rows,
  metrics by name)."""
  config = {'base_url': base_url, 'model': 'm', 'batch_api': True,
            'batch_poll_secs': 0.05, 'initial_backoff_secs': 0.01,
            **(config or {})}
  out, _, metrics = run_transform(
      GenerateText(model_handler={'type': 'OpenAICompatible', 'config': config},
                   error_handling={'output': 'failed'}, **options),
      [{'prompt': x} for x in prompts], metrics=True)
  return ([r._asdict() for r in out['good']],
          [r._asdict() for r in out['failed']], metrics)


def test_files_respect_both_limits():
  encoded = [(f'c{i}', b'x' * 10) for i in range(7)] + [('huge', b'x' * 99)]
  files, too_big = lines.into_files(encoded, max_requests=3, max_bytes=25)
  assert [[c for c, _ in f] for f in files] == [
      ['c0', 'c1'], ['c2', 'c3'], ['c4', 'c5'], ['c6']]
  assert too_big == ['huge']
  files, _ = lines.into_files(encoded[:7], max_requests=3, max_bytes=1000)
  assert [len(f) for f in files] == [3, 3, 1]


def test_result_lines_are_judged_as_synchronous_answers_are():
  ok = {'choices': [{'message': {'content': 'hi'}}],
        'usage': {'prompt_tokens': 3, 'completion_tokens': 1}}
  text = '\n'.join(json.dumps(l) for l in [
      {'custom_id': 'a', 'response': {'status_code': 200, 'body': ok}},
      {'custom_id': 'b', 'response': {'status_code': 500, 'body': {
          'error': {'message': 'oops'}}}},
      {'custom_id': 'c', 'response': {'status_code': 400, 'body': {
          'error': {'message': 'bad field'}}}},
      {'custom_id': 'd', 'response': None,
       'error': {'code': 'batch_expired', 'message': 'not run'}},
      {'custom_id': 'e', 'response': {'status_code': 200, 'body': {}}},
      {'custom_id': 'f', 'response': {'status_code': 429, 'body': {}}},
  ]) + '\nnot json\n'

  def parse(body):
    if not body.get('choices'):
      raise remote.BadResponse('the answer has no choices')
    return Generation(body['choices'][0]['message']['content'],
                      body['usage']['prompt_tokens'],
                      body['usage']['completion_tokens'])
  v = openai_batches.read_results([text], parse)
  assert v['a'].value == Generation('hi', 3, 1) and not v['a'].retry
  assert v['b'].retry and v['b'].failure.error_type == 'server_error'
  assert not v['c'].retry and v['c'].failure.error_type == 'client_error'
  assert 'bad field' in v['c'].failure.msg
  assert v['d'].retry and 'batch_expired' in v['d'].failure.msg
  assert v['e'].retry and v['e'].failure.error_type == 'bad_response'
  assert v['f'].retry and v['f'].failure.error_type == 'rate_limited'
  assert set(v) == set('abcdef')


def test_the_same_rows_as_synchronous_mode_with_usage_and_lineage(llm_server):
  server = llm_server()
  prompts = [f'prompt {i}' for i in range(20)] + ['prompt 3', '']
  options = dict(usage_fields=True, lineage=True)
  sync, sync_bad, _ = run(server.url + '/v1', prompts,
                          {'batch_api': False}, **options)
  assert server.batch_api.lines == 0
  sync_requests = len(server.log)
  good, bad, metrics = run(server.url + '/v1', prompts, **options)
  assert len(server.log) == sync_requests, 'nothing sent synchronously'
  key = lambda r: r['prompt']
  strip = lambda rows: sorted(
      ({k: v for k, v in r.items() if k != 'lineage'} for r in rows), key=key)
  assert strip(good) == strip(sync) and len(good) == 21
  assert good[0]['input_tokens'] == 2 and good[0]['output_tokens'] == 3
  assert {r['lineage'].backend for r in good} == {'OpenAICompatible'}
  # The empty prompt: the same error row, never sent.
  assert [(e['error_type'], e['msg']) for e in bad] == [
      (e['error_type'], e['msg']) for e in sync_bad] and len(bad) == 1
  # One line per distinct request, in one batch.
  assert server.batch_api.lines == 20 and len(server.batch_api.batches) == 1
  assert metrics['batch_lines'] == 20 and metrics['batches'] == 1
  assert metrics['rows'] == 22 and metrics['failed_rows'] == 1
  assert metrics['input_tokens'] == 40


def test_structured_output_goes_in_the_lines_as_json_schema(llm_server):
  server = llm_server(reply=lambda prompt: '{"n": 1}')
  good, bad, _ = run(server.url + '/v1', ['a', 'b'], response_schema=SCHEMA)
  assert [r['response'] for r in good] == ['{"n": 1}'] * 2 and not bad
  for line in server.batch_api.sent_lines():
    assert line['url'] == '/v1/chat/completions'
    assert line['body']['response_format'] == {
        'type': 'json_schema',
        'json_schema': {'name': 'response', 'schema': SCHEMA}}


def test_files_are_cut_at_batch_max_bytes(llm_server):
  # The server takes at most 4 lines per file: files cut at 4 lines' bytes
  # pass (a file over the cap: tests/test_batch_api_scenarios.py).
  server = llm_server(batch_faults=BatchFaults(max_lines_per_file=4))
  prompts = [f'prompt number {i}' for i in range(8)]
  size = len(openai_batches.encode('x' * 64, '/v1/chat/completions', {
      'model': 'm', 'messages': [{'role': 'user', 'content': prompts[0]}],
      'max_tokens': 256, 'temperature': 0.0}))
  good, bad, _ = run(server.url + '/v1', prompts,
                     {'batch_max_bytes': 4 * size + 4})
  assert len(good) == 8 and not bad
  assert [b['request_counts']['total'] for b in server.batch_api.batch_list()
          ] == [4, 4] and not server.log


def test_a_kept_batch_the_provider_no_longer_has_is_submitted_again(
    llm_server, tmp_path):
  # Batches and files are kept for a while only (OpenAI: 30 days): a rerun
  # that finds a record of a batch the service answers 404 for sends its
  # rows again instead of failing.
  server = llm_server()
  prompts = [f'p{i}' for i in range(10)]
  run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  [record] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  with open(record) as f:
    kept = json.load(f)
  with open(record, 'w') as f:
    json.dump({**kept, 'status': 'in_progress'}, f)
  for answer in glob.glob(str(tmp_path / '??' / '*.json')):  # The cache.
    os.remove(answer)
  server.batch_api.batches.clear()
  server.batch_api.files.clear()
  good, bad, _ = run(server.url + '/v1', prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.batch_api.lines == 20 and not server.log


def test_sampling_without_a_seed_gives_identical_prompts_lines_of_their_own(
    llm_server):
  server = llm_server()
  good, _, _ = run(server.url + '/v1', ['same'] * 3 + ['other'],
                   temperature=0.8)
  assert len(good) == 4 and server.batch_api.lines == 4
  good, _, _ = run(server.url + '/v1', ['same'] * 3 + ['other'])
  assert len(good) == 4 and server.batch_api.lines == 4 + 2  # Greedy: cached.


@pytest.mark.parametrize('backend, config', [
    ('VertexAI', {'project': 'p', 'location': 'l', 'endpoint': '1'}),
    ('VLLM', {'model': 'm'}),  # Its server has no Batch API.
    ('HuggingFace', {'model': 'm'}),
])
def test_batch_api_on_another_backend_fails_at_build(backend, config):
  with pytest.raises(ConfigError, match=(
      r"option 'model_handler.config.batch_api' is not supported by the "
      rf"{backend} backend: batch_api is supported by the "
      r'OpenAICompatible and Gemini backends')):
    GenerateText(model_handler={'type': backend,
                                'config': {**config, 'batch_api': True}})


def test_batch_options_are_checked_at_build():
  with pytest.raises(ConfigError, match='batch_max_requests.*more than 0'):
    GenerateText(model_handler={'type': 'OpenAICompatible', 'config': {
        'base_url': 'http://x/v1', 'model': 'm', 'batch_api': True,
        'batch_max_requests': 0}})


def test_a_call_looks_once_and_checkpoints_while_its_batch_runs(llm_server):
  # The design for long waits: a call of the waiting DoFn never holds its
  # bundle until the batch ends; it looks once and defers the rest, with
  # the time of the next look.
  from apache_beam.runners.sdf_utils import RestrictionTrackerView
  from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
  from beam_llm.batch_api import awaiting
  from beam_llm.batch_api import transform
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=3600))
  handler = OpenAICompatibleHandler(
      model='m', base_url=server.url + '/v1', batch_api=True,
      batch_poll_secs=0.2, generation={'max_new_tokens': 8}, batching={})
  items = [keyed[1] for p in ('a', 'b', 'c') for keyed in
           transform._Requests(handler).process((beam.Row(prompt=p), p))]
  dofn = awaiting.AwaitBatches(handler)
  dofn.setup()

  def call(restriction):
    tracker = ThreadsafeRestrictionTracker(awaiting._Tracker(restriction))
    started = time.monotonic()
    out = list(dofn.process(items, tracker=RestrictionTrackerView(tracker)))
    return out, tracker.deferred_status(), time.monotonic() - started

  out, (residual, delay), secs = call(awaiting._Progress())
  assert not out and secs < 2 and residual.looks == 1
  assert 0 < delay.micros / 1e6 <= 0.2 and server.batch_api.lines == 3
  out, (residual, _), secs = call(residual)  # Still in progress.
  assert not out and secs < 2 and residual.looks == 2
  assert server.batch_api.lines == 3 and server.batch_api.retrieves == 1
  for batch in server.batch_api.batches.values():  # An hour later...
    batch['_created'] -= 3600
  out, deferred, _ = call(residual)
  assert sorted(row.prompt for row, _ in out) == ['a', 'b', 'c']
  assert deferred is None
  dofn.teardown()


def test_batch_api_where_answers_feed_the_next_call_fails_at_build():
  import beam_llm
  spec = {'type': 'OpenAICompatible', 'config': {
      'base_url': 'http://x/v1', 'model': 'm', 'batch_api': True}}
  for name, options in (
      ('SummarizePerKey', dict(group_by='day', field='history')),
      ('SemanticReduce', dict(field='history')),
      ('SemanticTopK', dict(field='history', criterion='angriest', k=2))):
    with pytest.raises(ConfigError, match=(
        rf"{name}: option 'model_handler.config.batch_api' is not supported "
        'here: this operator asks the model in rounds')):
      getattr(beam_llm, name)(model_handler=spec, **options)


def test_semantic_operators_run_through_the_batch_api(llm_server):
  from beam_llm import Classify
  server = llm_server(reply=lambda prompt: '{"label": "pizza"}')
  out, _ = run_transform(
      Classify(field='text', labels=['pizza', 'pasta'], model_handler={
          'type': 'OpenAICompatible', 'config': {
              'base_url': server.url + '/v1', 'model': 'm', 'batch_api': True,
              'batch_poll_secs': 0.05}}),
      [{'text': 'margherita'}, {'text': 'quattro formaggi'}])
  assert [r.label for r in out['good']] == ['pizza', 'pizza']
  assert server.batch_api.lines == 2 and not server.log

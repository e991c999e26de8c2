"""`batch_api: true` on the Gemini backend: GenerateText through the Gemini
Developer API's Batch Mode, on the real `google-genai` client against the
fake of beam_llm/testing/fake_gemini_batch_api.py (resumable uploads,
:batchGenerateContent, batch operations, result files). The same rows and
error rows as synchronous mode; 5xx and unrun lines in follow-up batches,
then synchronously; 4xx lines as error rows; an outage fails the run; a
rerun resumes (Vertex AI's batch jobs: tests/test_vertex_batch_api.py)."""
import glob
import json
import os

import pytest

from beam_llm import GenerateText
from beam_llm.handlers.base import Generation
from beam_llm.remote import RemoteUnavailable
from beam_llm.testing.fake_batch_api import BatchFaults
from tests.beam_helpers import run_transform

SCHEMA = {'type': 'object', 'properties': {'n': {'type': 'integer'}},
          'required': ['n']}
KEY = 'AIza-secret-gemini-batch-key'


@pytest.fixture(autouse=True)
def gemini_key(monkeypatch):
  monkeypatch.setenv('GEMINI_BATCH_TEST_KEY', KEY)


def run(server, prompts, config=None, **options):
  """GenerateText (Gemini) over `prompts` on the FnApiRunner: (rows, error
  rows, metrics by name)."""
  config = {'model': 'gemini-test', 'base_url': server.url,
            'api_version': 'v1beta', 'api_key_env': 'GEMINI_BATCH_TEST_KEY',
            'batch_api': True, 'batch_poll_secs': 0.05,
            'initial_backoff_secs': 0.01, **(config or {})}
  out, _, metrics = run_transform(
      GenerateText(model_handler={'type': 'Gemini', 'config': config},
                   error_handling={'output': 'failed'}, **options),
      [{'prompt': x} for x in prompts], metrics=True)
  return ([r._asdict() for r in out['good']],
          [r._asdict() for r in out['failed']], metrics)


def synchronous(server):
  return [r for r in server.log if r.path.endswith(':generateContent')]


def test_result_lines_are_judged_as_synchronous_answers_are():
  from beam_llm.batch_api import gemini_batches
  from beam_llm.handlers.gemini import GeminiHandler
  handler = GeminiHandler(model='g', generation={}, batching={})
  ok = {'candidates': [{'content': {'role': 'model', 'parts': [
      {'text': 'thinking...', 'thought': True}, {'text': ' hi '}]},
      'finishReason': 'STOP'}],
        'usageMetadata': {'promptTokenCount': 3, 'candidatesTokenCount': 1}}
  text = '\n'.join(json.dumps(l) for l in [
      {'key': 'a', 'response': ok},
      {'key': 'b', 'error': {'code': 13, 'message': 'Internal error.'}},
      {'key': 'c', 'error': {'code': 3, 'message': 'bad field'}},
      {'key': 'd', 'error': {'code': 8, 'message': 'quota'}},
      {'key': 'e', 'response': {'promptFeedback': {'blockReason': 'SAFETY'}}},
      {'key': 'f', 'error': {'code': 503, 'message': 'unavailable'}},
      {'key': 'g', 'response': {'candidates': [{'content': {'parts': []},
                                                'finishReason': 'MAX_TOKENS'}]}},
      {'response': ok},  # No key: skipped.
  ]) + '\nnot json\n'
  v = gemini_batches.read_results([text], handler.read_rest_answer)
  # The same answer the synchronous parser gives: thoughts left out, usage.
  assert v['a'].value == Generation('hi', 3, 1) and not v['a'].retry
  assert v['b'].retry and v['b'].failure.error_type == 'server_error'
  assert not v['c'].retry and v['c'].failure.error_type == 'client_error'
  assert 'bad field' in v['c'].failure.msg
  assert v['d'].retry and v['d'].failure.error_type == 'rate_limited'
  assert v['e'].retry and 'SAFETY' in v['e'].failure.msg
  assert v['f'].retry and v['f'].failure.status == 503
  assert v['g'].retry and 'MAX_TOKENS' in v['g'].failure.msg
  assert set(v) == set('abcdefg')  # A line missing here counts as unrun.


def test_the_same_rows_as_synchronous_mode_and_the_same_requests(llm_server):
  server = llm_server()
  prompts = [f'prompt {i}' for i in range(20)] + ['prompt 3', '']
  options = dict(usage_fields=True, response_schema=SCHEMA, max_new_tokens=64)
  sync, sync_bad, _ = run(server, prompts, {'batch_api': False}, **options)
  assert server.gemini_batch_api.lines == 0
  sent_sync = {r.prompt: r.body for r in synchronous(server)}
  assert len(sent_sync) == 20
  good, bad, metrics = run(server, prompts, **options)
  assert len(synchronous(server)) == 20, 'nothing sent synchronously'
  key = lambda r: r['prompt']
  assert sorted(good, key=key) == sorted(sync, key=key) and len(good) == 21
  assert good[0]['input_tokens'] == 2 and good[0]['output_tokens'] == 3
  assert [(e['error_type'], e['msg']) for e in bad] == [
      (e['error_type'], e['msg']) for e in sync_bad] and len(bad) == 1
  # One line per distinct request, in one batch for the model; each line's
  # request is what the synchronous call sent for that prompt.
  [batch] = server.gemini_batch_api.batch_list()
  assert batch['total'] == 20 and batch['state'] == 'BATCH_STATE_SUCCEEDED'
  lines = server.gemini_batch_api.sent_lines()
  for line in lines:
    prompt = line['request']['contents'][0]['parts'][0]['text']
    assert line['request'] == sent_sync[prompt]
  assert lines[0]['request']['generationConfig']['responseJsonSchema'] == SCHEMA
  assert len({line['key'] for line in lines}) == 20
  assert metrics['batch_lines'] == 20 and metrics['batches'] == 1
  assert metrics['rows'] == 22 and metrics['failed_rows'] == 1
  assert metrics['input_tokens'] == 40


def test_a_chat_line_carries_what_the_synchronous_request_sends(llm_server):
  # System instruction, model turns, sampling and GenerateContentConfig
  # fields from generation_config: the line's request is the body the
  # synchronous call posts (google-genai's conversion, not ours).
  from beam_llm.handlers.gemini import GeminiHandler
  server = llm_server()
  handler = GeminiHandler(
      model='gemini-test', base_url=server.url, api_version='v1beta',
      api_key_env='GEMINI_BATCH_TEST_KEY', batch_api=True, batching={},
      generation={'max_new_tokens': 32, 'temperature': 0.7, 'top_k': 5,
                  'generation_config': {
                      'seed': 11, 'stop_sequences': ['END'],
                      'thinking_config': {'thinking_budget': 0}}})
  chat = [{'role': 'system', 'content': 'Be brief.'},
          {'role': 'user', 'content': 'Hi'},
          {'role': 'assistant', 'content': 'Hello!'},
          {'role': 'user', 'content': 'Bye'}]
  [result] = handler.run_inference([chat], handler.load_model())
  assert result.inference.text.startswith('echo:')
  model, body = handler.batch_line(handler.build_request(chat))
  assert model == 'models/gemini-test'
  assert body == server.log[0].body
  assert body['systemInstruction']['parts'] == [{'text': 'Be brief.'}]
  config = body['generationConfig']
  assert config['seed'] == 11 and config['stopSequences'] == ['END']
  assert config['topK'] == 5 and config['thinkingConfig']
  assert json.loads(handler.batch_provider.encode('k', model, body)) == {
      'key': 'k', 'request': body}


def test_a_line_refused_as_invalid_is_an_error_row_not_retried(llm_server):
  server = llm_server(batch_faults=BatchFaults(invalid_for='refuse me'))
  good, bad, _ = run(server, ['fine 1', 'refuse me', 'fine 2'])
  assert sorted(r['prompt'] for r in good) == ['fine 1', 'fine 2']
  [error] = bad
  assert error['element'].prompt == 'refuse me'
  assert error['error_type'] == 'client_error'
  assert 'HTTP 400' in error['msg'] and 'invalid argument' in error['msg']
  assert server.gemini_batch_api.lines == 3 and not synchronous(server)


def test_failed_lines_go_in_follow_ups_then_synchronously(llm_server):
  # Half the lines fail with INTERNAL (a 500), in every batch: after
  # batch_rounds batches the rest are sent synchronously (which succeed).
  server = llm_server(batch_faults=BatchFaults(line_server_error=0.5))
  prompts = [f'p{i}' for i in range(40)]
  good, bad, metrics = run(server, prompts, {'batch_rounds': 2})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  sizes = [b['total'] for b in server.gemini_batch_api.batch_list()]
  assert len(sizes) == 2 and sizes[0] == 40 and 10 < sizes[1] < 30
  resent = [r.prompt for r in synchronous(server)]
  assert 0 < len(resent) < sizes[1] and len(set(resent)) == len(resent)
  assert metrics['batch_rows_sent_synchronously'] == len(resent)
  assert metrics['batch_lines'] == sum(sizes)


@pytest.mark.parametrize('faults, state, follow_up', [
    # Expired half done: the 5 lines without a result go in a follow-up.
    (BatchFaults(expire_first_half=True), 'BATCH_STATE_EXPIRED', 5),
    # Cancelled, no result file: all 10.
    (BatchFaults(cancel_first_half=True), 'BATCH_STATE_CANCELLED', 10),
])
def test_lines_an_ended_batch_left_without_results_go_in_a_follow_up(
    llm_server, faults, state, follow_up):
  server = llm_server(batch_faults=faults)
  prompts = [f'p{i}' for i in range(10)]
  good, bad, metrics = run(server, prompts)
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert [(b['state'], b['total']) for b in server.gemini_batch_api.batch_list()
          ] == [(state, 10), ('BATCH_STATE_SUCCEEDED', follow_up)]
  assert metrics['batch_lines_failed'] == follow_up and not synchronous(server)


def test_a_file_over_the_line_cap_fails_and_its_rows_are_sent_again(llm_server):
  server = llm_server(batch_faults=BatchFaults(max_lines_per_file=4))
  good, bad, _ = run(server, [f'p{i}' for i in range(8)],
                     {'batch_max_requests': 4})
  assert len(good) == 8 and not bad and not synchronous(server)
  assert [b['total'] for b in server.gemini_batch_api.batch_list()] == [4, 4]
  good, bad, _ = run(server, [f'q{i}' for i in range(5)], {'batch_rounds': 2})
  assert len(good) == 5 and not bad
  assert [b['state'] for b in server.gemini_batch_api.batch_list()][2:] == [
      'BATCH_STATE_FAILED'] * 2
  assert len(synchronous(server)) == 5


def test_a_rerun_with_cache_dir_pays_for_nothing(llm_server, tmp_path):
  server = llm_server()
  prompts = [f'p{i}' for i in range(10)]
  config = {'cache_dir': str(tmp_path)}
  first, _, _ = run(server, prompts, config)
  again, _, metrics = run(server, prompts, config)
  assert sorted(r['response'] for r in again) == sorted(
      r['response'] for r in first)
  assert server.gemini_batch_api.lines == 10 and not synchronous(server)
  assert metrics['cache_hits'] == 10
  [record] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  assert os.path.basename(record).startswith('batches%2F')
  with open(record) as f:
    kept = json.load(f)
  assert kept['status'] == 'completed' and len(kept['custom_ids']) == 10
  assert kept['batch_id'].startswith('batches/') and kept['result_files']
  for path in glob.glob(str(tmp_path / '**' / '*.json'), recursive=True):
    with open(path) as f:
      assert KEY not in f.read()


def test_a_rerun_waits_for_the_open_batch_instead_of_submitting(
    llm_server, tmp_path, monkeypatch):
  # A run killed right after submitting (its batch kept, still open) and a
  # rerun in a new process: the rerun waits for that batch and reads it,
  # submitting nothing.
  from beam_llm.batch_api import store
  from beam_llm.batch_api.gemini_batches import GeminiBatchClient
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  prompts = [f'p{i}' for i in range(10)]
  retrieve = GeminiBatchClient.retrieve

  def killed(self, batch_id):
    raise KeyboardInterrupt('killed')
  monkeypatch.setattr(GeminiBatchClient, 'retrieve', killed)
  with pytest.raises(BaseException, match='killed'):
    run(server, prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(GeminiBatchClient, 'retrieve', retrieve)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  with open(kept) as f:
    assert json.load(f)['status'] == 'queued'
  assert server.gemini_batch_api.retrieves == 0
  good, bad, _ = run(server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.gemini_batch_api.lines == 10 and not synchronous(server)
  assert server.gemini_batch_api.retrieves >= 1


def test_a_crash_between_creating_a_batch_and_keeping_it_is_resumed(
    llm_server, tmp_path, monkeypatch):
  # The file is kept as pending (with a tag) before its upload; the batch
  # carries the tag as its display name: the rerun finds it in the list.
  from beam_llm.batch_api import store
  server = llm_server(batch_faults=BatchFaults(in_progress_secs=1.0))
  for n in range(3):  # Other batches on the account.
    run(server, [f'other {n}'])
  prompts = [f'p{i}' for i in range(10)]
  save = store.BatchStore.save

  def crash_after_create(self, record):
    if record['status'] != store.PENDING:
      raise KeyboardInterrupt('killed')
    save(self, record)
  monkeypatch.setattr(store.BatchStore, 'save', crash_after_create)
  with pytest.raises(BaseException, match='killed'):
    run(server, prompts, {'cache_dir': str(tmp_path)})
  monkeypatch.setattr(store.BatchStore, 'save', save)
  monkeypatch.setattr(store, '_STORES', {})  # A new worker process.
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  assert os.path.basename(kept).startswith('pending-')
  run(server, ['other 4'])  # The newest batch is another's.
  assert server.gemini_batch_api.lines == 3 + 10 + 1
  good, bad, _ = run(server, prompts, {'cache_dir': str(tmp_path)})
  assert sorted(r['prompt'] for r in good) == sorted(prompts) and not bad
  assert server.gemini_batch_api.lines == 3 + 10 + 1 and not synchronous(server)
  [kept] = glob.glob(str(tmp_path / 'batch_api' / '*' / '*.json'))
  assert not os.path.basename(kept).startswith('pending-')


def test_a_batch_is_found_by_its_tag_across_pages_of_the_list(llm_server):
  from beam_llm.batch_api.gemini_batches import GeminiBatchClient
  from beam_llm.handlers.gemini import GeminiHandler
  server = llm_server()
  handler = GeminiHandler(
      model='gemini-test', base_url=server.url, api_version='v1beta',
      api_key_env='GEMINI_BATCH_TEST_KEY', batch_api=True, generation={},
      batching={})
  client = GeminiBatchClient(handler, handler.load_model())
  model, body = handler.batch_line(handler.build_request('hi'))
  line = client.encode('c', model, body)
  names = [client.submit(line, model, f'tag-{n}')['id'] for n in range(130)]
  assert client.find('tag-0', since=0)['id'] == names[0]  # On the 2nd page.
  assert client.find('tag-129', since=0)['id'] == names[-1]
  assert client.find('no-such-tag', since=0) is None
  assert client.retrieve('batches/nope') == {'id': 'batches/nope',
                                             'status': 'gone'}


def test_an_outage_fails_the_run_never_error_rows(llm_server):
  server = llm_server()
  server.stop()  # Nothing listens: uploads fail until retries run out.
  with pytest.raises(Exception, match='Batch API upload failed') as raised:
    run(server, ['a', 'b'], {'max_retries': 1})
  assert KEY not in str(raised.value)
  assert 'RemoteUnavailable' in repr(raised.value) or isinstance(
      raised.value, RemoteUnavailable)


def test_gemini_file_limits_are_its_own():
  from beam_llm.handlers.gemini import GeminiHandler
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  gemini = GeminiHandler(model='g', batch_api=True, generation={}, batching={})
  openai = OpenAICompatibleHandler(model='m', base_url='http://x/v1',
                                   batch_api=True, generation={}, batching={})
  assert gemini.batch.batch_max_bytes == 2_000_000_000
  assert openai.batch.batch_max_bytes == 200_000_000
  assert GeminiHandler(model='g', batch_api=True, batch_max_bytes=10,
                       generation={}, batching={}).batch.batch_max_bytes == 10

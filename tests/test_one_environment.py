"""One install runs everything (issue 10).

TensorFlow (keras-hub), torch and constrained decoding share one process
under every KERAS_BACKEND, in the full test install and in one with only
`.[hf,keras]` — no embeddings packages, so Beam YAML's start-up imports
TensorFlow before torch and no import-order luck can pass these. Each
pipeline runs in a fresh interpreter, as users run them.
"""
import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, read_json_lines, run_yaml

BACKENDS = ['unset', 'torch', 'tensorflow'] + (
    ['jax'] if importlib.util.find_spec('jax') else [])


def _env(keras_backend):
  env = dict(os.environ)
  env.pop('KERAS_BACKEND', None)
  if keras_backend != 'unset':
    env['KERAS_BACKEND'] = keras_backend
  return env


def _run(python, pipeline, variables, keras_backend):
  import json
  return subprocess.run(
      [python, '-m', 'apache_beam.yaml.main',
       f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
       '--jinja_variables=' + json.dumps(variables)],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=_env(keras_backend))


@pytest.fixture(scope='session')
def hf_keras_python():
  """A venv with only beam-llm[hf,keras], built once and kept between runs
  (under .test-venvs/, keyed by setup.cfg)."""
  with open(os.path.join(ROOT, 'setup.cfg'), 'rb') as f:
    key = hashlib.sha256(f.read()).hexdigest()[:12]
  venv = os.path.join(ROOT, '.test-venvs', f'hf-keras-{key}')
  python = os.path.join(venv, 'bin', 'python')
  if not os.path.exists(os.path.join(venv, 'ready')):
    subprocess.run([sys.executable, '-m', 'venv', '--clear', venv], check=True)
    subprocess.run(
        [python, '-m', 'pip', 'install', '-q', 'torch==2.13.0', '-e',
         f'{ROOT}[hf,keras]'], check=True, capture_output=True)
    open(os.path.join(venv, 'ready'), 'w').close()
  return python


def _check_both_pipelines(python, tiny_causal_lm, tiny_gemma, tmp_path,
                          keras_backend):
  out = str(tmp_path / 'parse')
  result = _run(python, 'tests/pipelines/parse_only.yaml', {'output': out},
                keras_backend)
  assert result.returncode == 0, result.stderr[-3000:]
  assert read_json_lines(out) == [
      {'id': 1, 'response': '{"sentiment": 1, "summary": "ok"}',
       'sentiment': 1, 'summary': 'ok'}]
  out = str(tmp_path / 'local')
  result = _run(python, 'tests/pipelines/every_local_backend.yaml',
                {'output': out, 'model': tiny_causal_lm, 'preset': tiny_gemma},
                keras_backend)
  assert result.returncode == 0, result.stderr[-3000:]
  hf = read_json_lines(out + '-hf')
  assert sorted(r['id'] for r in hf) == [1, 2]
  assert all(r['sentiment'] in (-1, 0, 1) for r in hf)  # Constrained.
  assert sorted(r['id'] for r in read_json_lines(out + '-keras')) == [1, 2]


@pytest.mark.parametrize('keras_backend', BACKENDS)
def test_full_install_runs_every_local_backend(
    keras_backend, tiny_causal_lm, tiny_gemma, tmp_path):
  _check_both_pipelines(sys.executable, tiny_causal_lm, tiny_gemma, tmp_path,
                        keras_backend)


@pytest.mark.parametrize('keras_backend', ['unset', 'torch', 'tensorflow'])
def test_hf_keras_install_runs_every_local_backend(
    keras_backend, hf_keras_python, tiny_causal_lm, tiny_gemma, tmp_path):
  _check_both_pipelines(hf_keras_python, tiny_causal_lm, tiny_gemma, tmp_path,
                        keras_backend)

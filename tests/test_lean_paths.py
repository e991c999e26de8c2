"""What a pipeline does not need, it does not import (issue 10).

Each check runs in a fresh interpreter in which torch, TensorFlow and Keras
cannot be imported at all (None in sys.modules: any import of them raises),
so a pipeline that builds and runs there provably never needed them. Beam
itself imports torch in apache_beam.ml.inference.base wherever torch is
installed; blocking it also shows Beam copes without it.
"""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

BLOCK = ('import sys\n'
         'for name in ("torch", "tensorflow", "keras", "keras_hub", "transformers"):\n'
         '  sys.modules[name] = None\n')


def _python(code, timeout=300):
  return subprocess.run([sys.executable, '-c', BLOCK + code], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_remote_only_pipeline_builds_and_runs_without_torch_tf_keras(
    llm_server, tmp_path):
  from beam_llm.testing.fake_llm_server import sentiment_reply
  server = llm_server(reply=sentiment_reply)
  out = str(tmp_path / 'rows.json')
  code = f'''
import json
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import beam_llm
rows = [beam.Row(chat_id=i, history=f"chat {{i}}") for i in range(3)]
with beam.Pipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
  answered = (p | beam.Create(rows)
      | beam_llm.RenderPrompt(template="Tone of: {{{{ history }}}}")
      | beam_llm.GenerateText(model_handler={{"type": "OpenAICompatible",
          "config": {{"base_url": "{server.url}/v1", "model": "m"}}}})
      | beam_llm.ParseJSON(field="response", schema={{"type": "object",
          "properties": {{"sentiment": {{"type": "integer"}}}},
          "required": ["sentiment"]}}))
  answered | beam.Map(lambda r: json.dumps({{"id": r.chat_id, "s": r.sentiment}})) | beam.io.WriteToText({out!r}, shard_name_template="")
'''
  result = _python(code)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out) as f:
    rows = [json.loads(line) for line in f]
  assert sorted(r['id'] for r in rows) == [0, 1, 2]


def test_a_backend_whose_extra_is_missing_fails_at_build_naming_the_extra():
  code = '''
import sys
sys.modules["openai"] = None
import beam_llm
try:
  beam_llm.GenerateText(model_handler={"type": "OpenAICompatible",
      "config": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}})
except ImportError as exn:
  print("ERROR:", exn)
'''
  result = _python(code)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == (
      "ERROR: GenerateText: the OpenAICompatible backend needs beam-llm's "
      "[openai] extra, which is not installed here (no module openai). "
      "Install it with: pip install 'beam-llm[openai]'")
  code = '''
import beam_llm
try:
  beam_llm.GenerateText(model_handler={"type": "HuggingFace",
      "config": {"model": "/nonexistent"}})
except ImportError as exn:
  print("ERROR:", exn)
'''
  result = _python(code)
  assert "needs beam-llm's [hf] extra" in result.stdout
  assert "no module torch, transformers" in result.stdout


def test_an_unreachable_keras_preset_fails_at_build_in_seconds(tmp_path):
  # Kaggle unreachable (a port nothing listens on), nothing in the cache:
  # one message at build time, through Beam YAML as users run it.
  import os
  import time
  from tests.conftest import run_yaml
  start = time.monotonic()
  result = run_yaml(
      'pipelines/chat_sentiment_gemma.yaml',
      jinja_variables={'model': 'gemma2_instruct_2b_en',
                       'output': str(tmp_path / 'out')},
      env={'KAGGLE_API_ENDPOINT': 'http://127.0.0.1:1',
           'KAGGLEHUB_CACHE': str(tmp_path / 'empty-cache')})
  assert result.returncode != 0
  assert ("GenerateText: KerasHub preset 'gemma2_instruct_2b_en' is not "
          "available: it is not in the local kagglehub cache and Kaggle "
          "(http://127.0.0.1:1) could not be reached") in result.stderr
  assert 'Running pipeline' not in result.stderr + result.stdout
  assert not os.path.exists(str(tmp_path / 'out-errors-00000-of-00001'))
  assert time.monotonic() - start < 120


def test_a_missing_rag_extra_stops_the_build_naming_the_extra(
    embedding_model, tmp_path):
  """pymilvus missing (an `.[hf]` install): validate and run both stop at
  build time, one line naming the [rag] extra, before any row is read."""
  runner = ('import sys\nsys.modules["pymilvus"] = None\n'
            'sys.argv = ["beam-llm", *sys.argv[1:]]\n'
            'from beam_llm.cli.main import main\nmain()\n')
  variables = '--jinja_variables=' + json.dumps(
      {'embedding_model': embedding_model, 'store': str(tmp_path / 'kb.db'),
       'errors': str(tmp_path / 'errors')})
  with open(f'{ROOT}/pipelines/rag_ingest.yaml') as f:
    line = next(i for i, l in enumerate(f, 1) if 'type: WriteToVectorStore' in l)
  message = (f"pipelines/rag_ingest.yaml: line {line}: Write "
             "(WriteToVectorStore): the Milvus Lite store needs beam-llm's "
             "[rag] extra, which is not installed here (no module pymilvus). "
             "Install it with: pip install 'beam-llm[rag]'")
  for command in ('validate', 'run'):
    result = subprocess.run(
        [sys.executable, '-c', runner, command, 'pipelines/rag_ingest.yaml',
         variables], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert result.returncode == 1, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert message in said.splitlines(), said
    assert 'Running pipeline' not in said
    assert not (tmp_path / 'kb.db').exists()


def test_beam_llm_run_does_not_import_tensorflow_for_a_pipeline_without_ml_transforms():
  """The full install has TensorFlow (keras-hub brings it); Beam YAML's ML
  catalogue imported it on every start-up (~8 s). `beam-llm run` builds and
  tests a pipeline without MLTransform without it."""
  import importlib.util
  assert importlib.util.find_spec('tensorflow') is not None  # The full install.
  runner = ('import atexit, sys\n'
            'atexit.register(lambda: print("imported:", sorted(m for m in '
            '("tensorflow", "sentence_transformers", "vertexai") '
            'if m in sys.modules)))\n'
            'sys.argv = ["beam-llm", *sys.argv[1:]]\n'
            'from beam_llm.cli.main import main\nmain()\n')
  result = subprocess.run(
      [sys.executable, '-c', runner, 'run', 'pipelines/apology.yaml', '--tests'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'imported: []' in result.stdout

"""Every pipeline command the README and the guides show still works as
written: each is extracted from the docs (tests/docs_commands.py), its
placeholders replaced by tiny local models, and in one process (one Beam
start-up) validated like `beam-llm validate` — the file, its variables,
every option, the build — or run: `--tests` commands, and every command
whose models are the test's own tiny ones, end to end as written (its
outputs under the test's directory). Those that need a hub model or a
server are validated here and run in test_pipelines.py, test_rag.py and
test_remote_*.py against local stand-ins."""
import json
import os
import subprocess
import sys

from tests import docs_commands
from tests.conftest import ROOT


def test_every_pipeline_command_in_the_docs_validates(
    tiny_causal_lm, tiny_gemma, embedding_model, tmp_path):
  commands = docs_commands.pipeline_commands()
  assert len(commands) > 30  # The extraction finds the guides' commands.
  models = {'/tmp/tiny-llm': tiny_causal_lm, '/path/to/llm': tiny_causal_lm,
            '/path/to/model': tiny_causal_lm, '/tmp/tiny-gemma': tiny_gemma,
            '$EMB': embedding_model}
  out_dir = tmp_path / 'out'
  checks = docs_commands.as_checks(commands, models, str(out_dir))
  runs = [c['where'] for c in checks if c['mode'] == 'run']
  assert len(runs) >= 8, runs  # Those with the test's models run end to end.
  (tmp_path / 'checks.json').write_text(json.dumps(checks))
  result = subprocess.run(
      [sys.executable, '-m', 'tests.docs_commands', str(tmp_path / 'checks.json'),
       str(tmp_path / 'problems.json')], cwd=ROOT, capture_output=True,
      text=True, timeout=600,
      env={**os.environ, 'KERAS_BACKEND': 'torch'})
  assert result.returncode == 0, result.stderr[-3000:]
  problems = json.loads((tmp_path / 'problems.json').read_text())
  assert problems == [], "\n".join(f"{w}: {p}" for w, p in problems)
  written = {p.name for p in out_dir.iterdir()}
  assert 'store.db' in written  # rag_ingest's, which rag_answer then read,
  assert any(n.startswith('output-') for n in written)  # and result files.


def test_the_readme_variables_table_lists_every_variable_a_pipeline_uses():
  import glob
  import re
  from beam_llm.cli import variables
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  table = readme[readme.index('| variable | pipelines | default |'):]
  table = table[:table.index('\n\n')]
  listed = set(re.findall(r'`(\w+)`', ''.join(
      line.split('|')[1] for line in table.splitlines()[2:])))
  for path in glob.glob(os.path.join(ROOT, 'pipelines', '*.yaml')):
    with open(path) as f:
      missing = variables.used(f.read()) - listed
    assert not missing, f'{os.path.basename(path)} uses {sorted(missing)}'

"""Each backend extra alone, in a fresh venv (issue 10): the backend it
installs builds and runs, and the others fail at build time naming their
extra. Slow (one venv per extra), so not part of the test suite:

    python scripts/check_extras.py [hf keras openai vertex gemini]

Venvs go to .test-venvs/extra-<name>; results print as a table.
"""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = {'hf': 'HuggingFace', 'keras': 'KerasHub', 'openai': 'OpenAICompatible',
           'vertex': 'VertexAI', 'gemini': 'Gemini'}
CONFIG = {
    'HuggingFace': {'model': '/nonexistent-model-dir'},
    'KerasHub': {'preset': '/nonexistent-preset-dir'},
    'OpenAICompatible': {'base_url': 'http://127.0.0.1:1/v1', 'model': 'm'},
    'VertexAI': {'project': 'p', 'location': 'us-central1', 'endpoint': '1'},
    'Gemini': {'model': 'gemini-2.0-flash', 'api_key_env': 'NO_SUCH_KEY'},
}

CHECK = textwrap.dedent('''
    import json, sys
    import beam_llm
    from beam_llm import handlers
    own, configs = sys.argv[1], json.loads(sys.argv[2])
    result = {}
    for name, config in configs.items():
      try:
        beam_llm.GenerateText(model_handler={"type": name, "config": config})
        result[name] = "builds"
      except ImportError as exn:
        result[name] = "missing extra: " + str(exn).split("[")[1].split("]")[0]
      except Exception as exn:  # Past the extras check: config/availability.
        result[name] = "past extras check (" + type(exn).__name__ + ")"
    print(json.dumps(result))
''')


def main(extras):
  import json
  rows = []
  for extra in extras:
    venv = os.path.join(ROOT, '.test-venvs', f'extra-{extra}')
    python = os.path.join(venv, 'bin', 'python')
    if not os.path.exists(os.path.join(venv, 'ready')):
      subprocess.run([sys.executable, '-m', 'venv', '--clear', venv], check=True)
      pins = ['torch==2.13.0'] if extra in ('hf', 'keras') else []
      subprocess.run([python, '-m', 'pip', 'install', '-q', *pins, '-e',
                      f'{ROOT}[{extra}]'], check=True)
      open(os.path.join(venv, 'ready'), 'w').close()
    out = subprocess.run([python, '-c', CHECK, BACKEND[extra], json.dumps(CONFIG)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
      rows.append((extra, 'FAILED: ' + out.stderr[-500:]))
      continue
    rows.append((extra, json.loads(out.stdout.strip().splitlines()[-1])))
  print('| extra | ' + ' | '.join(CONFIG) + ' |')
  print('|---' * (len(CONFIG) + 1) + '|')
  for extra, result in rows:
    if isinstance(result, str):
      print(f'| {extra} | {result} |')
    else:
      print(f'| `[{extra}]` | ' + ' | '.join(result[n] for n in CONFIG) + ' |')


if __name__ == '__main__':
  main(sys.argv[1:] or list(BACKEND))

"""The bundled remote pipeline against a real llama-cpp-python server (issue 12).

Not a test (it needs llama-cpp-python, which builds from source in minutes,
in a venv of its own), but a check run by hand and recorded in
bench/RESULTS.md:

1. builds the tiny random-weight causal LM of beam_llm.testing.tiny_models;
2. converts it to GGUF with the `convert_hf_to_gguf.py` shipped in the
   llama-cpp-python sdist (its locally trained byte-level BPE tokenizer has
   a pre-tokenizer hash the script does not know: when the tokenizer's
   pre-tokenizer is GPT-2's byte-level regex, it is converted as `gpt-2`);
3. starts `python -m llama_cpp.server --model X.gguf` (from the llama venv)
   behind a small recording proxy, which logs each request's
   structured-output form and the server's status;
4. runs pipelines/chat_sentiment_remote.yaml against it with
   `python -m beam_llm run` (this interpreter) and reports rows typed,
   error rows by type, and the forms the requests carried.

    python scripts/check_llama_cpp_server.py --llama-python /tmp/llama-venv/bin/python \
        [--sdist llama_cpp_python-X.tar.gz] [--workdir /tmp/llama-check]

Without --sdist, the sdist of the llama-cpp-python version installed in the
llama venv is fetched with `pip download` (slow: pip prepares its metadata).
"""
import argparse
import collections
import glob
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GPT-2's pre-tokenizer regex, as a `Split` pre-tokenizer spells it.
GPT2_REGEX = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"
              r"|\s+(?!\S)|\s+")

# Runs convert_hf_to_gguf.py with one change: an unknown pre-tokenizer hash
# is `gpt-2` when the tokenizer's pre-tokenizer is GPT-2's byte-level regex.
CONVERT = r'''
import json, os, runpy, sys
llama_dir, gpt2_regex = sys.argv[1], sys.argv[2]
sys.path.insert(0, llama_dir)
sys.path.insert(1, os.path.join(llama_dir, 'gguf-py'))
from conversion import base

def is_gpt2_byte_level(model_dir):
    path = os.path.join(model_dir, 'tokenizer.json')
    if not os.path.exists(path):
        return False
    pre = json.load(open(path)).get('pre_tokenizer') or {}
    steps = pre.get('pretokenizers', [pre]) if pre.get('type') == 'Sequence' else [pre]
    if len(steps) == 1 and steps[0].get('type') == 'ByteLevel':
        return steps[0].get('use_regex', True) and not steps[0].get('add_prefix_space')
    return (len(steps) == 2 and steps[0].get('type') == 'Split'
            and steps[0].get('pattern', {}).get('Regex') == gpt2_regex
            and steps[1].get('type') == 'ByteLevel'
            and not steps[1].get('use_regex', True))

known = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return known(self, tokenizer)
    except NotImplementedError:
        if is_gpt2_byte_level(str(self.dir_model)):
            print('convert: unknown pre-tokenizer hash; the tokenizer is '
                  "GPT-2's byte-level regex: converting as gpt-2", file=sys.stderr)
            return 'gpt-2'
        raise
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [os.path.join(llama_dir, 'convert_hf_to_gguf.py')] + sys.argv[3:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def llama_sources(args) -> str:
  """vendor/llama.cpp of the sdist, extracted (the converter and gguf-py)."""
  sdist = args.sdist
  if not sdist:
    version = subprocess.check_output(
        [args.llama_python, '-c', 'import llama_cpp; print(llama_cpp.__version__)'],
        text=True).strip()
    found = glob.glob(os.path.join(args.workdir, f'llama_cpp_python-{version}.tar.gz'))
    if not found:
      subprocess.check_call(
          [args.llama_python, '-m', 'pip', 'download', '--no-deps', '--no-binary',
           ':all:', f'llama-cpp-python=={version}', '-d', args.workdir])
      found = glob.glob(os.path.join(args.workdir, f'llama_cpp_python-{version}.tar.gz'))
    sdist = found[0]
  out = os.path.join(args.workdir, 'sdist')
  with tarfile.open(sdist) as tar:
    top = tar.getnames()[0].split('/')[0]
    prefix = f'{top}/vendor/llama.cpp/'
    wanted = [m for m in tar.getmembers() if m.name.startswith(prefix) and (
        m.name == prefix + 'convert_hf_to_gguf.py'
        or m.name.startswith(prefix + 'conversion/')
        or m.name.startswith(prefix + 'gguf-py/'))]
    tar.extractall(out, members=wanted, filter='data')
  return os.path.join(out, prefix)


class Recorder(http.server.BaseHTTPRequestHandler):
  """Forwards to the llama server; records (form, status) per request."""
  protocol_version = 'HTTP/1.1'
  upstream = None
  records = []
  lock = threading.Lock()

  def log_message(self, *args):
    pass

  def do_GET(self):
    self._forward(b'')

  def do_POST(self):
    self._forward(self.rfile.read(int(self.headers.get('Content-Length') or 0)))

  def _forward(self, body: bytes):
    form = 'none'
    try:
      request = json.loads(body or b'{}')
      fmt = request.get('response_format')
      if isinstance(fmt, dict):
        form = fmt.get('type', 'none') + ('+schema' if 'schema' in fmt else '')
      elif 'guided_json' in request:
        form = 'guided_json'
    except ValueError:
      pass
    conn = http.client.HTTPConnection(*self.upstream, timeout=600)
    headers = {k: v for k, v in self.headers.items()
               if k.lower() not in ('host', 'content-length', 'connection')}
    conn.request(self.command, self.path, body or None, headers)
    answer = conn.getresponse()
    data = answer.read()
    if self.command == 'POST':
      record = {'path': self.path, 'form': form, 'status': answer.status,
                'error': data[:300].decode('utf-8', 'replace')
                if answer.status >= 400 else ''}
      if answer.status == 200:
        try:
          reply = json.loads(data)
          record['finish_reason'] = reply['choices'][0].get('finish_reason')
          record['usage'] = reply.get('usage') or {}
        except (ValueError, KeyError, IndexError, TypeError):
          record['finish_reason'] = 'unreadable'
      with self.lock:
        self.records.append(record)
    self.send_response(answer.status)
    for k, v in answer.getheaders():
      if k.lower() not in ('content-length', 'transfer-encoding', 'connection'):
        self.send_header(k, v)
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data)
    conn.close()


def wait_for(port: int, proc, secs: float = 120) -> None:
  end = time.time() + secs
  while time.time() < end:
    if proc.poll() is not None:
      raise SystemExit(f'the llama server exited with {proc.returncode}')
    try:
      conn = http.client.HTTPConnection('127.0.0.1', port, timeout=2)
      conn.request('GET', '/v1/models')
      if conn.getresponse().status == 200:
        return
    except OSError:
      time.sleep(0.5)
  raise SystemExit('the llama server did not answer in time')


def rows(pattern: str) -> list:
  out = []
  for path in sorted(glob.glob(pattern)):
    with open(path) as f:
      out += [json.loads(line) for line in f if line.strip()]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--llama-python', required=True,
                      help='python of the venv with llama-cpp-python[server]')
  parser.add_argument('--sdist', help='llama-cpp-python sdist (.tar.gz)')
  parser.add_argument('--workdir', default='/tmp/llama-check')
  parser.add_argument('--structured_output', default='auto')
  parser.add_argument('--max_new_tokens', type=int, default=None,
                      help="the pipeline's (256) unless given")
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)

  from beam_llm.testing import tiny_models
  model_dir = os.path.join(args.workdir, 'tiny-llm')
  tiny_models.build_causal_lm(model_dir, max_positions=4096)
  gguf = os.path.join(args.workdir, 'tiny-llm.gguf')
  llama_dir = llama_sources(args)
  subprocess.check_call([sys.executable, '-c', CONVERT, llama_dir, GPT2_REGEX,
                         model_dir, '--outfile', gguf, '--outtype', 'f32'])

  port = free_port()
  server = subprocess.Popen(
      [args.llama_python, '-m', 'llama_cpp.server', '--model', gguf,
       '--host', '127.0.0.1', '--port', str(port), '--n_ctx', '4096'],
      stdout=open(os.path.join(args.workdir, 'server.log'), 'w'),
      stderr=subprocess.STDOUT)
  proxy = None
  try:
    wait_for(port, server)
    Recorder.upstream = ('127.0.0.1', port)
    proxy = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    output = os.path.join(args.workdir, 'out', 'result')
    for old in glob.glob(output + '*'):
      os.remove(old)
    variables = {'base_url': f'http://127.0.0.1:{proxy.server_address[1]}/v1',
                 'model': 'tiny-llm', 'output': output,
                 'structured_output': args.structured_output}
    if args.max_new_tokens:
      variables['max_new_tokens'] = args.max_new_tokens
    command = [sys.executable, '-m', 'beam_llm', 'run',
               'pipelines/chat_sentiment_remote.yaml',
               f'--jinja_variables={json.dumps(variables)}']
    started = time.time()
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
  finally:
    if proxy:
      proxy.shutdown()
    server.terminate()
    server.wait()
  log = run.stdout + run.stderr
  with open(os.path.join(args.workdir, 'run.log'), 'w') as f:
    f.write(log)
  typed = rows(output + '-0*')
  errors = rows(output + '-errors-*')
  forms = collections.Counter((r['form'], r['status']) for r in Recorder.records)
  report = {
      'exit_code': run.returncode, 'wall_secs': round(wall, 1),
      'typed_rows': len(typed), 'error_rows': len(errors),
      'errors_by_type': dict(collections.Counter(e.get('error_type') for e in errors)),
      'requests_by_form_and_status': {f'{f} -> {s}': n for (f, s), n in sorted(forms.items())},
      'finish_reasons': dict(collections.Counter(
          r['finish_reason'] for r in Recorder.records if 'finish_reason' in r)),
      'max_prompt_tokens': max((r['usage'].get('prompt_tokens', 0)
                                for r in Recorder.records if r.get('usage')),
                               default=0),
      'form_switches_logged': [line.strip() for line in log.splitlines()
                               if 'refused structured output' in line],
      'first_refusal': next((r['error'] for r in Recorder.records if r['status'] >= 400), ''),
      'typed_sample': typed[:2],
      'error_sample': [{k: e.get(k) for k in ('chat_id', 'error_type', 'msg')}
                       for e in errors[:2]],
  }
  print(json.dumps(report, indent=2, ensure_ascii=False))
  return 0 if run.returncode == 0 else 1


if __name__ == '__main__':
  sys.exit(main())

"""What `beam-llm run` hides or tidies, and nothing more.

Each filtered message is Beam's, is logged at start-up or on empty outputs
whatever the pipeline does, and concerns a part of Beam beam-llm does not
use; everything else — the pipeline's own warnings and errors — still shows.
"""
import contextlib
import glob
import logging
import os
import re
import sys
import tempfile
import threading

# Prefixes of messages Beam logs on the root logger.
IRRELEVANT = (
    # BigQuery IO's optional client, imported by Beam YAML's IO catalogue.
    'apitools not found, and bigquery client libraries are not available',
    # Beam YAML imports every MLTransform module whose library is missing.
    'Could not load ML transform module',
    # RunInference's memory probe, when torch is not installed.
    'Resource module is not available for current platform',
    # An output that received no rows writes nothing: that is by design.
    'No shards found to finalize',
    # Beam's check of the key coder of its own keyed batching (RunInference
    # with max_batch_duration_secs): the keys are Beam's, not the user's.
    'Key coder ',
)

# Lines written straight to file descriptor 2 while the pipeline runs, by
# Beam's worker processes (multi_processing mode: Python logging's default
# `LEVEL:logger:message` format, no filter of ours applies there) and by C++
# libraries (TensorFlow, absl). Matched anywhere in the line.
NOISE_LINES = re.compile('|'.join([
    # Worker processes' INFO records (start-up, channels, file moves);
    # beam-llm's own progress lines are kept.
    r'^INFO:(?!beam_llm)',
    # Each worker process's start-up warnings, and their relay by the
    # job service.
    r'No semi_persistent_directory found',
    r'apitools not found, and bigquery client libraries',
    r'Could not load ML transform module',
    # TensorFlow on a machine without a GPU (Keras on TF, or TF imported by
    # a worker process): an ERROR line that is no error.
    r'failed call to cuInit',
    r'^WARNING: All log messages before absl::InitializeLog',
    r'\] oneDNN custom operations are on',
    r'cudart_stub\.cc:\d+\] Could not find cuda drivers',
    r'cpu_feature_guard\.cc',
    r'^To enable the following instructions: ',
    # transformers' weight-loading progress bar, once per model load.
    r'Loading weights',
    # faiss (imported by Beam's RAG modules) tries its AVX512 builds first.
    r'swigfaiss_avx512',
]))

# Set before anything is imported, where the user has not set them: the
# worker processes inherit them too.
QUIET_ENVIRONMENT = {
    # TensorFlow's C++ log (the cuInit ERROR on CPU-only machines).
    'TF_CPP_MIN_LOG_LEVEL': '3',
    # transformers' and huggingface_hub's tqdm bars.
    'HF_HUB_DISABLE_PROGRESS_BARS': '1',
}


class _DropIrrelevant(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith(IRRELEVANT)


def before_beam_starts() -> None:
  """Filters Beam's irrelevant log lines (then import_beam_yaml_quietly)."""
  for name, value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(name, value)
  # faiss logs at INFO which of its builds failed to load, with the error.
  logging.getLogger('faiss.loader').setLevel(logging.WARNING)
  drop = _DropIrrelevant()
  logging.getLogger().addFilter(drop)
  # A logger's filters apply only to records logged on it, not to those
  # its children propagate: the loggers that log the messages above.
  for name in ('apache_beam.io.filebasedsink', 'apache_beam.transforms.core'):
    logging.getLogger(name).addFilter(drop)


def import_beam_yaml_quietly(spec=None) -> None:
  """Imports Beam YAML's modules for the pipeline `spec` (lean_start.py).

  Where TensorFlow is installed and a pipeline needs it, its C++ libraries
  print banners (oneDNN, CUDA drivers, CPU features) straight to file
  descriptor 2, before any log level applies. Those imports run here with
  descriptor 2 captured; if one fails, what it printed is shown before the
  error.
  """
  from beam_llm.cli import lean_start
  with captured_stderr():
    lean_start.import_beam_yaml(spec)


@contextlib.contextmanager
def captured_stderr():
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode='w+b') as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode('utf-8', 'replace'))
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


@contextlib.contextmanager
def filtered_stderr():
  """File descriptor 2 through NOISE_LINES while the pipeline runs.

  Worker processes inherit descriptor 2, so this also filters what they
  write. Lines are passed on whole, as they come (a tqdm bar's `\\r`
  updates are one line).
  """
  sys.stderr.flush()
  saved = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)
  pump = threading.Thread(target=_pump, args=(read_end, saved), daemon=True)
  pump.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # Our copy of the pipe's write end closes here.
    # A worker process still alive holds it open: do not wait on it long.
    pump.join(timeout=2)
    os.close(saved)


def _pump(read_end: int, out: int) -> None:
  pending = b''
  with os.fdopen(read_end, 'rb', buffering=0) as pipe:
    while True:
      chunk = pipe.read(65536)
      if not chunk:
        break
      pending += chunk
      *lines, pending = pending.split(b'\n')
      for line in lines:
        _pass_on(out, line + b'\n')
  if pending:
    _pass_on(out, pending)


def _pass_on(out: int, line: bytes) -> None:
  if not NOISE_LINES.search(line.decode('utf-8', 'replace')):
    os.write(out, line)


def remove_empty_temp_dirs(paths) -> None:
  """Beam's file sinks leave an empty `.temp<uuid>` folder beside an output
  that got no rows; remove those (local paths only, empty folders only)."""
  for path in paths:
    if '://' in path:
      continue
    folder = os.path.dirname(path) or '.'
    for temp in glob.glob(os.path.join(glob.escape(folder), '.temp*')):
      if os.path.isdir(temp) and not os.listdir(temp):
        os.rmdir(temp)

"""What `beam-llm run` hides or tidies, and nothing more.

Each filtered message is Beam's, is logged at start-up or on empty outputs
whatever the pipeline does, and concerns a part of Beam beam-llm does not
use; everything else — the pipeline's own warnings and errors — still shows.
"""
import contextlib
import glob
import logging
import os
import sys
import tempfile

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
)


class _DropIrrelevant(logging.Filter):
  def filter(self, record):
    return not str(record.msg).startswith(IRRELEVANT)


def before_beam_starts(import_beam_yaml: bool = True) -> None:
  """Filters Beam's irrelevant log lines, then imports Beam YAML's modules.

  Beam YAML imports TensorFlow at start-up wherever it is installed
  (keras-hub installs it), and TensorFlow's C++ libraries print banners
  (oneDNN, CUDA drivers, CPU features) straight to file descriptor 2, before
  any log level applies. Those imports run here with descriptor 2 captured;
  if one fails, what it printed is shown before the error.
  """
  drop = _DropIrrelevant()
  logging.getLogger().addFilter(drop)
  logging.getLogger('apache_beam.io.filebasedsink').addFilter(drop)
  if import_beam_yaml:
    import_beam_yaml_quietly()


def import_beam_yaml_quietly() -> None:
  with _captured_stderr():
    import apache_beam.yaml.main  # noqa: F401
    import apache_beam.yaml.yaml_ml  # noqa: F401


@contextlib.contextmanager
def _captured_stderr():
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

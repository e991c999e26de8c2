"""Build-time check that a keras-hub preset can be loaded, without keras.

Importing keras here would fix its backend before the worker chooses one, so
this looks at the preset the way keras-hub will fetch it: a local directory,
a Hugging Face repo (`hf://`), or a Kaggle model (`kaggle://` handles and
built-in preset names such as gemma2_instruct_2b_en), which is either in the
kagglehub cache already or needs Kaggle to be reachable.
"""
import glob
import os
import urllib.error
import urllib.request
from typing import Optional

HOW_TO_FIX = (
    'Point the pipeline at a preset directory instead (one saved with '
    'save_to_preset, or downloaded on a connected machine), locally or on '
    "gs://, e.g.\n  --jinja_variables='{\"model\": \"/path/to/preset\"}'")

_REACH_TIMEOUT_SECS = 5


class PresetUnavailable(RuntimeError):
  pass


def why_unavailable(preset: str) -> Optional[str]:
  """None if `preset` can load here, else why not (in a few seconds at most)."""
  if preset.startswith('hf://'):
    from beam_llm.handlers.huggingface import why_unavailable as hub_problem
    return hub_problem(preset[len('hf://'):], None)
  if preset.startswith('kaggle://'):
    return _kaggle_problem(preset[len('kaggle://'):].split('/')[3:4])
  if '://' in preset:
    return None  # gs://, s3://, ...: copied and read on the worker.
  if preset.startswith(('/', '.', '~')) or os.sep in preset:
    path = os.path.expanduser(preset)
    if not os.path.isdir(path):
      return 'no such directory'
    if not os.path.isfile(os.path.join(path, 'config.json')):
      return 'the directory holds no config.json (not a saved preset)'
    return None
  return _kaggle_problem([preset])  # A built-in preset name.


def _kaggle_problem(variation: list) -> Optional[str]:
  if variation and _in_kagglehub_cache(variation[0]):
    return None
  from beam_llm import _config
  if not _config.reachability_checks():
    return None
  endpoint = os.environ.get('KAGGLE_API_ENDPOINT', 'https://www.kaggle.com')
  try:
    urllib.request.urlopen(
        urllib.request.Request(endpoint, method='HEAD'),
        timeout=_REACH_TIMEOUT_SECS).close()
  except urllib.error.HTTPError:
    return None  # Kaggle answered: it is reachable.
  except (OSError, ValueError) as exn:
    return (f'it is not in the local kagglehub cache and Kaggle '
            f'({endpoint}) could not be reached ({type(exn).__name__})')
  return None


def _in_kagglehub_cache(variation: str) -> bool:
  cache = os.environ.get('KAGGLEHUB_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'kagglehub')
  pattern = os.path.join(glob.escape(cache), 'models', '*', '*', '*',
                         glob.escape(variation), '*', 'config.json')
  return bool(glob.glob(pattern))

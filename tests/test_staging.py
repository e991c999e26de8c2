"""Model staging: a model on a non-local Beam filesystem is copied once per
machine to a local cache and loaded from there.

The remote filesystem here is a real Beam FileSystem registered under the
`fakefs://` scheme (backed by a local directory), so the copy goes through
Beam's FileSystems exactly as gs:// or s3:// would.
"""
import os
import threading

from apache_beam.io.localfilesystem import LocalFileSystem

from beam_llm import staging
from beam_llm.handlers.huggingface import HuggingFaceHandler


class FakeRemoteFileSystem(LocalFileSystem):
  """fakefs:///abs/path -> /abs/path, seen by Beam as a separate filesystem."""
  @classmethod
  def scheme(cls):
    return 'fakefs'

  @staticmethod
  def _local(path):
    return path[len('fakefs://'):] if path.startswith('fakefs://') else path

  def match(self, patterns, limits=None):
    results = super().match([self._local(p) for p in patterns], limits)
    for result in results:
      for meta in result.metadata_list:
        meta.path = 'fakefs://' + meta.path
    return results

  def open(self, path, *args, **kwargs):
    return super().open(self._local(path), *args, **kwargs)


OPENED = []


def test_remote_model_is_copied_once_and_loads(tiny_causal_lm, tmp_path, monkeypatch):
  monkeypatch.setenv(staging.CACHE_ENV, str(tmp_path / 'cache'))
  remote = 'fakefs://' + tiny_causal_lm
  original_open = FakeRemoteFileSystem.open

  def counting_open(self, path, *args, **kwargs):
    OPENED.append(path)
    return original_open(self, path, *args, **kwargs)

  monkeypatch.setattr(FakeRemoteFileSystem, 'open', counting_open)
  results = []
  threads = [threading.Thread(target=lambda: results.append(staging.local_copy(remote)))
             for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(set(results)) == 1
  local = results[0]
  files = sorted(os.listdir(tiny_causal_lm))
  assert len(OPENED) == len(files)  # Four concurrent callers, one copy.
  for name in files:
    with open(os.path.join(tiny_causal_lm, name), 'rb') as a, open(
        os.path.join(local, name), 'rb') as b:
      assert a.read() == b.read()
  # The backend loads the staged copy through the same from_pretrained path.
  handler = HuggingFaceHandler(model=remote, generation={'max_new_tokens': 3}, batching={})
  handler.check_at_build()  # Remote paths are not checked at build time.
  [result] = handler.run_inference(['Hi'], handler.load_model())
  assert result.inference.text
  assert len(OPENED) == len(files)  # Served from the cache.


def test_a_half_copied_directory_is_never_used(tiny_causal_lm, tmp_path, monkeypatch):
  monkeypatch.setenv(staging.CACHE_ENV, str(tmp_path / 'cache'))
  remote = 'fakefs://' + tiny_causal_lm
  first = staging.local_copy(remote)
  os.remove(os.path.join(first, '.beam_llm_complete'))  # As if killed mid-copy.
  os.remove(os.path.join(first, 'config.json'))
  again = staging.local_copy(remote)
  assert os.path.exists(os.path.join(again, 'config.json'))


def test_local_paths_are_untouched(tmp_path):
  assert staging.local_copy(str(tmp_path)) == str(tmp_path)
  assert staging.local_copy('file://' + str(tmp_path)) == str(tmp_path)
  assert staging.local_copy('hf://google/gemma') == 'hf://google/gemma'

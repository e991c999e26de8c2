"""Every pipeline's own Beam YAML `tests:` block passes (`--tests`), all run
in one process (tests/yaml_runs.py: one Beam YAML start-up, not one per
pipeline); tests/test_cli_run.py runs a `--tests` through the command line."""
import pytest

from tests.conftest import run_yaml_in_one_process
from tests.test_pipelines import PIPELINES


@pytest.fixture(scope='module')
def tests_block_runs():
  runs = run_yaml_in_one_process([(p, ['--tests'], None) for p in PIPELINES])
  return dict(zip(PIPELINES, runs))


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_pipeline_tests_block_passes(pipeline, tests_block_runs):
  result = tests_block_runs[pipeline]
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK' in result.stderr

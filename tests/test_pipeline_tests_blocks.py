"""Every pipeline's own Beam YAML `tests:` block passes (`--tests`). Its own
file, so that the test workers share the pipeline runs (pytest.ini)."""
import pytest

from tests.conftest import run_yaml
from tests.test_pipelines import PIPELINES


@pytest.mark.parametrize('pipeline', PIPELINES)
def test_pipeline_tests_block_passes(pipeline):
  result = run_yaml(pipeline, '--tests')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'OK' in result.stderr

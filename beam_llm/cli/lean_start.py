"""Beam YAML's start-up without the ML libraries no transform asked for.

Beam YAML's standard providers import `apache_beam.yaml.yaml_ml` whenever a
pipeline is built (its MLTransform and RunInference), and that module
imports every module of `apache_beam.ml.transforms` to collect the names
MLTransform's YAML can use: TensorFlow, sentence-transformers, Vertex AI —
whatever is installed. In the full install (`.[all]`: keras-hub brings
TensorFlow) that is ~8 s of every `beam-llm run`, `--tests` and `validate`,
for a catalogue only MLTransform reads. So unless the pipeline uses
MLTransform, yaml_ml is imported here with that catalogue left empty;
everything else in it (RunInference, MLTransform's class) is as Beam has it.
A pipeline with MLTransform gets Beam's start-up unchanged.

(`python -m apache_beam.yaml.main` itself is Beam's and keeps its start-up.)
"""
import sys
from typing import Optional

_ML_CATALOGUE_USERS = ('MLTransform',)


def import_beam_yaml(spec: Optional[dict]) -> None:
  """Imports Beam YAML (main and yaml_ml) for a pipeline `spec` (the
  expanded file; None if unknown, which gets Beam's full start-up)."""
  import apache_beam.yaml.main  # noqa: F401
  if 'apache_beam.yaml.yaml_ml' in sys.modules:
    return
  if spec is None or _uses(spec, _ML_CATALOGUE_USERS):
    import apache_beam.yaml.yaml_ml  # noqa: F401
    return
  import apache_beam.ml.transforms as ml_transforms
  # yaml_ml walks this package's __path__ for the modules to import.
  saved = ml_transforms.__path__
  ml_transforms.__path__ = []
  try:
    import apache_beam.yaml.yaml_ml  # noqa: F401,F811
  finally:
    ml_transforms.__path__ = saved


def _uses(spec, types) -> bool:
  """Whether any transform of the spec (composites, tests blocks included)
  has one of `types`."""
  if isinstance(spec, dict):
    if spec.get('type') in types:
      return True
    return any(_uses(v, types) for v in spec.values())
  if isinstance(spec, list):
    return any(_uses(v, types) for v in spec)
  return False

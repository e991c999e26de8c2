"""The providers listing Beam YAML reads to find beam-llm's transforms."""
import os

PROVIDERS_FILE = os.path.join(os.path.dirname(__file__), 'providers.yaml')

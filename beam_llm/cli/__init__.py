"""The `beam-llm` command (also `python -m beam_llm`): run pipelines quietly."""

"""An example beam-llm extension: the `Keyword` backend and `Redact` transform."""

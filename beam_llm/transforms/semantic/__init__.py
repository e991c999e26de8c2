"""Semantic operators: one-step LLM tasks (Classify, Extract, SemanticFilter,
SemanticMap, SemanticJoin, SemanticTopK, Resolve, SemanticReduce,
SummarizePerKey) built from RenderPrompt, GenerateText and ParseJSON, or
calling the model in a step of their own where the next question depends
on the last answer."""

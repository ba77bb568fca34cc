"""Generation, metrics, evaluation of models and judges, the report."""

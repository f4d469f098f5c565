"""Results: MLflow tracking (the only package that imports mlflow), the leaderboard, plots."""

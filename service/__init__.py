"""HTTP service for captioner: a Flask app factory run by gunicorn. Knows nothing of training."""

"""The Flask app factory: `create_app()` wires settings, the model, error handlers, metrics and routes.

    gunicorn -c service/gunicorn.conf.py "service.app:create_app()"

Process-wide settings (logging, torch threads) belong to the process that runs the app: gunicorn's worker
start in `service/gunicorn.conf.py`.
"""

from __future__ import annotations

from flask import Flask

from captioner import Captioner

from . import errors, metrics, model_state
from .routes import bp
from .settings import Settings


def create_app(settings: Settings | None = None, model: Captioner | None = None, load_in_background: bool = False) -> Flask:
    """Build the app. The model loads (or `model` is used) and is warmed before this returns, unless
    `load_in_background`, in which case /readyz answers 503 until it is ready."""
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 1024 * 1024)
    app.json.sort_keys = False
    errors.init_app(app)
    model_state.init_app(app, settings, model, load_in_background)
    metrics.init_app(app, model_state.current_state)
    app.register_blueprint(bp)
    return app

"""One router per resource; :func:`PR2_async_inference.api.main.create_app` includes them all."""

from PR2_async_inference.api.routes import health, inference, metrics, models, oip

ROUTERS = (inference.router, models.router, oip.router, health.router, metrics.router)

__all__ = ["ROUTERS"]

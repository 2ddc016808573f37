"""``personalize dashboard``: a small web page over the job's Redis serving view (docs/dashboard.md)."""

from personalize.dashboard.app import create_app, make_server

__all__ = ["create_app", "make_server"]

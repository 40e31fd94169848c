"""Registers the campaign image factory's UI with Airflow: the /campaigns app and a "Campaigns" nav entry."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from gen_airflow.campaigns_app import app


class GenEnginePlugin(AirflowPlugin):
    name = "gen_engine"
    fastapi_apps = [{"app": app, "url_prefix": "/campaigns", "name": "Campaigns"}]
    external_views = [{"name": "Campaigns", "href": "campaigns/", "destination": "nav", "url_route": "campaigns",
                       "category": "browse"}]

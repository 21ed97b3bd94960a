"""Typed application state keys, shared by the handlers and ``create_app``."""

from __future__ import annotations

from aiohttp import web

from rendernode.config import Settings
from rendernode.events import EventHub
from rendernode.scenes import SceneLibrary
from rendernode.store import Store
from rendernode.supervisor import Supervisor

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", EventHub)
SCENES = web.AppKey("scenes", SceneLibrary)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
